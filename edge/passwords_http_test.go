package edge

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/functions"
)

// TestHTTP_PasswordQueue: with the one hashing worker busy and its queue (of one) taken,
// a login, known user or not, and a sign-up get a JSON 503 unavailable with Retry-After
// at once — not a 401, not a 500 — while the queued login completes once the worker is
// free; the refused sign-up is not charged to the address's sign-up limit, and the
// refusals are counted in /metrics.
func TestHTTP_PasswordQueue(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "hashq-0")
	cfg.PasswordWorkers, cfg.PasswordQueue = 1, 1
	cfg.SignupsPerAddress = 2
	cfg.Now = windowStartClock(signupWindow)
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	signUp(t, c, "alice")

	// The node's hasher, but the first login holds the worker until release.
	_, holding, release := holdFirstHash(n, functions.PasswordLimits{
		Workers: 1, Queue: 1, MaxWait: time.Minute, PerClient: 10, // one client address: the queue is under test
		Observe: n.metrics.observeHash,
	})

	type reply struct {
		user   string
		status int
		header http.Header
		body   []byte
		err    error
	}
	post := func(path, user string) reply {
		b, _ := json.Marshal(map[string]string{"username": user, "password": "correct horse"})
		resp, err := c.hc.Post(c.base+path, "application/json", bytes.NewReader(b))
		if err != nil {
			return reply{user: user, err: err}
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return reply{user, resp.StatusCode, resp.Header, body, err}
	}
	replies := make(chan reply, 3)
	go func() { replies <- post("/v1/sessions", "alice") }()
	<-holding // alice's login holds the only worker
	for _, user := range []string{"alice", "nobody"} {
		go func() { replies <- post("/v1/sessions", user) }()
	}
	// One of the two waits in the queue and cannot finish while the worker is held: the
	// first reply is the other one's refusal.
	refused := <-replies
	wantBusy := func(r reply) {
		t.Helper()
		if r.err != nil {
			t.Fatalf("%s: %v", r.user, r.err)
		}
		var e errorBody
		if err := json.Unmarshal(r.body, &e); r.status != http.StatusServiceUnavailable || err != nil || e.Error.Code != functions.EUnavailable {
			t.Errorf("%s: %d %s, want 503 with code %q", r.user, r.status, r.body, functions.EUnavailable)
		}
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: Content-Type = %q, want application/json", r.user, ct)
		}
		if ra := r.header.Get("Retry-After"); ra != "1" {
			t.Errorf("%s: Retry-After = %q, want \"1\"", r.user, ra)
		}
	}
	wantBusy(refused)
	signup := post("/v1/users", "bob") // a sign-up never takes a login's place
	wantBusy(signup)

	close(release)
	for range 2 {
		r := <-replies
		want := http.StatusCreated
		if r.user == "nobody" {
			want = http.StatusUnauthorized
		}
		if r.err != nil || r.status != want {
			t.Errorf("%s, once the worker was free: %d %s (%v), want %d", r.user, r.status, r.body, r.err, want)
		}
	}

	// The refused sign-up was not charged to the address: of its two, alice took one.
	if r := post("/v1/users", "carol"); r.err != nil || r.status != http.StatusCreated {
		t.Errorf("carol: %d %s (%v), want 201: a 503 sign-up must not count against the address", r.status, r.body, r.err)
	}
	if r := post("/v1/users", "dave"); r.err != nil || r.status != http.StatusTooManyRequests {
		t.Errorf("dave: %d %s (%v), want 429 (two sign-ups from the address)", r.status, r.body, r.err)
	}

	resp, body := c.do("GET", "/metrics", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		`sessiond_password_refused_total{kind="login",reason="queue_full"} 1`,
		`sessiond_password_refused_total{kind="signup",reason="queue_full"} 1`,
		`sessiond_password_wait_seconds_count{kind="login"}`,
		`sessiond_password_queue_length{kind="login"} 0`,
		`sessiond_password_queue_length{kind="signup"} 0`,
		`sessiond_password_hashes_running 0`,
		`sessiond_password_workers 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(body, "sessiond_password"))
		}
	}
}

// TestConfig_PasswordLimits: the hashing limits are checked early and default to half
// the CPUs and 32 waiting per worker.
func TestConfig_PasswordLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
	}{
		{"NegativeWorkers", func(c *Config) { c.PasswordWorkers = -1 }},
		{"NegativeQueue", func(c *Config) { c.PasswordQueue = -1 }},
		{"ZeroWait", func(c *Config) { c.PasswordWait = 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.set(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "Password") {
				t.Errorf("Validate() = %v, want an error naming the field", err)
			}
		})
	}
	t.Run("Defaults", func(t *testing.T) {
		n, err := NewNode(DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		w := max(1, runtime.GOMAXPROCS(0)/2)
		if n.cfg.PasswordWorkers != w || n.cfg.PasswordQueue != 32*w || n.cfg.PasswordWait != time.Second {
			t.Errorf("PasswordWorkers, PasswordQueue, PasswordWait = %d, %d, %v; want %d, %d, 1s",
				n.cfg.PasswordWorkers, n.cfg.PasswordQueue, n.cfg.PasswordWait, w, 32*w)
		}
	})
}

// TestHTTP_PasswordPerClient: one client address holds at most its share of the hashing
// queue; its next login is refused at once with 503, while another address's login still
// waits its turn and gets in (found by an outside review: one address signing in to
// accounts of its own in a loop took the whole queue).
func TestHTTP_PasswordPerClient(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "hashc-0")
	cfg.TrustedProxies = []string{"127.0.0.1"} // the test picks addresses with X-Forwarded-For
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	signUp(t, c, "alice")

	p, holding, release := holdFirstHash(n, functions.PasswordLimits{Workers: 1, Queue: 8, PerClient: 2, MaxWait: time.Minute})
	login := func(addr string) int {
		resp, _ := c.do("POST", "/v1/sessions", "", map[string]string{"username": "alice", "password": "correct horse"},
			"X-Forwarded-For", addr)
		return resp.StatusCode
	}
	waiting := func(logins int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); p.Stats().WaitingLogins != logins; {
			if time.Now().After(deadline) {
				t.Fatalf("%d logins waiting, want %d", p.Stats().WaitingLogins, logins)
			}
			time.Sleep(time.Millisecond) // polling the queue's state, not standing in for it
		}
	}
	statuses := make(chan int, 3)
	go func() { statuses <- login("198.51.100.1") }()
	<-holding // the first holds the only worker
	go func() { statuses <- login("198.51.100.1") }()
	waiting(1)
	if got := login("198.51.100.1"); got != http.StatusServiceUnavailable {
		t.Errorf("a third login from the address: %d, want 503 at once", got)
	}
	go func() { statuses <- login("198.51.100.2") }()
	waiting(2) // another address still queues
	close(release)
	for range 3 {
		if got := <-statuses; got != http.StatusCreated {
			t.Errorf("a login let in: %d, want 201", got)
		}
	}
}

// holdFirstHash gives n's users and sessions a hasher with limits whose first hash to run
// holds its worker: holding is closed once it does, and it runs on when release is
// closed. Observe in limits, if any, still sees every outcome.
func holdFirstHash(n *Node, limits functions.PasswordLimits) (p *functions.Passwords, holding <-chan struct{}, release chan struct{}) {
	held, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	also := limits.Observe
	limits.Observe = func(w functions.HashWait) {
		if also != nil {
			also(w)
		}
		if w.Outcome == functions.HashRan && once.CompareAndSwap(false, true) {
			close(held)
			<-release
		}
	}
	p = functions.NewPasswordsWithLimits(limits)
	n.users.Passwords, n.sessions.Passwords = p, p // before the test sends its requests
	return p, held, release
}
