package edge

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// gone is a context that has ended (the node is stopping): the limiter does not wait under it.
var gone = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func est(cur, prev uint64, elapsed time.Duration) crdt.Estimate {
	return crdt.Estimate{Current: cur, Previous: prev, Elapsed: elapsed, Window: time.Minute}
}

func TestDecideLogin(t *testing.T) {
	lim := loginLimits{Address: 30, AccountAddress: 10, Account: 100}
	for _, tc := range []struct {
		name     string
		g        loginGauges
		device   bool
		wantOK   bool
		wantWait time.Duration
	}{
		{"OK/Fresh", loginGauges{}, false, true, 0},
		{"OK/JustBelow", loginGauges{
			Address: gauge{Count: est(29, 0, 0)}, AccountAddress: gauge{Count: est(9, 0, 0)}, Account: gauge{Count: est(99, 0, 0)},
		}, false, true, 0},
		{"ErrAddress", loginGauges{Address: gauge{Count: est(30, 0, 15*time.Second)}}, false, false, 45*time.Second + 1},
		{"ErrAddressDevice", loginGauges{Address: gauge{Count: est(30, 0, 15*time.Second)}}, true, false, 45*time.Second + 1},
		{"ErrAccountAddress", loginGauges{AccountAddress: gauge{Count: est(10, 0, 0)}}, false, false, time.Minute + 1},
		{"ErrAccountAddressDevice", loginGauges{AccountAddress: gauge{Count: est(10, 0, 0)}}, true, false, time.Minute + 1},
		{"ErrAccount", loginGauges{Account: gauge{Count: est(100, 0, 30*time.Second)}}, false, false, 30*time.Second + 1},
		{"OK/AccountWithDevice", loginGauges{Account: gauge{Count: est(5000, 0, 0)}}, true, true, 0},
		{"ErrPreviousWindow", loginGauges{AccountAddress: gauge{Count: est(0, 20, 0)}}, false, false, 30*time.Second + 1},
		{"OK/PreviousDecayed", loginGauges{AccountAddress: gauge{Count: est(0, 20, 31*time.Second)}}, false, true, 0},
		{"ErrInFlight", loginGauges{AccountAddress: gauge{Count: est(7, 0, 0), InFlight: 3}}, false, false, time.Minute + 1},
		{"ErrInFlightOnly", loginGauges{AccountAddress: gauge{InFlight: 10}}, false, false, time.Second},
		{"ErrLongestWins", loginGauges{
			Address: gauge{Count: est(30, 0, 50*time.Second)}, AccountAddress: gauge{Count: est(10, 0, 10*time.Second)},
		}, false, false, 50*time.Second + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, wait := decideLogin(lim, tc.g, tc.device)
			if ok != tc.wantOK || wait != tc.wantWait {
				t.Errorf("decideLogin = %v, %s; want %v, %s", ok, wait, tc.wantOK, tc.wantWait)
			}
		})
	}
}

// localCounts is counts on one node: a crdt.Counter per set under a mutex.
type localCounts struct {
	mu   sync.Mutex
	now  func() time.Time
	sets []*crdt.Counter
}

func newLocalCounts(now func() time.Time) *localCounts {
	c := &localCounts{now: now}
	for _, w := range counterWindows() {
		c.sets = append(c.sets, crdt.NewCounter(w, 0))
	}
	return c
}

func (c *localCounts) Add(set int, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sets[set].Add(key, 1, c.now())
}

func (c *localCounts) Estimate(set int, key string) crdt.Estimate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sets[set].Estimate(key, c.now())
}

