package functions

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/crypto/argon2"
)

// fakeArgon stands in for argon2.IDKey: it records the hashes started and how many ran
// at once, and holds the hash of any password that begins with "hold" until the test
// sends on release. Each hash also takes work of the clock (the fake one inside a
// synctest bubble).
type fakeArgon struct {
	release chan struct{}
	work    time.Duration

	mu                     sync.Mutex
	running, signups       int
	maxRunning, maxSignups int
	started                []string // passwords, in the order their hashes started
}

// fakeHashing makes p hash with a new fakeArgon.
func fakeHashing(p *Passwords) *fakeArgon {
	f := &fakeArgon{release: make(chan struct{})}
	p.idKey = f.idKey
	return f
}

func (f *fakeArgon) idKey(password, salt []byte, _, _ uint32, _ uint8, keyLen uint32) []byte {
	pw := string(password)
	signup := strings.Contains(pw, "signup")
	f.mu.Lock()
	f.running++
	f.maxRunning = max(f.maxRunning, f.running)
	if signup {
		f.signups++
		f.maxSignups = max(f.maxSignups, f.signups)
	}
	f.started = append(f.started, pw)
	f.mu.Unlock()
	if strings.HasPrefix(pw, "hold") {
		<-f.release
	}
	if f.work > 0 {
		time.Sleep(f.work)
	}
	f.mu.Lock()
	f.running--
	if signup {
		f.signups--
	}
	f.mu.Unlock()
	return argon2.IDKey(password, salt, 1, 8, 1, keyLen)
}

func (f *fakeArgon) order() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.started)
}

// setGOMAXPROCS sets GOMAXPROCS to n and returns a function that restores it.
func setGOMAXPROCS(n int) (restore func()) {
	old := runtime.GOMAXPROCS(n)
	return func() { runtime.GOMAXPROCS(old) }
}

// calls runs Hash and Verify calls in goroutines and collects how they end.
type calls struct {
	t    *testing.T
	p    *Passwords
	hash string // what Verify checks against
	done chan result
}

type result struct {
	password string
	err      error
}

func newCalls(t *testing.T, p *Passwords) *calls {
	h, err := p.Hash(context.Background(), testPassword)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	return &calls{t: t, p: p, hash: h, done: make(chan result, 100)}
}

// login starts a Verify of password (a login) and waits until it runs or blocks.
func (c *calls) login(ctx context.Context, password string) {
	go func() {
		_, err := c.p.Verify(ctx, password, c.hash)
		c.done <- result{password, err}
	}()
	synctest.Wait()
}

// signup starts a Hash of password (a sign-up) and waits until it runs or blocks.
func (c *calls) signup(password string) {
	go func() {
		_, err := c.p.Hash(context.Background(), password)
		c.done <- result{password, err}
	}()
	synctest.Wait()
}

// ended returns the calls that have returned since the last call, keyed by password.
func (c *calls) ended() map[string]error {
	c.t.Helper()
	synctest.Wait()
	out := map[string]error{}
	for {
		select {
		case r := <-c.done:
			out[r.password] = r.err
		default:
			return out
		}
	}
}

// wantStats checks the hashes running and the calls waiting.
func wantStats(t *testing.T, p *Passwords, running, logins, signups int) {
	t.Helper()
	s := p.Stats()
	if s.Running != running || s.WaitingLogins != logins || s.WaitingSignups != signups {
		t.Errorf("Stats = running %d, waiting logins %d, sign-ups %d; want %d, %d, %d",
			s.Running, s.WaitingLogins, s.WaitingSignups, running, logins, signups)
	}
}

// outcomes collects what Observe reports.
type outcomes struct {
	mu  sync.Mutex
	got []HashWait
}

func (o *outcomes) observe(w HashWait) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, w)
}

func (o *outcomes) count(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, w := range o.got {
		if w.Outcome == outcome {
			n++
		}
	}
	return n
}

