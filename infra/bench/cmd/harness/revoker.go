package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// revoker signs sessions out during the replication run, at a steady rate, each on a
// random node, and after each sign-out polls every other node without a bookmark (what
// a stolen token replayed elsewhere gets) until all of them refuse the token.
//
// Its sessions are logged in before measuring, each on a random node. That keeps argon2id
// out of the measured window (20 logins a second would take a good share of the two cores
// from the paced writes, and the replication figures would no longer compare with earlier
// runs), and it means every node holds a session before it is signed out: a node that did
// not would first meet the token's own bookmark (docs/API.md, "Consistency"), and that
// wait, not the revocation's propagation, would be timed.
type revoker struct {
	ns       []*node
	sessions []login // signed out in order
}

// revokerUsers is how many users own the revoker's sessions, at least: a user holds at
// most 100 (functions.MaxSessionsPerUser; logging in beyond that revokes the oldest), so
// each is given at most revokerSessionsPerUser.
const (
	revokerUsers           = 8
	revokerSessionsPerUser = 90
)

// revokerPoll is how long a poller waits before asking a node again: coarse enough that
// the revocations in flight add hundreds, not thousands, of requests a second to the load
// measured; fine enough beside propagation times of tens of milliseconds.
const revokerPoll = 2 * time.Millisecond

// revokerGiveUp bounds the polling after one sign-out.
const revokerGiveUp = 10 * time.Second

// newRevoker registers a few users and logs in n sessions, spread over them.
func newRevoker(ctx context.Context, ns []*node, n int) (*revoker, error) {
	users := max(revokerUsers, (n+revokerSessionsPerUser-1)/revokerSessionsPerUser)
	bms := make([]string, users)
	for u := range users {
		bm, err := register(probec, ns[u%len(ns)].url(), revokerUser(u))
		if err != nil {
			return nil, err
		}
		bms[u] = bm
	}
	r := &revoker{ns: ns, sessions: make([]login, n)}
	// A few at a time: a node hashes as many passwords at once as it has cores.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for w := range errs {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				u := i % users
				l, err := logIn(probec, ns[rand.IntN(len(ns))].url(), revokerUser(u), bms[u])
				if err != nil {
					errs[w] = err
					return
				}
				r.sessions[i] = l
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, ctx.Err()
}

func revokerUser(u int) string { return fmt.Sprintf("revoker-%d", u) }

// revocations is what a revoker measured.
type revocations struct {
	signOuts   int             // acknowledged (204)
	errors     int             // sign-outs that failed
	refused    []time.Duration // sign-out acknowledged → every other node answers 401
	unresolved int             // some node still accepted the token after revokerGiveUp
	polls      atomic.Int64    // requests of the pollers
	pollErrors atomic.Int64    // … answered neither 200 nor 401
}

// run signs a session out every 1/rate s until ctx ends or the sessions run out, then
// waits for the pollers, which run on pollCtx: the sign-outs of the last moments of the
// window are timed too.
func (r *revoker) run(ctx, pollCtx context.Context, rate float64) *revocations {
	out := &revocations{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
loop:
	for _, s := range r.sessions {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		wg.Go(func() {
			d, err := r.signOut(pollCtx, s, out)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, errUnresolved):
				out.signOuts++
				out.unresolved++
			case err != nil:
				out.errors++
			default:
				out.signOuts++
				out.refused = append(out.refused, d)
			}
		})
	}
	wg.Wait()
	return out
}

var errUnresolved = errors.New("a node still accepts the token")

// signOut signs s out on a random node and returns the time from its acknowledgement
// until every other node refused the token.
func (r *revoker) signOut(ctx context.Context, s login, out *revocations) (time.Duration, error) {
	b := rand.IntN(len(r.ns))
	st, body, _, err := request(probec, "DELETE", r.ns[b].url()+"/v1/sessions/current", s.token, "", nil)
	if err != nil || st != http.StatusNoContent {
		return 0, fmt.Errorf("sign out: %d %s %v", st, body, err)
	}
	acked := time.Now()
	var last atomic.Int64 // the latest first refusal, ns after acked
	var unresolved atomic.Bool
	var wg sync.WaitGroup
	for i, n := range r.ns {
		if i == b {
			continue
		}
		wg.Go(func() {
			for {
				st, _, _, err := request(probec, "GET", n.url()+"/v1/sessions/current", s.token, "", nil)
				out.polls.Add(1)
				if err == nil && st == http.StatusUnauthorized {
					d := int64(time.Since(acked))
					for v := last.Load(); d > v && !last.CompareAndSwap(v, d); v = last.Load() {
					}
					return
				}
				if err != nil || st != http.StatusOK {
					out.pollErrors.Add(1)
				}
				if time.Since(acked) > revokerGiveUp || sleepCtx(ctx, revokerPoll) != nil {
					unresolved.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	if unresolved.Load() {
		return 0, errUnresolved
	}
	return time.Duration(last.Load()), nil
}
