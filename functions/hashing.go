package functions

import (
	"container/list"
	"context"
	"runtime"
	"sync"
	"time"
)

// Password hashing is the one CPU-bound step of the API: an argon2id check costs tens of
// milliseconds of one core, a read a few microseconds. Unbounded, a burst of logins takes
// every core and every other request waits behind it. So hashes run on at most Workers
// at once, and calls beyond that wait in one bounded queue, in order, with logins ahead:
//
//   - A login (Verify) runs as soon as a worker is free; it waits only behind hashes
//     running and logins that came before it, never behind a waiting sign-up.
//   - A sign-up (Hash) runs only when no login waits, and sign-ups hold at most
//     max(1, min(Workers, GOMAXPROCS)/2) workers at once: a flood of them leaves the other
//     workers to logins. With one worker they take turns, logins first.
//   - The queue holds at most Queue calls. A sign-up that finds it full is refused; a
//     login that finds it full takes the place of the newest waiting sign-up, which is
//     refused, so sign-ups never crowd out logins. A login that finds only logins is
//     refused.
//   - A call waits at most MaxWait, and no longer than its context lives; either way it
//     leaves the queue at once and its place is free.
//   - One client (WithHashClient: the edge names the client's address) has at most
//     PerClient calls waiting or running at once; a call beyond is refused at once. So
//     one address that signs in to accounts of its own in a loop, with correct passwords
//     (which no failed-login limit charges), cannot fill the queue and lock everyone
//     else out.
//
// Refusals are EUnavailable errors (503 with Retry-After at the HTTP layer): the client
// may retry, and nothing about the account is revealed by them. The queue works the same
// for unknown users, whose logins check a dummy hash, so timing stays even.

// PasswordLimits bounds password hashing: how many hashes run at once and how many
// calls may wait, and for how long. The zero value means one worker per two CPUs and no
// bound on waiting but the caller's context.
type PasswordLimits struct {
	// Workers is how many hashes run at once; each occupies one core while it runs.
	// 0: DefaultPasswordWorkers().
	Workers int
	// Queue is how many Hash and Verify calls may wait for a worker, logins and sign-ups
	// together; past it a call is refused with EUnavailable at once. 0: no bound.
	Queue int
	// MaxWait bounds how long a call waits for a worker; past it the call is refused with
	// EUnavailable. 0: until the call's context ends.
	MaxWait time.Duration
	// PerClient is how many calls of one client (WithHashClient) may wait for or hold a
	// worker at once; past it a call is refused with EUnavailable at once. 0: a quarter
	// of Workers and Queue together, at least 1, when Queue bounds the queue; no bound
	// when it does not. Calls that name no client are not counted.
	PerClient int
	// Observe, if set, is called once per Hash and Verify call when it stops waiting: it
	// got a worker (called just before the hash runs, while the worker is held) or was
	// refused. It runs in the caller's goroutine and must return quickly.
	Observe func(HashWait)
}

// DefaultPasswordWorkers returns max(1, GOMAXPROCS/2): hashing gets at most half of the
// CPUs, so the other half stays for everything else the node does, however many logins
// arrive.
func DefaultPasswordWorkers() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// Outcomes of a wait for a hashing worker (HashWait.Outcome).
const (
	HashRan       = "ran"        // got a worker
	HashQueueFull = "queue_full" // refused at once: the queue was full
	HashDisplaced = "displaced"  // a sign-up whose place a login took
	HashTimedOut  = "timed_out"  // waited MaxWait
	HashCanceled  = "canceled"   // its context ended (the client went away)
	HashClientMax = "client_max" // refused at once: its client had PerClient calls waiting or running
)

// hashClientKey is the context key of WithHashClient.
type hashClientKey struct{}

// WithHashClient returns ctx naming client (an address) as the caller of the password
// hashes made with it: a client has at most PasswordLimits.PerClient of them waiting or
// running at once.
func WithHashClient(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, hashClientKey{}, client)
}

