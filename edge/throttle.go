package edge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
)

// Abuse limits on logins and sign-ups, counted cluster-wide.
//
// Logins count failures, not attempts: a correct password charges nothing, so a client
// that signs in is never throttled by its own successes, and the owner of an account is
// not locked out by someone else's guesses. Before the password is hashed, a login is
// refused (429 with Retry-After) when any of these sliding one-minute counts has reached
// its limit:
//
//   - failures from the client's address (LoginPerAddress, default 60/min): one address
//     cannot guess across many accounts;
//   - failures on the account from the client's address (LoginPerAccountAddress, default
//     10/min): kept below the next limit, so that one address can never lock an account;
//   - failures on the account from all addresses (LoginPerAccount, default 100/min): a
//     botnet's guesses on one account are bounded — but this limit does not apply to a
//     login that presents a valid device token for the account (OWASP's device cookies):
//     a client that signed in to the account before keeps getting through.
//
// Sign-ins that succeed are limited per account too (SignInsPerAccount a minute, default
// 60): each creates a session, and a revoked session stays stored, small, until it
// expires, so that its revocation reaches every replica; an account signing in in a loop
// would otherwise pile them up without bound. Only a correct password spends it.
//
// Sign-ups are limited per address (SignupsPerAddress per 10 minutes, default 10): every
// registration that gets past input validation counts, created (201) or not (409), so
// usernames cannot be enumerated without limit.
//
// The counts are cluster.Counters: each node counts its own events and the nodes exchange
// them every CounterFlush (default 200ms), so a limit holds across the cluster. While
// connected, the cluster admits at most (CounterFlush + one-way latency) × each other
// node's rate of events beyond a limit; during a partition, each side enforces the full
// limit on what it sees, so k sides admit at most k × the limit (see cluster.Counters).
// Within a node, attempts still being checked count as failures already (in flight), and
// count as many times as there are nodes, so concurrent requests spread over the cluster
// cannot overshoot either: each node admits only its share of what is left. An attempt
// refused only for attempts in flight (the counts alone would let it in) waits for an
// attempt of its keys to end, up to flightWait, and is decided again: two tabs signing in
// to one account together both get in, the second a moment later, where it used to get a
// 429 that blamed failures that never happened (from six nodes up, the default limit per
// account and address admits one attempt in flight per node). A few attempts wait per key
// and a few hundred per node (maxWaitersPerKey, maxWaiters); beyond, and after the wait,
// the attempt is refused with Retry-After 1.

// With placement (Config.Replicas), a login or sign-up is often served by another node
// than the one the client reached (forward.go). The limits by address are then applied
// and charged by the node the client reached, which sees the client: for a client pinned
// to one node the address limits are exact, whichever nodes serve its attempts. The
// serving node applies the account limits, and skips the address ones the forwarding node
// vouched for.

// Messages are limited per sender (MessagesPerUser a minute, default 120), so one account
// cannot fill every node's disk; and lookups of names that do not exist (a message to or a
// conversation with an unknown user: 404) per caller (UnknownNamesPerUser a minute,
// default 30), so usernames cannot be enumerated through the messages routes either.

// The service routes (service.go) are limited per client address, on API keys that fail
// to authenticate (ServiceFailuresPerAddress a minute, default 60: beyond it, keys from
// the address that do not authenticate get 429 at once, while valid ones, checked against
// what the node holds, are served), and per app, on every
// request it makes (ServiceRequestsPerApp a minute, default 600000), so that one app
// cannot take the cluster's whole capacity.

// Counter sets of the node's cluster.Counters. A node ignores the cells of sets it does
// not know (a newer node's), so sets are only ever appended.
const (
	setLoginFailures   = iota // window loginWindow
	setSignups                // window signupWindow
	setMessages               // window loginWindow
	setUnknownNames           // window loginWindow
	setServiceFailures        // window loginWindow
	setServiceRequests        // window loginWindow
	setSignIns                // window loginWindow: sign-ins that succeeded, per account
)

const (
	loginWindow  = time.Minute
	signupWindow = 10 * time.Minute
	maxAddrKey   = 64 // longer client addresses are hashed (an X-Forwarded-For can be anything)
)

