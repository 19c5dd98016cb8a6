package edge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// limitsConfig is testConfig behind a trusted proxy (so tests choose the client address
// with X-Forwarded-For) with the given login limits, on a clock that stands still unless
// the test moves it (counts are per sliding window: a slow run must not see them decay).
func limitsConfig(t *testing.T, name string, perAddress, perAccountAddress, perAccount int) Config {
	cfg := testConfig(t, name)
	cfg.Now = newFakeClock(time.Now()).Now
	cfg.TrustedProxies = []string{"127.0.0.1"}
	cfg.LoginPerAddress, cfg.LoginPerAccountAddress, cfg.LoginPerAccount = perAddress, perAccountAddress, perAccount
	return cfg
}

type loginReply struct {
	Token  string `json:"token"`
	Device string `json:"device"`
}

// loginFrom logs in from addr and returns the response and its decoded body.
func loginFrom(t *testing.T, c *testClient, addr, user, password, device string) (*http.Response, []byte, loginReply) {
	t.Helper()
	body := map[string]string{"username": user, "password": password}
	if device != "" {
		body["device"] = device
	}
	resp, b := c.do("POST", "/v1/sessions", "", body, "X-Forwarded-For", addr)
	var out loginReply
	if resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("login body %s: %v", b, err)
		}
	}
	return resp, b, out
}

// TestHTTP_LoginOwnerNotLockedOut: an attacker's wrong guesses from one address, however
// many, neither lock the owner out from another address nor charge successful logins.
func TestHTTP_LoginOwnerNotLockedOut(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, limitsConfig(t, "owner-0", 60, 10, 100))
	c := newTestClient(t, n)
	signUp(t, c, "victim")
	for i := range 12 {
		resp, body, _ := loginFrom(t, c, "203.0.113.66", "victim", "wrong password", "")
		if i < 10 {
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
		} else {
			wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
				t.Errorf("Retry-After = %q, want 1 to 60 seconds", resp.Header.Get("Retry-After"))
			}
		}
	}
	for i := range 20 { // successes charge nothing
		resp, body, out := loginFrom(t, c, "198.51.100.7", "victim", "correct horse", "")
		if resp.StatusCode != http.StatusCreated || out.Token == "" || out.Device == "" {
			t.Fatalf("owner's login %d while the attacker is locked out: status %d, body %s", i+1, resp.StatusCode, body)
		}
	}
	// The attacker's address stays refused, even with the right password.
	resp, body, _ := loginFrom(t, c, "203.0.113.66", "victim", "correct horse", "")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	checkHeaders(t, "429", "owner-0", true, resp.Header)

	resp, body = c.do("GET", "/metrics", "", nil)
	if !bytes.Contains(body, []byte(`sessiond_login_failures_total{reason="throttled"} 3`)) {
		t.Errorf("metrics lack 3 throttled logins:\n%s", grepLines(body, "sessiond_login_failures_total"))
	}
	_ = resp
}