// TestPasswords_QueueBound: with the one worker busy and room for two in the queue, of
// five concurrent logins two wait and three are refused at once with EUnavailable; the
// two run once the worker is free.
func TestPasswords_QueueBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen outcomes
		p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 1, Queue: 2, Observe: seen.observe})
		f := fakeHashing(p)
		c := newCalls(t, p)
		c.login(context.Background(), "hold-login")
		wantStats(t, p, 1, 0, 0)

		var wg sync.WaitGroup
		for i := range 5 {
			wg.Go(func() {
				_, err := p.Verify(context.Background(), "login-"+string(rune('a'+i)), c.hash)
				c.done <- result{"login-" + string(rune('a'+i)), err}
			})
		}
		synctest.Wait()
		refused := c.ended()
		if len(refused) != 3 {
			t.Fatalf("%d of 5 logins returned while the worker was held, want 3 refused (queue of 2): %v", len(refused), refused)
		}
		for pw, err := range refused {
			wantCode(t, err, EUnavailable)
			if err != errHashQueueFull {
				t.Errorf("login %s: err = %v, want %v", pw, err, errHashQueueFull)
			}
		}
		wantStats(t, p, 1, 2, 0)
		if n := seen.count(HashQueueFull); n != 3 {
			t.Errorf("Observe saw %d queue_full, want 3", n)
		}

		f.release <- struct{}{}
		wg.Wait()
		for pw, err := range c.ended() {
			if err != nil {
				t.Errorf("login %s after the worker was freed: %v", pw, err)
			}
		}
		wantStats(t, p, 0, 0, 0)
		if f.maxRunning != 1 {
			t.Errorf("at most %d hashes ran at once, want 1", f.maxRunning)
		}
	})
}

// TestPasswords_SignupsDoNotStarveLogins checks that a flood of sign-ups takes neither
// the workers nor the queue from logins of existing users.
func TestPasswords_SignupsDoNotStarveLogins(t *testing.T) {
	t.Run("OneWorker", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var seen outcomes
			p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 1, Queue: 4, Observe: seen.observe})
			f := fakeHashing(p)
			c := newCalls(t, p)
			c.signup("hold-signup-0") // holds the worker
			c.signup("signup-1")
			c.login(context.Background(), "login-1")
			c.login(context.Background(), "login-2")
			c.signup("signup-2")                     // the queue is full
			c.signup("signup-3")                     // refused
			c.login(context.Background(), "login-3") // takes signup-2's place
			wantStats(t, p, 1, 3, 1)
			ended := c.ended()
			if len(ended) != 2 || ended["signup-3"] != errHashQueueFull || ended["signup-2"] != errHashDisplaced {
				t.Errorf("returned while the worker was held: %v, want signup-3 refused (%v) and signup-2 displaced (%v)",
					ended, errHashQueueFull, errHashDisplaced)
			}
			f.release <- struct{}{}
			for pw, err := range c.ended() {
				if err != nil {
					t.Errorf("%s: %v", pw, err)
				}
			}
			want := []string{"hold-signup-0", "login-1", "login-2", "login-3", "signup-1"}
			if got := f.order()[1:]; !slices.Equal(got, want) { // [0] is newCalls' hash
				t.Errorf("hashes ran in the order %q, want %q (logins first, each in order)", got, want)
			}

			// A queue full of logins refuses the next login.
			c.signup("hold-signup-4")
			for _, pw := range []string{"signup-5", "login-4", "login-5", "login-6", "login-7"} {
				if strings.HasPrefix(pw, "signup") {
					c.signup(pw)
				} else {
					c.login(context.Background(), pw)
				}
			}
			ended = c.ended()
			if len(ended) != 1 || ended["signup-5"] != errHashDisplaced {
				t.Errorf("returned: %v, want signup-5 displaced", ended)
			}
			c.login(context.Background(), "login-8")
			if ended = c.ended(); len(ended) != 1 || ended["login-8"] != errHashQueueFull {
				t.Errorf("returned: %v, want login-8 refused (queue full of logins)", ended)
			}
			f.release <- struct{}{}
			for pw, err := range c.ended() {
				if err != nil {
					t.Errorf("%s: %v", pw, err)
				}
			}
			if n := seen.count(HashDisplaced); n != 2 {
				t.Errorf("Observe saw %d displaced, want 2", n)
			}
		})
	})

	t.Run("HalfTheWorkers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer setGOMAXPROCS(4)()
			p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 4}) // sign-ups: 2
			f := fakeHashing(p)
			c := newCalls(t, p)
			c.signup("hold-signup-a")
			c.signup("hold-signup-b")
			c.signup("signup-c") // two workers are free, but not for sign-ups
			wantStats(t, p, 2, 0, 1)
			c.login(context.Background(), "login-1") // runs at once
			if ended := c.ended(); len(ended) != 1 || ended["login-1"] != nil {
				t.Errorf("returned while sign-ups held their half: %v, want login-1 done", ended)
			}
			f.release <- struct{}{}
			synctest.Wait()
			f.release <- struct{}{}
			for pw, err := range c.ended() {
				if err != nil {
					t.Errorf("%s: %v", pw, err)
				}
			}
			if f.maxSignups != 2 {
				t.Errorf("at most %d sign-ups hashed at once, want 2 (half of 4 workers)", f.maxSignups)
			}
			wantStats(t, p, 0, 0, 0)
		})
	})
}