// counterWindows returns the window of each counter set, indexed by set.
func counterWindows() []time.Duration {
	return []time.Duration{loginWindow, signupWindow, loginWindow, loginWindow, loginWindow, loginWindow, loginWindow}
}

// counts is what limits read and charge: sliding-window counts per key, merged over the
// cluster. *cluster.Counters implements it; it must be safe for concurrent use.
type counts interface {
	Add(set int, key string)
	Estimate(set int, key string) crdt.Estimate
}

// gauge is one limit's input: the counted events and the attempts of this node in flight.
type gauge struct {
	Count    crdt.Estimate
	InFlight int
}

// over reports whether one more event would pass limit, and if so how long until it
// would not (at least a second: attempts in flight end sooner, but their outcome decides).
func (g gauge) over(limit int) (bool, time.Duration) {
	room := float64(limit - g.InFlight)
	if g.Count.Value() < room {
		return false, 0
	}
	return true, max(g.Count.Until(room), time.Second)
}

// loginLimits are failed logins allowed per loginWindow.
type loginLimits struct {
	Address, AccountAddress, Account int
}

// loginGauges are a login attempt's three counts.
type loginGauges struct {
	Address, AccountAddress, Account gauge
}

// decideLogin is the login policy: whether an attempt may go on to check the password,
// and if not, how long until it may. device says the attempt presents a valid device token
// for the account, which lifts the account-wide limit only. It is a pure function.
func decideLogin(lim loginLimits, g loginGauges, device bool) (ok bool, wait time.Duration) {
	ok = true
	for _, c := range []struct {
		g      gauge
		limit  int
		exempt bool
	}{{g.Address, lim.Address, false}, {g.AccountAddress, lim.AccountAddress, false}, {g.Account, lim.Account, device}} {
		if c.exempt {
			continue
		}
		if over, w := c.g.over(c.limit); over {
			ok, wait = false, max(wait, w)
		}
	}
	return ok, wait
}

// limiter applies the login and sign-up limits over counts, tracking this node's
// attempts in flight. Safe for concurrent use.
type limiter struct {
	counts counts
	// nodes returns how many nodes serve requests now, this one included (nil: 1). Each
	// node counts its attempts in flight that many times: it cannot see the others' until
	// they end, and each node admitting only its share keeps a concurrent burst spread
	// over the cluster within a limit.
	nodes func() int

	// flightWait bounds how long an attempt refused only for attempts in flight waits
	// for them to end (admit).
	flightWait time.Duration

	mu       sync.Mutex
	inflight map[flightKey]int
	waits    map[flightKey]*flightWaiters // attempts waiting for one of key's to end
	waiting  int                          // attempts waiting, all keys
}

// refusal says why an attempt was refused and when to try again.
type refusal struct {
	wait time.Duration // Retry-After
	busy bool          // refused for other attempts in flight, not for failures or events counted
}

// flightWaiters are the attempts waiting for an attempt of one key in flight to end.
type flightWaiters struct {
	n     int           // attempts waiting
	ended chan struct{} // closed when an attempt of the key ends
}

// defaultFlightWait is limiter.flightWait's default: a password check takes tens of
// milliseconds, or up to a second or two in the hashing queue under load.
const defaultFlightWait = 2 * time.Second

// Bounds on waiting attempts (admit): per key, and on the node. Beyond them an attempt is
// refused at once, as before waiting existed, so that a flood of attempts (correct
// passwords charge nothing, so nothing else stops them) cannot hold workers or make
// every attempt that ends wake thousands of others.
const (
	maxWaitersPerKey = 4
	maxWaiters       = 256
)

type flightKey struct {
	set int
	key string
}

func newLimiter(c counts) *limiter {
	return &limiter{counts: c, inflight: make(map[flightKey]int), waits: make(map[flightKey]*flightWaiters),
		flightWait: defaultFlightWait}
}

// attempt is a login or sign-up let through; call done exactly once when its outcome is
// known.
type attempt struct {
	l    *limiter
	set  int
	keys []string
}