// TestHTTP_LoginDeviceToken: once guesses from many addresses exhaust the account-wide
// limit, a client that signed in before (it holds a device token) still gets in; others
// do not. A device token is no access token.
func TestHTTP_LoginDeviceToken(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, limitsConfig(t, "device-0", 60, 2, 6))
	c := newTestClient(t, n)
	signUp(t, c, "victim")
	signUp(t, c, "other")
	_, _, first := loginFrom(t, c, "198.51.100.7", "victim", "correct horse", "")
	_, _, others := loginFrom(t, c, "198.51.100.8", "other", "correct horse", "")
	if first.Device == "" {
		t.Fatal("login returned no device token")
	}
	for i := range 3 { // 3 addresses × 2 failures = the account-wide 6
		for range 2 {
			resp, body, _ := loginFrom(t, c, fmt.Sprintf("203.0.113.%d", i), "victim", "wrong password", "")
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
		}
	}
	resp, body, _ := loginFrom(t, c, "192.0.2.1", "victim", "correct horse", "")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	// Another account's device token does not help.
	resp, body, _ = loginFrom(t, c, "192.0.2.1", "victim", "correct horse", others.Device)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	resp, body, again := loginFrom(t, c, "192.0.2.1", "victim", "correct horse", first.Device)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("owner with a device token: status %d, body %s; want 201", resp.StatusCode, body)
	}
	// A guesser holding the device token still meets the per-address limits.
	for range 2 {
		loginFrom(t, c, "203.0.113.99", "victim", "wrong password", first.Device)
	}
	resp, body, _ = loginFrom(t, c, "203.0.113.99", "victim", "correct horse", first.Device)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")

	resp, body = c.do("GET", "/v1/sessions/current", again.Device, nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	resp, body = c.do("GET", "/v1/sessions/current", again.Token, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the session token: status %d, body %s", resp.StatusCode, body)
	}
	// A device token of an earlier owner of the name (erased, the name registered again)
	// lifts nothing for the new owner's account.
	t.Run("ErrEarlierOwnersDevice", func(t *testing.T) {
		tok := signUp(t, c, "ghost")
		_, _, old := loginFrom(t, c, "198.51.100.9", "ghost", "correct horse", "")
		if resp, body := c.do("DELETE", "/v1/users/me", tok, nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("erase: status %d, body %s", resp.StatusCode, body)
		}
		signUp(t, c, "ghost")
		for i := range 3 {
			for range 2 {
				resp, body, _ := loginFrom(t, c, fmt.Sprintf("203.0.114.%d", i), "ghost", "wrong password", "")
				wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
			}
		}
		resp, body, _ := loginFrom(t, c, "192.0.2.2", "ghost", "wrong password", old.Device)
		wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	})
	// A device token issued before its owner signed out everywhere lifts nothing: the
	// owner meant to shut out whoever holds the devices of then. One issued after it, the
	// same second and with the node's hybrid clock ahead of its wall clock too, does.
	t.Run("ErrDeviceBeforeSignOutEverywhere", func(t *testing.T) {
		signUp(t, c, "shared")
		_, _, before := loginFrom(t, c, "198.51.100.10", "shared", "correct horse", "")
		// A device token another node issued a moment before the sign-out, its clock 30 s
		// ahead and the sign-out unknown to it: it ends as that node's session does.
		var me struct{ User struct{ ID string } }
		_, meBody := c.do("GET", "/v1/users/me", before.Token, nil)
		if err := json.Unmarshal(meBody, &me); err != nil || me.User.ID == "" {
			t.Fatalf("GET /v1/users/me: %s", meBody)
		}
		ahead, err := n.tokens.signDevice(me.User.ID, "shared", crdt.Timestamp{Wall: time.Now().Add(30 * time.Second).UnixNano(), Node: 99}, crdt.Timestamp{})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.db.Clock().Observe(crdt.Timestamp{Wall: time.Now().Add(30 * time.Second).UnixNano(), Node: 99}); err != nil {
			t.Fatal(err)
		}
		if resp, body := c.do("DELETE", "/v1/sessions", before.Token, nil); resp.StatusCode/100 != 2 {
			t.Fatalf("sign out everywhere: status %d, body %s", resp.StatusCode, body)
		}
		_, _, after := loginFrom(t, c, "198.51.100.11", "shared", "correct horse", "")
		if after.Device == "" {
			t.Fatal("no device token after signing out everywhere")
		}
		for i := range 3 {
			for range 2 {
				resp, body, _ := loginFrom(t, c, fmt.Sprintf("203.0.115.%d", i), "shared", "wrong password", "")
				wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
			}
		}
		resp, body, _ := loginFrom(t, c, "192.0.2.3", "shared", "correct horse", before.Device)
		wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
		resp, body, _ = loginFrom(t, c, "192.0.2.3", "shared", "correct horse", ahead)
		wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
		if resp, body, _ := loginFrom(t, c, "192.0.2.3", "shared", "correct horse", after.Device); resp.StatusCode != http.StatusCreated {
			t.Errorf("the owner with a device token issued after signing out everywhere: status %d, body %s; want 201", resp.StatusCode, body)
		}
	})
	t.Run("ErrBadDevice", func(t *testing.T) {
		resp, body := c.do("POST", "/v1/sessions", "", map[string]any{"username": "victim", "password": "x", "device": 42})
		wantError(t, resp, body, http.StatusBadRequest, "invalid_argument")
	})
}