// TestPasswords_GoneCallerFreesPlace: a queued login whose context ends (its client went
// away) leaves the queue at once, and its place goes to the next caller.
func TestPasswords_GoneCallerFreesPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen outcomes
		p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 1, Queue: 1, Observe: seen.observe})
		f := fakeHashing(p)
		c := newCalls(t, p)
		c.login(context.Background(), "hold-login")
		ctx, cancel := context.WithCancel(context.Background())
		c.login(ctx, "login-gone")
		c.login(context.Background(), "login-refused")
		if ended := c.ended(); len(ended) != 1 || ended["login-refused"] != errHashQueueFull {
			t.Fatalf("returned: %v, want login-refused refused (queue of one, taken)", ended)
		}
		cancel()
		if ended := c.ended(); len(ended) != 1 || ended["login-gone"] != errHashCanceled {
			t.Fatalf("returned after cancel: %v, want login-gone ended (%v)", ended, errHashCanceled)
		}
		wantStats(t, p, 1, 0, 0)
		c.login(context.Background(), "login-next") // the freed place
		if ended := c.ended(); len(ended) != 0 {
			t.Fatalf("returned: %v, want login-next waiting in the freed place", ended)
		}
		f.release <- struct{}{}
		if ended := c.ended(); len(ended) != 2 || ended["hold-login"] != nil || ended["login-next"] != nil {
			t.Errorf("returned: %v, want hold-login and login-next done", ended)
		}
		if slices.Contains(f.order(), "login-gone") {
			t.Errorf("the gone login's hash ran: %q", f.order())
		}
		if n := seen.count(HashCanceled); n != 1 {
			t.Errorf("Observe saw %d canceled, want 1", n)
		}
		wantStats(t, p, 0, 0, 0)
	})
}

// TestPasswords_MaxWait: a call that gets no worker within MaxWait is refused then, and
// leaves no trace in the queue.
func TestPasswords_MaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen outcomes
		p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 1, Queue: 4, MaxWait: time.Second, Observe: seen.observe})
		f := fakeHashing(p)
		c := newCalls(t, p)
		c.login(context.Background(), "hold-login")
		start := time.Now()
		_, err := p.Verify(context.Background(), testPassword, c.hash) // the clock runs while all wait
		if err != errHashTimedOut {
			t.Errorf("Verify = %v, want %v", err, errHashTimedOut)
		}
		if waited := time.Since(start); waited != time.Second {
			t.Errorf("Verify waited %v, want MaxWait (1s)", waited)
		}
		if _, err := p.Hash(context.Background(), "signup-late"); err != errHashTimedOut {
			t.Errorf("Hash = %v, want %v", err, errHashTimedOut)
		}
		wantStats(t, p, 1, 0, 0)
		f.release <- struct{}{}
		if ended := c.ended(); ended["hold-login"] != nil {
			t.Errorf("hold-login: %v", ended["hold-login"])
		}
		if n := seen.count(HashTimedOut); n != 2 {
			t.Errorf("Observe saw %d timed_out, want 2", n)
		}
	})
}