// done ends the attempt, charging its keys when charge is set.
func (a *attempt) done(charge bool) {
	a.l.mu.Lock()
	defer a.l.mu.Unlock()
	for _, k := range a.keys {
		if charge {
			a.l.counts.Add(a.set, k) // before the in-flight count drops: never neither
		}
		fk := flightKey{a.set, k}
		if a.l.inflight[fk] <= 1 {
			delete(a.l.inflight, fk)
		} else {
			a.l.inflight[fk]--
		}
		if w := a.l.waits[fk]; w != nil {
			close(w.ended) // its waiters decide again, and each waits anew if it must
			delete(a.l.waits, fk)
		}
	}
}

// gauge returns key's count in set and this node's attempts of it in flight.
func (l *limiter) gauge(set int, key string) gauge {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gaugeLocked(set, key)
}

func (l *limiter) gaugeLocked(set int, key string) gauge {
	g := gauge{Count: l.counts.Estimate(set, key), InFlight: l.inflight[flightKey{set, key}]}
	if l.nodes != nil && g.InFlight > 0 {
		// With k in flight here, admitting one more makes k+1, and every node may do as
		// much: the next is admitted only if n(k+1) fit. The first is always admitted,
		// so a limit below n still lets each node serve one at a time.
		n := max(l.nodes(), 1)
		g.InFlight = n*(g.InFlight+1) - 1
	}
	return g
}

// admit decides an attempt on keys of set: decide gets their gauges, in order, and says
// whether the attempt may go on, and if not, how long until it may. An attempt refused
// only for attempts in flight (decide would let it in with none) waits until an attempt
// of one of its keys ends and is decided again, for at most flightWait and while ctx
// lasts, unless maxWaitersPerKey wait on one of its keys or maxWaiters on the node; then
// it is refused, to retry in a second (its failures did not refuse it).
func (l *limiter) admit(ctx context.Context, set int, keys []string, decide func([]gauge) (bool, time.Duration)) (*attempt, bool, refusal) {
	gs := make([]gauge, len(keys))
	var deadline <-chan time.Time
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		for i, k := range keys {
			gs[i] = l.gaugeLocked(set, k)
		}
		ok, wait := decide(gs)
		if ok {
			for _, k := range keys {
				l.inflight[flightKey{set, k}]++
			}
			return &attempt{l: l, set: set, keys: keys}, true, refusal{}
		}
		for i := range gs {
			gs[i].InFlight = 0
		}
		if counted, _ := decide(gs); !counted {
			return nil, false, refusal{wait: wait} // the counts refuse it: attempts ending will not help
		}
		if !l.mayWaitLocked(set, keys) {
			return nil, false, refusal{wait: time.Second, busy: true}
		}
		if deadline == nil {
			t := time.NewTimer(l.flightWait)
			defer t.Stop()
			deadline = t.C
		}
		// Wait on the keys with attempts in flight: each of those ends (done), which
		// closes and removes the key's list, so no list outlives its key's attempts.
		var ended [3]<-chan struct{} // keys has at most three (login)
		for i, k := range keys {
			fk := flightKey{set, k}
			if l.inflight[fk] == 0 {
				continue
			}
			w := l.waits[fk]
			if w == nil {
				w = &flightWaiters{ended: make(chan struct{})}
				l.waits[fk] = w
			}
			w.n++
			ended[i] = w.ended
		}
		l.waiting++
		l.mu.Unlock()
		woken := false
		select {
		case <-ended[0]:
			woken = true
		case <-ended[1]:
			woken = true
		case <-ended[2]:
			woken = true
		case <-deadline:
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.waiting--
		for i, k := range keys {
			// A key whose attempt ended has a new list, or none; this one is gone.
			if w := l.waits[flightKey{set, k}]; w != nil && ended[i] != nil && w.ended == ended[i] {
				w.n--
			}
		}
		if !woken {
			return nil, false, refusal{wait: time.Second, busy: true}
		}
	}
}

// mayWaitLocked reports whether an attempt on keys of set may wait for attempts in
// flight: fewer than maxWaitersPerKey wait on each of its keys, and fewer than maxWaiters
// on the node.
func (l *limiter) mayWaitLocked(set int, keys []string) bool {
	if len(keys) > 3 || l.waiting >= maxWaiters {
		return false
	}
	for _, k := range keys {
		if w := l.waits[flightKey{set, k}]; w != nil && w.n >= maxWaitersPerKey {
			return false
		}
	}
	return true
}