func TestLimiter_Login(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	l := newLimiter(newLocalCounts(clock.Now))
	ctx := context.Background()
	lim := loginLimits{Address: 30, AccountAddress: 3, Account: 5}
	fail := func(addr, user string, device bool) (bool, time.Duration) {
		a, ok, r := l.login(ctx, lim, addr, user, device, false)
		if ok {
			a.done(true)
		}
		return ok, r.wait
	}
	for i := range 3 {
		if ok, _ := fail("10.0.0.1", "alice", false); !ok {
			t.Fatalf("failure %d from one address refused early", i+1)
		}
	}
	if ok, wait := fail("10.0.0.1", "alice", false); ok || wait <= 0 {
		t.Errorf("4th failure from one address: ok=%v wait=%s, want refused with a wait", ok, wait)
	}
	t.Run("OtherAddressStillTries", func(t *testing.T) {
		if ok, _ := fail("10.0.0.2", "alice", false); !ok {
			t.Errorf("another address refused after one address's failures")
		}
	})
	t.Run("SuccessChargesNothing", func(t *testing.T) {
		for i := range 50 {
			a, ok, _ := l.login(ctx, lim, "10.0.0.9", "bob", false, false)
			if !ok {
				t.Fatalf("successful login %d refused", i+1)
			}
			a.done(false)
		}
	})
	t.Run("AccountWide", func(t *testing.T) {
		fail("10.0.0.3", "alice", false) // alice: 3 + 1 + 1 = 5 failures
		if ok, _ := fail("10.0.0.4", "alice", false); ok {
			t.Errorf("a fresh address passed the account-wide limit")
		}
		a, ok, _ := l.login(ctx, lim, "10.0.0.4", "alice", true, false)
		if !ok {
			t.Fatalf("a login with a device token was refused by the account-wide limit")
		}
		a.done(false)
		if ok, _ := fail("10.0.0.1", "alice", true); ok {
			t.Errorf("a device token lifted the per-address limit")
		}
	})
	t.Run("InFlight", func(t *testing.T) {
		var held []*attempt
		for range 3 {
			a, ok, _ := l.login(ctx, lim, "10.9.9.9", "carol", false, false)
			if !ok {
				t.Fatalf("attempt refused before any outcome")
			}
			held = append(held, a)
		}
		// Under an ended context nothing waits: refused at once.
		if _, ok, _ := l.login(gone, lim, "10.9.9.9", "carol", false, false); ok {
			t.Errorf("a 4th concurrent attempt passed while 3 were in flight")
		}
		// One that does waits until an attempt in flight ends, then gets in.
		got := make(chan *attempt, 1)
		go func() {
			a, ok, _ := l.login(ctx, lim, "10.9.9.9", "carol", false, false)
			if !ok {
				a = nil
			}
			got <- a
		}()
		waitForWaiter(t, l, got)
		held[0].done(false)
		a := <-got
		if a == nil {
			t.Fatalf("the waiting attempt was refused once one in flight succeeded")
		}
		held[0] = a
		for _, a := range held {
			a.done(false)
		}
		a, ok, _ := l.login(ctx, lim, "10.9.9.9", "carol", false, false)
		if !ok {
			t.Fatalf("refused after the in-flight attempts succeeded")
		}
		a.done(false)
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.inflight) != 0 {
			t.Errorf("in-flight table keeps %d keys after every attempt ended", len(l.inflight))
		}
	})
	t.Run("Expires", func(t *testing.T) {
		clock.Add(2 * time.Minute)
		if ok, _ := fail("10.0.0.1", "alice", false); !ok {
			t.Errorf("still refused two windows later")
		}
	})
}

func TestLimiter_Signup(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	l := newLimiter(newLocalCounts(clock.Now))
	ctx := context.Background()
	for i := range 3 {
		a, ok, _ := l.signup(ctx, 3, "10.0.0.1")
		if !ok {
			t.Fatalf("sign-up %d refused", i+1)
		}
		a.done(true)
	}
	_, ok, r := l.signup(ctx, 3, "10.0.0.1")
	// tokenEpoch is 4m05s into a 10-minute window: the count ends with it.
	if ok || r.busy || r.wait != 5*time.Minute+55*time.Second+1 {
		t.Errorf("4th sign-up: ok=%v %+v, want refused (not busy) until the window ends, 5m55s", ok, r)
	}
	a, ok, _ := l.signup(ctx, 3, "10.0.0.2")
	if !ok {
		t.Fatalf("another address refused")
	}
	a.done(false) // invalid input: not charged
	for range 3 {
		a, ok, _ := l.signup(ctx, 3, "10.0.0.2")
		if !ok {
			t.Fatalf("uncharged attempts were counted")
		}
		a.done(true)
	}
}