func hashClient(ctx context.Context) string {
	c, _ := ctx.Value(hashClientKey{}).(string)
	return c
}

// HashWait describes one Hash or Verify call's wait for a worker.
type HashWait struct {
	Signup  bool          // a new password (Hash); false: a login's check (Verify)
	Waited  time.Duration // from the call to getting a worker or being refused
	Outcome string        // HashRan or the reason it was refused
}

// PasswordStats is a snapshot of password hashing.
type PasswordStats struct {
	Workers        int // the bound on hashes at once
	Running        int // hashes running now
	WaitingLogins  int // Verify calls waiting for a worker
	WaitingSignups int // Hash calls waiting for a worker
}

// hashWaiter is one call waiting for a worker. ready is closed when the call leaves the
// queue other than by its own choice: granted (it holds a worker) or displaced.
type hashWaiter struct {
	signup  bool
	ready   chan struct{}
	granted bool
	elem    *list.Element
}

// hashGate admits password hashes: it holds the state of the rules above, under mu.
type hashGate struct {
	workers, signupWorkers, queue, perClient int
	maxWait                                  time.Duration
	observe                                  func(HashWait)

	mu             sync.Mutex
	running        int
	runningSignups int
	clients        map[string]int // calls waiting or running, by client (WithHashClient)
	logins         list.List      // of *hashWaiter, oldest first
	signups        list.List
}

func newHashGate(l PasswordLimits) *hashGate {
	w := l.Workers
	if w <= 0 {
		w = DefaultPasswordWorkers()
	}
	per := l.PerClient
	if per <= 0 && l.Queue > 0 {
		per = max(1, (w+l.Queue)/4)
	}
	return &hashGate{
		workers:       w,
		signupWorkers: max(1, min(w, runtime.GOMAXPROCS(0))/2),
		queue:         max(l.Queue, 0),
		perClient:     max(per, 0),
		maxWait:       max(l.MaxWait, 0),
		observe:       l.Observe,
		clients:       make(map[string]int),
	}
}

var (
	errHashQueueFull = Errorf(EUnavailable, "too many logins and sign-ups waiting for a password check; try again shortly")
	errHashDisplaced = Errorf(EUnavailable, "too many logins waiting for a password check; sign-ups wait; try again shortly")
	errHashTimedOut  = Errorf(EUnavailable, "no password check could start in time; try again shortly")
	errHashCanceled  = Errorf(EUnavailable, "request ended while waiting for a password check")
	errHashClientMax = Errorf(EUnavailable, "too many logins and sign-ups from this address waiting for a password check; try again shortly")
)

// acquire waits for a worker for a sign-up (Hash) or a login (Verify). It returns nil
// holding one, to be given back with release (with the same ctx), or an EUnavailable
// error holding none.
func (g *hashGate) acquire(ctx context.Context, signup bool) error {
	start := time.Now()
	if ctx.Err() != nil {
		g.report(signup, start, HashCanceled)
		return errHashCanceled
	}
	client := hashClient(ctx)
	if client != "" && g.perClient > 0 {
		g.mu.Lock()
		if g.clients[client] >= g.perClient {
			g.mu.Unlock()
			g.report(signup, start, HashClientMax)
			return errHashClientMax
		}
		g.clients[client]++
		g.mu.Unlock()
	}
	err := g.wait(ctx, signup, start)
	if err != nil {
		g.leave(client)
	}
	return err
}

// leave ends a call of client's (acquire) that holds no worker any more.
func (g *hashGate) leave(client string) {
	if client == "" || g.perClient <= 0 {
		return
	}
	g.mu.Lock()
	if g.clients[client] <= 1 {
		delete(g.clients, client)
	} else {
		g.clients[client]--
	}
	g.mu.Unlock()
}