// login decides a login attempt by addr on the account named username; see decideLogin
// and admit. With addressDone, the node that forwarded the attempt here applies and
// charges the limit by address (addressLogin), and this one does not.
func (l *limiter) login(ctx context.Context, lim loginLimits, addr, username string, device, addressDone bool) (*attempt, bool, refusal) {
	a, acct := addrKey(addr), accountKey(username)
	keys := []string{"a|" + a, "ua|" + acct + "|" + a, "u|" + acct}
	if addressDone {
		return l.admit(ctx, setLoginFailures, keys[1:], func(g []gauge) (bool, time.Duration) {
			return decideLogin(lim, loginGauges{AccountAddress: g[0], Account: g[1]}, device)
		})
	}
	return l.admit(ctx, setLoginFailures, keys, func(g []gauge) (bool, time.Duration) {
		return decideLogin(lim, loginGauges{Address: g[0], AccountAddress: g[1], Account: g[2]}, device)
	})
}

// signIn decides, by the limit on sign-ins that succeed per account, a login attempt on
// the account named username; charge it (done) if it succeeds. It is decided on the
// counts alone, not on attempts in flight: those are mostly wrong passwords, anyone's to
// send, and counting them would let someone else's guesses refuse the owner (found by an
// outside review). A burst of concurrent correct sign-ins may so pass the limit by the
// burst; the counts stop the next.
func (l *limiter) signIn(ctx context.Context, limit int, username string) (*attempt, bool, refusal) {
	return l.admit(ctx, setSignIns, []string{"s|" + accountKey(username)}, func(g []gauge) (bool, time.Duration) {
		over, wait := gauge{Count: g[0].Count}.over(limit)
		return !over, wait
	})
}

// under decides an attempt on one key against limit.
func under(limit int) func([]gauge) (bool, time.Duration) {
	return func(g []gauge) (bool, time.Duration) {
		over, wait := g[0].over(limit)
		return !over, wait
	}
}

// addressLogin decides, by the limit on failures from addr alone, a login attempt that
// this node forwards to the node that will serve it; charge it (done) with the outcome
// that node answers.
func (l *limiter) addressLogin(ctx context.Context, limit int, addr string) (*attempt, bool, refusal) {
	return l.admit(ctx, setLoginFailures, []string{"a|" + addrKey(addr)}, under(limit))
}

// signup decides a sign-up by addr against limit per signupWindow.
func (l *limiter) signup(ctx context.Context, limit int, addr string) (*attempt, bool, refusal) {
	return l.admit(ctx, setSignups, []string{"s|" + addrKey(addr)}, under(limit))
}

// message decides a message of userID against limit per minute, as signup does for
// addresses.
func (l *limiter) message(ctx context.Context, limit int, userID string) (*attempt, bool, refusal) {
	return l.admit(ctx, setMessages, []string{"m|" + userID}, under(limit))
}

// addrKey returns a bounded key for a client address. The result owns its bytes (addr
// may alias a request buffer).
func addrKey(addr string) string {
	if ip, err := netip.ParseAddr(addr); err == nil && ip.Is6() && !ip.Is4In6() {
		// One client holds a whole /64 (the smallest prefix a network assigns): keyed by
		// its full address, it would pass every per-address limit 2^64 times over.
		p, _ := ip.Prefix(64)
		return p.String()
	}
	if len(addr) <= maxAddrKey {
		return string([]byte(addr))
	}
	sum := sha256.Sum256([]byte(addr))
	return "#" + hex.EncodeToString(sum[:16])
}

// accountKey returns the key of the account a login names: the name itself when it is a
// possible username, else "" — names no account can have share one key rather than each
// being kept (up to the 1 MiB body), and they only ever lock each other.
func accountKey(name string) string {
	if len(name) < functions.MinUsername || len(name) > functions.MaxUsername {
		return ""
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case b >= 'a' && b <= 'z', b >= '0' && b <= '9', b == '_', b == '.', b == '-':
		default:
			return ""
		}
	}
	return string([]byte(name))
}