// TestHTTP_LoginThrottleByProxy throttles by the X-Forwarded-For address behind a trusted
// proxy, each address on its own.
func TestHTTP_LoginThrottleByProxy(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, limitsConfig(t, "xff-0", 1, 1, 1000))
	c := newTestClient(t, n)
	login := func(addr string, status int, code string) {
		t.Helper()
		resp, body, _ := loginFrom(t, c, addr, fmt.Sprintf("u-%x", addr), "wrong password", "")
		wantError(t, resp, body, status, code)
	}
	login("10.0.0.1", 401, "unauthorized")
	login("10.0.0.2", 401, "unauthorized")
	login("10.0.0.3", 401, "unauthorized")
	login("10.0.0.1", 429, "rate_limited")
	login("10.0.0.2", 429, "rate_limited")
	login("10.0.0.3", 429, "rate_limited")
	login("10.0.0.4", 401, "unauthorized")
}

// TestHTTP_SignupLimit: sign-ups per address are limited, taken names (409) count as
// much as new accounts, invalid input does not, and other addresses are not affected.
func TestHTTP_SignupLimit(t *testing.T) {
	t.Parallel()
	cfg := limitsConfig(t, "signup-0", 60, 10, 100)
	cfg.SignupsPerAddress = 3
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	register := func(addr, user, password string) (*http.Response, []byte) {
		return c.do("POST", "/v1/users", "", map[string]any{"username": user, "password": password}, "X-Forwarded-For", addr)
	}
	resp, body := register("203.0.113.5", "x", "short") // invalid: not counted
	wantError(t, resp, body, http.StatusBadRequest, "invalid_argument")
	if resp, body := register("203.0.113.5", "taken", "correct horse"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("first sign-up: status %d, body %s", resp.StatusCode, body)
	}
	for range 2 {
		resp, body := register("203.0.113.5", "taken", "correct horse")
		wantError(t, resp, body, http.StatusConflict, "username_taken")
	}
	resp, body = register("203.0.113.5", "fresh", "correct horse")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 600 {
		t.Errorf("Retry-After = %q, want 1 to 600 seconds", resp.Header.Get("Retry-After"))
	}
	resp, body = register("203.0.113.5", "taken", "correct horse") // probing a name
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if resp, body := register("198.51.100.1", "fresh", "correct horse"); resp.StatusCode != http.StatusCreated {
		t.Errorf("another address: status %d, body %s; want 201", resp.StatusCode, body)
	}
}

// freeGossipAddr returns a loopback address whose port is free for TCP and UDP now (serf
// uses both); a joining node needs the address of a member.
func freeGossipAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr
		}
	}
	t.Fatal("no free port for TCP and UDP")
	return ""
}

// TestHTTP_LimitsClusterWide: failures on one node count on another, so N nodes do not
// give an attacker N times the budget; sign-ups likewise.
func TestHTTP_LimitsClusterWide(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Now()) // one clock: the nodes agree on the window
	cfgA := limitsConfig(t, "cw-a", 60, 3, 100)
	cfgA.Now = clock.Now
	cfgA.GossipAddr = freeGossipAddr(t)
	cfgA.SignupsPerAddress = 1
	cfgA.CounterFlush = 20 * time.Millisecond
	a := MustStartNode(t, cfgA)
	cfgB := limitsConfig(t, "cw-b", 60, 3, 100)
	cfgB.Now = clock.Now
	cfgB.Join = []string{cfgA.GossipAddr}
	cfgB.SignupsPerAddress = 1
	cfgB.CounterFlush = 20 * time.Millisecond
	b := MustStartNode(t, cfgB)
	waitFor(t, 20*time.Second, "a and b to see each other", func() bool {
		return a.counters.Peers() == 1 && b.counters.Peers() == 1
	})
	ca, cb := newTestClient(t, a), newTestClient(t, b)
	for range 3 {
		resp, body, _ := loginFrom(t, ca, "203.0.113.66", "victim", "wrong password", "")
		wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	}
	// Polled without attempts on b, which would count there too.
	waitFor(t, 10*time.Second, "b to count a's 3 failures", func() bool {
		return b.counters.Estimate(setLoginFailures, "ua|victim|203.0.113.66").Current == 3
	})
	resp, body, _ := loginFrom(t, cb, "203.0.113.66", "victim", "wrong password", "")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	resp, body = ca.do("POST", "/v1/users", "", map[string]any{"username": "first", "password": "correct horse"}, "X-Forwarded-For", "192.0.2.9")
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("sign-up on a: status %d, body %s", resp.StatusCode, body)
	}
	waitFor(t, 10*time.Second, "b to count a's sign-up", func() bool {
		return b.counters.Estimate(setSignups, "s|192.0.2.9").Current == 1
	})
	resp, body = cb.do("POST", "/v1/users", "", map[string]any{"username": "second", "password": "correct horse"}, "X-Forwarded-For", "192.0.2.9")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
}