func TestKeys(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice", "alice"}, {"a.b-c_9", "a.b-c_9"}, {"al", ""}, {"Alice", ""}, {"a|b", ""},
		{strings.Repeat("x", 33), ""}, {strings.Repeat("x", 64<<10), ""},
	} {
		if got := accountKey(tc.in); got != tc.want {
			t.Errorf("accountKey(%.40q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := addrKey("10.0.0.1"); got != "10.0.0.1" {
		t.Errorf("addrKey(10.0.0.1) = %q", got)
	}
	// IPv6 clients are keyed by their /64 (found by an outside review: one client with a
	// /64 had limitless addresses); an IPv4-mapped address is IPv4.
	if a, b := addrKey("2001:db8:1:2::1"), addrKey("2001:db8:1:2:ffff::9"); a != b || a != "2001:db8:1:2::/64" {
		t.Errorf("addrKey of two addresses of one /64 = %q, %q; want both 2001:db8:1:2::/64", a, b)
	}
	if addrKey("2001:db8:1:3::1") == addrKey("2001:db8:1:2::1") {
		t.Error("two /64s share a key")
	}
	if got := addrKey("::ffff:10.0.0.1"); got != "::ffff:10.0.0.1" {
		t.Errorf("addrKey(::ffff:10.0.0.1) = %q, want it as it is", got)
	}
	long := strings.Repeat("1.2.3.4, ", 1000)
	if got := addrKey(long); len(got) > maxAddrKey || got == addrKey(long+"x") {
		t.Errorf("addrKey of a long address = %q: want a short key distinct per address", got)
	}
}

// TestLimiter_OwnsKeys checks that keys are copies: the address given may alias a request
// buffer (an X-Forwarded-For address) that later requests overwrite.
func TestLimiter_OwnsKeys(t *testing.T) {
	l := newLimiter(newLocalCounts(newFakeClock(tokenEpoch).Now))
	ctx := context.Background()
	buf := []byte("10.0.0.1")
	a, ok, _ := l.signup(ctx, 1, aliasedString(buf))
	if !ok {
		t.Fatal("first sign-up refused")
	}
	a.done(true)
	copy(buf, "10.0.0.2")
	if _, ok, _ := l.signup(ctx, 1, "10.0.0.1"); ok {
		t.Errorf("10.0.0.1's count was lost when the request buffer changed")
	}
	if _, ok, _ := l.signup(ctx, 1, "10.0.0.2"); !ok {
		t.Errorf("10.0.0.2 refused: it took 10.0.0.1's count through the aliased buffer")
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "1"}, {0.001, "1"}, {1, "1"}, {1.2, "2"}, {29.5, "30"}, {30, "30"}} {
		if got := retryAfterSeconds(tc.in); got != tc.want {
			t.Errorf("retryAfterSeconds(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// deviceOK reports whether tk takes raw as a device token for the name username.
func deviceOK(tk *tokens, raw, username string) bool {
	_, _, ok := tk.deviceOwner(raw, username)
	return ok
}

func TestDeviceToken(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	tk := newTokens([][]byte{testKey}, clock.Now)
	dev, err := tk.signDevice("u1", "alice", crdt.Timestamp{}, crdt.Timestamp{})
	if err != nil {
		t.Fatal(err)
	}
	if owner, _, ok := tk.deviceOwner(dev, "alice"); !ok || owner != "u1" {
		t.Fatalf("deviceOwner(own token) = %q, %v; want u1, true", owner, ok)
	}
	for _, tc := range []struct {
		name, raw, user string
	}{
		{"ErrOtherUser", dev, "bob"},
		{"ErrEmpty", "", "alice"},
		{"ErrTampered", tamper(t, dev), "alice"},
		{"ErrTooLong", dev + strings.Repeat("x", maxDeviceToken), "alice"},
		{"ErrOtherKey", func() string {
			d, _ := newTokens([][]byte{otherKey}, clock.Now).signDevice("u1", "alice", crdt.Timestamp{}, crdt.Timestamp{})
			return d
		}(), "alice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if deviceOK(tk, tc.raw, tc.user) {
				t.Errorf("deviceOwner accepted it")
			}
		})
	}
	t.Run("ErrSessionTokenIsNoDevice", func(t *testing.T) {
		tok, err := tk.sign(context.Background(), "u1", "s1", clock.Now().Add(time.Hour), crdt.Bookmark{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if deviceOK(tk, tok, "alice") {
			t.Errorf("a session token passed as a device token")
		}
	})
	t.Run("ErrDeviceIsNoAccessToken", func(t *testing.T) {
		if _, err := tk.verify(dev); err == nil {
			t.Errorf("verify accepted a device token as an access token")
		}
	})
	// A node whose clock ran ahead (out of the cluster's bounds, then corrected) issued
	// tokens "from the future": a device token says only that its client signed in before,
	// so it must not be refused until real time passes its iat (the chaos suite's
	// clock-skew scenario locked the owner out for the offset's length).
	t.Run("OKIssuedByANodeAhead", func(t *testing.T) {
		ahead := newFakeClock(clock.Now().Add(90 * time.Second))
		d, err := newTokens([][]byte{testKey}, ahead.Now).signDevice("u1", "alice", crdt.Timestamp{}, crdt.Timestamp{})
		if err != nil {
			t.Fatal(err)
		}
		if !deviceOK(tk, d, "alice") {
			t.Errorf("deviceOwner refused a token issued 90s ahead")
		}
	})
	t.Run("ErrExpired", func(t *testing.T) {
		clock.Add(deviceTTL + time.Minute)
		if deviceOK(tk, dev, "alice") {
			t.Errorf("an expired device token was accepted")
		}
	})
}

// TestLimiterInFlightShare: a node counts its attempts in flight once per node of the
// cluster, so a concurrent burst spread over three nodes, none of which sees the others'
// attempts until they end, admits at most the limit in all.
func TestLimiterInFlightShare(t *testing.T) {
	const nodes, limit = 3, 10
	counts := newLocalCounts(newFakeClock(tokenEpoch).Now) // shared: the counts merge at once
	admitted := 0
	for range nodes {
		l := newLimiter(counts)
		l.nodes = func() int { return nodes }
		for range limit { // every attempt still in flight
			if _, ok, _ := l.signup(gone, limit, "198.51.100.1"); ok { // no waiting: nothing ends
				admitted++
			}
		}
	}
	if admitted > limit {
		t.Errorf("admitted %d attempts in flight over %d nodes, want at most %d", admitted, nodes, limit)
	}
	if admitted < nodes {
		t.Errorf("admitted %d, want at least one per node", admitted)
	}
}

// TestLimiterConcurrentLoginsLargeCluster: from six nodes up, the default limit on
// failures per account and address (10) leaves each node room for one login of an
// account from an address in flight. A second one at once (two tabs) waits for the first
// to end instead of being refused for failures that never happened.
func TestLimiterConcurrentLoginsLargeCluster(t *testing.T) {
	l := newLimiter(newLocalCounts(newFakeClock(tokenEpoch).Now))
	l.nodes = func() int { return 6 }
	lim := loginLimits{Address: 60, AccountAddress: 10, Account: 100}
	first, ok, _ := l.login(context.Background(), lim, "10.0.0.1", "alice", false, false)
	if !ok {
		t.Fatal("first login refused")
	}
	if _, ok, _ := l.login(gone, lim, "10.0.0.1", "alice", false, false); ok {
		t.Fatal("a second login in flight at once was admitted without waiting: the test no longer covers the wait")
	}
	second := make(chan bool, 1)
	go func() {
		a, ok, _ := l.login(context.Background(), lim, "10.0.0.1", "alice", false, false)
		if ok {
			a.done(false)
		}
		second <- ok
	}()
	waitForWaiter(t, l, second)
	first.done(false) // the password was right: nothing charged
	if !<-second {
		t.Error("the second login was refused after the first succeeded")
	}
}

// waitForWaiter returns once an attempt waits in l for attempts in flight to end, and
// fails the test if the attempt was decided (result, buffered, holds its outcome) first.
func waitForWaiter[T any](t *testing.T, l *limiter, result chan T) {
	t.Helper()
	for {
		l.mu.Lock()
		waiting := l.waiting
		l.mu.Unlock()
		if waiting > 0 {
			return
		}
		if len(result) > 0 {
			t.Fatal("the attempt was decided at once instead of waiting for the one in flight")
		}
		runtime.Gosched()
	}
}

// TestLimiterWaitBounds: at most maxWaitersPerKey attempts wait on one key; the next is
// refused at once, as busy (Retry-After 1, not a count of failures), and waiters leave no
// state behind once the attempts in flight end.
func TestLimiterWaitBounds(t *testing.T) {
	l := newLimiter(newLocalCounts(newFakeClock(tokenEpoch).Now))
	l.nodes = func() int { return 6 }
	lim := loginLimits{Address: 60, AccountAddress: 10, Account: 100}
	ctx := context.Background()
	first, ok, _ := l.login(ctx, lim, "10.0.0.1", "alice", false, false)
	if !ok {
		t.Fatal("first login refused")
	}
	results := make(chan bool, maxWaitersPerKey)
	for range maxWaitersPerKey {
		go func() {
			a, ok, _ := l.login(ctx, lim, "10.0.0.1", "alice", false, false)
			if ok {
				a.done(false)
			}
			results <- ok
		}()
	}
	for {
		l.mu.Lock()
		n := l.waiting
		l.mu.Unlock()
		if n == maxWaitersPerKey {
			break
		}
		if len(results) > 0 {
			t.Fatal("a login was decided at once instead of waiting")
		}
		runtime.Gosched()
	}
	_, ok, r := l.login(ctx, lim, "10.0.0.1", "alice", false, false)
	if ok || !r.busy || r.wait != time.Second {
		t.Fatalf("a login beyond %d waiting: ok=%v %+v, want refused at once, busy, in 1s", maxWaitersPerKey, ok, r)
	}
	first.done(false)
	for range maxWaitersPerKey {
		if !<-results {
			t.Error("a waiting login was refused after the one in flight succeeded")
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.inflight) != 0 || len(l.waits) != 0 || l.waiting != 0 {
		t.Errorf("state left behind: %d in flight, %d wait lists, %d waiting", len(l.inflight), len(l.waits), l.waiting)
	}
}

// TestLimiterWaitTimesOut: an attempt that waited flightWait in vain is refused as busy.
func TestLimiterWaitTimesOut(t *testing.T) {
	l := newLimiter(newLocalCounts(newFakeClock(tokenEpoch).Now))
	l.flightWait = time.Millisecond
	if _, ok, _ := l.signup(context.Background(), 1, "10.0.0.1"); !ok {
		t.Fatal("first sign-up refused")
	}
	_, ok, r := l.signup(context.Background(), 1, "10.0.0.1")
	if ok || !r.busy || r.wait != time.Second {
		t.Errorf("a sign-up that waited in vain: ok=%v %+v, want refused, busy, in 1s", ok, r)
	}
}