// wait is acquire once the call's client has room: the queue's rules.
func (g *hashGate) wait(ctx context.Context, signup bool, start time.Time) error {
	g.mu.Lock()
	if g.mayRun(signup) {
		g.grantLocked(signup)
		g.mu.Unlock()
		g.report(signup, start, HashRan)
		return nil
	}
	if g.queue > 0 && g.logins.Len()+g.signups.Len() >= g.queue {
		// Full. A login takes the newest waiting sign-up's place; anyone else is refused.
		newest := g.signups.Back()
		if signup || newest == nil {
			g.mu.Unlock()
			g.report(signup, start, HashQueueFull)
			return errHashQueueFull
		}
		w := newest.Value.(*hashWaiter)
		g.signups.Remove(newest)
		w.elem = nil
		close(w.ready) // not granted: displaced
	}
	w := &hashWaiter{signup: signup, ready: make(chan struct{})}
	if signup {
		w.elem = g.signups.PushBack(w)
	} else {
		w.elem = g.logins.PushBack(w)
	}
	g.mu.Unlock()

	var timeout <-chan time.Time
	if g.maxWait > 0 {
		t := time.NewTimer(g.maxWait)
		defer t.Stop()
		timeout = t.C
	}
	var outcome string
	var err error
	select {
	case <-w.ready:
	case <-timeout:
		outcome, err = HashTimedOut, errHashTimedOut
	case <-ctx.Done():
		outcome, err = HashCanceled, errHashCanceled
	}
	g.mu.Lock()
	switch {
	case w.granted && outcome == HashCanceled:
		// Granted as the context ended: nobody is left to use it.
		g.releaseLocked(signup)
	case w.granted:
		outcome, err = HashRan, nil // granted as the wait ran out: use it
	case w.elem != nil: // still queued: leave, freeing the place
		g.queueOf(signup).Remove(w.elem)
		w.elem = nil
	default:
		outcome, err = HashDisplaced, errHashDisplaced
	}
	g.mu.Unlock()
	g.report(signup, start, outcome)
	return err
}

// release gives back a worker that acquire granted, with the ctx acquire had, and passes
// it on.
func (g *hashGate) release(ctx context.Context, signup bool) {
	g.mu.Lock()
	g.releaseLocked(signup)
	g.mu.Unlock()
	g.leave(hashClient(ctx))
}

// mayRun reports whether a new call may run at once: a worker is free and nobody who
// goes first is waiting (logins go before sign-ups, and each in order of arrival).
func (g *hashGate) mayRun(signup bool) bool {
	if g.running >= g.workers || g.logins.Len() > 0 {
		return false
	}
	return !signup || g.signups.Len() == 0 && g.runningSignups < g.signupWorkers
}

func (g *hashGate) grantLocked(signup bool) {
	g.running++
	if signup {
		g.runningSignups++
	}
}

// releaseLocked frees a worker and grants the free workers to whoever goes next.
func (g *hashGate) releaseLocked(signup bool) {
	g.running--
	if signup {
		g.runningSignups--
	}
	if g.running < 0 || g.runningSignups < 0 {
		panic("functions: password worker released twice")
	}
	for g.running < g.workers {
		q := &g.logins
		if q.Len() == 0 {
			q = &g.signups
			if q.Len() == 0 || g.runningSignups >= g.signupWorkers {
				return
			}
		}
		w := q.Remove(q.Front()).(*hashWaiter)
		w.elem, w.granted = nil, true
		g.grantLocked(w.signup)
		close(w.ready)
	}
}

func (g *hashGate) queueOf(signup bool) *list.List {
	if signup {
		return &g.signups
	}
	return &g.logins
}

func (g *hashGate) report(signup bool, start time.Time, outcome string) {
	if g.observe != nil {
		g.observe(HashWait{Signup: signup, Waited: time.Since(start), Outcome: outcome})
	}
}

func (g *hashGate) stats() PasswordStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return PasswordStats{Workers: g.workers, Running: g.running, WaitingLogins: g.logins.Len(), WaitingSignups: g.signups.Len()}
}