// TestHTTP_MessageLimits: one user sends at most MessagesPerUser messages a minute, and
// names at most UnknownNamesPerUser users that do not exist (through either messages
// route), so it can neither fill the disks nor enumerate usernames; others are not
// affected.
func TestHTTP_MessageLimits(t *testing.T) {
	t.Parallel()
	cfg := limitsConfig(t, "msglimit-0", 60, 10, 100)
	cfg.MessagesPerUser, cfg.UnknownNamesPerUser = 5, 3
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	flooder, other := signUp(t, c, "flooder"), signUp(t, c, "other")
	signUp(t, c, "target")
	send := func(tok, to string) (*http.Response, []byte) {
		return c.do("POST", "/v1/messages", tok, map[string]string{"to": to, "body": "hi"})
	}
	for i := range 5 {
		if resp, body := send(flooder, "target"); resp.StatusCode != http.StatusCreated {
			t.Fatalf("message %d: status %d, body %s", i+1, resp.StatusCode, body)
		}
	}
	resp, body := send(flooder, "target")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if resp, body := send(other, "target"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("another user's message: status %d, body %s", resp.StatusCode, body)
	}

	for i, name := range []string{"nobody1", "nobody2", "nobody3"} {
		path := "/v1/messages?with=" + name
		if i == 1 {
			resp, body := send(other, name)
			wantError(t, resp, body, http.StatusNotFound, "not_found")
			continue
		}
		resp, body := c.do("GET", path, other, nil)
		wantError(t, resp, body, http.StatusNotFound, "not_found")
	}
	resp, body = c.do("GET", "/v1/messages?with=target", other, nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited") // existing names too: no oracle
	resp, body = c.do("GET", "/v1/messages?with=target", flooder, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("another user's lookup: status %d, body %s", resp.StatusCode, body)
	}
}

// TestHTTP_ConcurrentLogins: logins to one account from one address at once, more than
// the limit on failures leaves room for in flight, all get in (the later ones wait for the
// earlier ones' outcome) rather than a 429 that blames failures.
func TestHTTP_ConcurrentLogins(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, limitsConfig(t, "tabs-0", 60, 1, 100))
	c := newTestClient(t, n)
	signUp(t, c, "tabs")
	const tabs = maxWaitersPerKey // the most that may wait on one key
	results := make(chan string, tabs)
	for range tabs {
		go func() {
			resp, body, _ := loginFrom(t, c, "198.51.100.9", "tabs", "correct horse", "")
			results <- fmt.Sprintf("%d %s", resp.StatusCode, body)
		}()
	}
	for range tabs {
		if r := <-results; r[:3] != "201" {
			t.Errorf("a concurrent login: %s", r)
		}
	}
}

// TestHTTP_SignInLimit: sign-ins that succeed are limited per account (each leaves a
// session stored until it expires: an account signing in in a loop piled them up, found
// by an outside review); another account is not affected, a wrong password is not
// charged, and the window passes.
func TestHTTP_SignInLimit(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "signins-0")
	clock := newFakeClock(time.Now())
	cfg.Now = clock.Now
	cfg.SignInsPerAccount = 3
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	signUp(t, c, "looper") // one sign-in
	signUp(t, c, "bystander")
	login := func(user, password string) (*http.Response, []byte) {
		return c.do("POST", "/v1/sessions", "", map[string]any{"username": user, "password": password})
	}
	resp, body := login("looper", "wrong password")
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	for range 2 {
		if resp, body := login("looper", "correct horse"); resp.StatusCode != http.StatusCreated {
			t.Fatalf("sign-in within the limit: %d %s", resp.StatusCode, body)
		}
	}
	resp, body = login("looper", "correct horse")
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q, want 1–60 seconds", resp.Header.Get("Retry-After"))
	}
	if resp, body := login("bystander", "correct horse"); resp.StatusCode != http.StatusCreated {
		t.Errorf("another account's sign-in: %d %s", resp.StatusCode, body)
	}
	clock.Add(time.Minute + time.Second)
	if resp, body := login("looper", "correct horse"); resp.StatusCode != http.StatusCreated {
		t.Errorf("a sign-in once the window passed: %d %s", resp.StatusCode, body)
	}
}