// TestPasswords_WorkersBound: however many logins and sign-ups arrive at once, no more
// hashes run at once than there are workers, and no more sign-ups than their half; and
// the workers are used (as many run at once as allowed).
func TestPasswords_WorkersBound(t *testing.T) {
	for _, workers := range []int{1, 2, 3, 4} {
		t.Run(string(rune('0'+workers)), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				defer setGOMAXPROCS(4)()
				p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: workers})
				f := fakeHashing(p)
				f.work = 10 * time.Millisecond
				c := newCalls(t, p)
				var wg sync.WaitGroup
				for i := range 60 {
					wg.Go(func() {
						var err error
						if i%3 == 0 {
							_, err = p.Hash(context.Background(), "signup")
						} else {
							_, err = p.Verify(context.Background(), "login", c.hash)
						}
						if err != nil {
							t.Errorf("call %d: %v", i, err)
						}
					})
				}
				wg.Wait()
				wantSignups := max(1, workers/2)
				if f.maxRunning != workers || f.maxSignups > wantSignups {
					t.Errorf("at most %d hashes (%d sign-ups) ran at once, want %d (at most %d)",
						f.maxRunning, f.maxSignups, workers, wantSignups)
				}
				wantStats(t, p, 0, 0, 0)
			})
		})
	}

	t.Run("Race", func(t *testing.T) { // real goroutines, for the race detector
		p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 2, Queue: 8, MaxWait: time.Minute})
		f := fakeHashing(p)
		c := &calls{t: t, p: p, hash: p.dummy}
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() {
				ctx := context.Background()
				if i%7 == 0 { // a client that goes away while it waits, or before
					var cancel context.CancelFunc
					ctx, cancel = context.WithCancel(ctx)
					go cancel()
				}
				var err error
				if i%3 == 0 {
					_, err = p.Hash(ctx, "signup")
				} else {
					_, err = p.Verify(ctx, "login", c.hash)
				}
				if err != nil && ErrorCode(err) != EUnavailable {
					t.Errorf("call %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if f.maxRunning > 2 {
			t.Errorf("at most %d hashes ran at once, want ≤ 2", f.maxRunning)
		}
		wantStats(t, p, 0, 0, 0)
	})
}

// TestPasswords_PerClient: one client (an address) holds at most its share of the
// workers and queue — a quarter of them, here 2 of 1+8 — and a call beyond it is refused
// at once, while another client's call still waits its turn; a client's calls that end,
// run or gave up, give its share back. Found by an outside review: one address signing
// in to five accounts of its own in a loop, with correct passwords, filled the queue and
// every other client got 503.
func TestPasswords_PerClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seen outcomes
		p := newPasswordsWithLimits(1, 64, PasswordLimits{Workers: 1, Queue: 8, Observe: seen.observe})
		f := fakeHashing(p)
		c := newCalls(t, p)
		a, b := WithHashClient(context.Background(), "a"), WithHashClient(context.Background(), "b")
		c.login(a, "hold-a1")
		aborted, abort := context.WithCancel(a)
		c.login(aborted, "a2")
		c.login(a, "a3")
		if got := c.ended(); len(got) != 1 || got["a3"] != errHashClientMax {
			t.Fatalf("with a1 running and a2 waiting, a3 = %v; want refused at once (%v)", got, errHashClientMax)
		}
		if n := seen.count(HashClientMax); n != 1 {
			t.Errorf("Observe saw %d client_max, want 1", n)
		}
		c.login(b, "b1")
		c.login(context.Background(), "anon") // names no client: not counted
		if got := c.ended(); len(got) != 0 {
			t.Fatalf("b1 or anon returned while the worker was held: %v", got)
		}
		wantStats(t, p, 1, 3, 0)

		abort() // a2 gives up its place, and a's share
		if got := c.ended(); len(got) != 1 || got["a2"] != errHashCanceled {
			t.Fatalf("after its context ended, a2 = %v; want %v", got, errHashCanceled)
		}
		c.login(a, "a4")
		if got := c.ended(); len(got) != 0 {
			t.Fatalf("a4 returned (%v), want it waiting: a has one call in (a1)", got)
		}
		f.release <- struct{}{}
		for pw, err := range c.ended() {
			if err != nil {
				t.Errorf("%s after the worker was freed: %v", pw, err)
			}
		}
		wantStats(t, p, 0, 0, 0)
		if got := len(p.gate.clients); got != 0 {
			t.Errorf("%d clients still counted after every call ended", got)
		}
	})
}
