package edge

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fixed cluster keys for tests, 32 bytes each.
var (
	testKey    = bytes.Repeat([]byte{0x5a}, 32)
	testOldKey = bytes.Repeat([]byte{0xa5}, 32)
	otherKey   = bytes.Repeat([]byte{0x33}, 32)
)

// testConfig returns DefaultConfig on loopback ":0" ports in a temporary data directory,
// with a fixed cluster key, fast gossip and logs routed to tb.
func testConfig(tb testing.TB, name string) Config {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.SyncAddr = "127.0.0.1:0" // needed: the default is the gossip port + 1
	cfg.DataDir = tb.TempDir()
	cfg.ClusterKeys = [][]byte{testKey}
	cfg.FastGossip = true
	cfg.LoginPerAccount = 1000
	cfg.LoginPerAddress = 1000
	cfg.SignInsPerAccount = 1000 // tests sign one account in many times (the limit's test sets its own)
	cfg.Logger = testLogger(tb, name)
	return cfg
}

// windowStartClock returns a clock that runs at real speed but starts a second after a
// boundary of window. Limits count in fixed windows, the previous one weighted by how much
// of it still lies within a window of now: requests that straddle a boundary count a
// little less than their number (six failures read 5.99), so a test that asserts a limit
// exactly runs its nodes on this clock and has a whole window before the next boundary.
func windowStartClock(window time.Duration) func() time.Time {
	now := time.Now()
	shift := now.Sub(now.Truncate(window)) - time.Second
	return func() time.Time { return time.Now().Add(-shift) }
}

// MustStartNode starts a node for cfg, waits until it is ready and closes it when the
// test ends, checking that Close succeeds and is idempotent.
func MustStartNode(tb testing.TB, cfg Config) *Node {
	tb.Helper()
	n, err := NewNode(cfg)
	if err != nil {
		tb.Fatalf("NewNode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			tb.Errorf("Close: %v", err)
		}
		if err := n.Close(context.Background()); err != nil {
			tb.Errorf("second Close: %v", err)
		}
		if n.Ready() {
			tb.Errorf("Ready() after Close = true, want false")
		}
	})
	waitFor(tb, 10*time.Second, "node ready", n.Ready)
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for wait := time.Millisecond; !cond(); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(wait)
	}
}

// testLogger returns a logger that writes to tb.Log with the node name as a prefix, and
// goes quiet once the test has finished (late log lines would panic).
func testLogger(tb testing.TB, name string) *slog.Logger {
	w := &tbWriter{tb: tb, prefix: name + ": "}
	tb.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tbWriter struct {
	tb     testing.TB
	prefix string
	done   atomic.Bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.tb.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testClient talks to a node over real loopback HTTP.
type testClient struct {
	tb   testing.TB
	base string
	node string // the node's admin identity: admin requests are signed for it
	hc   *http.Client
}

func newTestClient(tb testing.TB, n *Node) *testClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &testClient{tb: tb, base: "http://" + n.HTTPAddr(), node: n.admin.Identity(), hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// do sends a request. body is sent as is when it is a string or []byte, else as JSON;
// nil sends none.
func (c *testClient) do(method, path, token string, body any, hdr ...string) (*http.Response, []byte) {
	c.tb.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.tb.Fatalf("marshal body: %v", err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		c.tb.Fatalf("new request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.tb.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

// wantError checks that a response is the JSON error with the given status and code.
func wantError(tb testing.TB, resp *http.Response, body []byte, status int, code string) {
	tb.Helper()
	if resp.StatusCode != status {
		tb.Errorf("%s %s: status = %d, want %d (body %s)", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, body)
		return
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		tb.Errorf("%s %s: Content-Type = %q, want application/json", resp.Request.Method, resp.Request.URL.Path, ct)
	}
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		tb.Errorf("%s %s: error body %q: %v", resp.Request.Method, resp.Request.URL.Path, body, err)
		return
	}
	if e.Error.Code != code || e.Error.Message == "" {
		tb.Errorf("%s %s: error = %+v, want code %q with a message", resp.Request.Method, resp.Request.URL.Path, e.Error, code)
	}
}

// checkHeaders checks the headers every response carries: API responses (api) have the
// API's Content-Security-Policy, the others the UI's.
func checkHeaders(tb testing.TB, what, node string, api bool, h http.Header) {
	tb.Helper()
	csp := contentSecurityPolicy
	if api {
		csp = apiContentSecurityPolicy
	}
	want := map[string]string{
		"X-Served-By":                node,
		"X-Content-Type-Options":     "nosniff",
		"X-Frame-Options":            "DENY",
		"Referrer-Policy":            "no-referrer",
		"Content-Security-Policy":    csp,
		"Cross-Origin-Opener-Policy": "same-origin",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			tb.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
	if h.Get("Cache-Control") == "" {
		tb.Errorf("%s: no Cache-Control", what)
	}
}

// signUp registers username and logs in, returning the token.
func signUp(tb testing.TB, c *testClient, username string) string {
	tb.Helper()
	resp, body := c.do("POST", "/v1/users", "", map[string]any{"username": username, "password": "correct horse"})
	if resp.StatusCode != http.StatusCreated {
		tb.Fatalf("register %s: status %d: %s", username, resp.StatusCode, body)
	}
	resp, body = c.do("POST", "/v1/sessions", "", map[string]any{"username": username, "password": "correct horse"})
	if resp.StatusCode != http.StatusCreated {
		tb.Fatalf("login %s: status %d: %s", username, resp.StatusCode, body)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
		tb.Fatalf("login %s: body %s: %v", username, body, err)
	}
	return out.Token
}

// rawRequest writes head (the request line and headers, without the final blank line) on
// a fresh connection and reads the response without sending any body: the server must
// answer from the headers alone.
func rawRequest(tb testing.TB, addr, head string) (*http.Response, []byte) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head+"\r\n\r\n"); err != nil {
		tb.Fatalf("write: %v", err)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/", nil)
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		tb.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read body: %v", err)
	}
	return resp, b
}

func TestHTTP_Headers(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "headers-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	for _, tc := range []struct {
		method, path, token string
		body                any
		status              int
	}{
		{"GET", "/", "", nil, 200},
		{"GET", "/index.html", "", nil, 200},
		{"GET", "/app.css", "", nil, 200},
		{"GET", "/js/app.js", "", nil, 200},
		{"GET", "/no-such-file.txt", "", nil, 404},
		{"GET", "/healthz", "", nil, 200},
		{"GET", "/readyz", "", nil, 200},
		{"GET", "/metrics", "", nil, 200},
		{"GET", "/v1/nope", "", nil, 404},
		{"PUT", "/v1/users", "", "{}", 404},
		{"GET", "/v1/sessions/current", "", nil, 401},
		{"GET", "/v1/sessions/current", tok, nil, 200},
		{"GET", "/v1/cluster", tok, nil, 200},
		{"POST", "/v1/users", "", "{", 400},
		{"POST", "/v1/messages", tok, map[string]string{"to": "nobody", "body": "x"}, 404},
		{"DELETE", "/v1/sessions/nope", tok, nil, 404},
	} {
		resp, body := c.do(tc.method, tc.path, tc.token, tc.body)
		what := tc.method + " " + tc.path
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status = %d, want %d (%s)", what, resp.StatusCode, tc.status, body)
		}
		checkHeaders(t, what, "headers-0", strings.HasPrefix(tc.path, "/v1/"), resp.Header)
	}

	t.Run("TooLarge", func(t *testing.T) {
		resp, body := rawRequest(t, n.HTTPAddr(), fmt.Sprintf(
			"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d", maxBody+1))
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "too_large")
		checkHeaders(t, "413", "headers-0", true, resp.Header)
	})

	t.Run("Stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/messages/stream", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Errorf("stream: status %d, Content-Type %q; want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		checkHeaders(t, "stream", "headers-0", true, resp.Header)
	})
}

func TestHTTP_UI(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "ui-0"))
	c := newTestClient(t, n)
	resp, body := c.do("GET", "/", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /: status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET /: Content-Type = %q, want text/html", ct)
	}
	if !bytes.Contains(bytes.ToLower(body), []byte("<!doctype html")) {
		t.Errorf("GET /: body does not look like index.html: %.100s", body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("GET /: Content-Security-Policy = %q", csp)
	}
}

func TestHTTP_NotFound(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "nf-0"))
	c := newTestClient(t, n)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/nope"},
		{"GET", "/v1/"},
		{"GET", "/v1/users"},
		{"PUT", "/v1/sessions/current"},
		{"POST", "/v1/cluster"},
		{"GET", "/v2/users"},
		{"GET", "/nothing-here"},
	} {
		resp, body := c.do(tc.method, tc.path, "", nil)
		wantError(t, resp, body, http.StatusNotFound, "not_found")
	}
}

func TestHTTP_BadBodies(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "bad-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(`{"username":"zipped","password":"correct horse"}`))
	zw.Close()

	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		hdr                       []string
		status                    int
		code                      string
	}{
		{"Malformed", "POST", "/v1/users", "", `{"username":`, nil, 400, "invalid_argument"},
		{"NotJSON", "POST", "/v1/users", "", `username=bob`, nil, 400, "invalid_argument"},
		{"UnknownField", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse","admin":true}`, nil, 400, "invalid_argument"},
		{"UnknownNestedField", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse","profile":{"role":"admin"}}`, nil, 400, "invalid_argument"},
		{"WrongType", "POST", "/v1/users", "", `{"username":1,"password":"correct horse"}`, nil, 400, "invalid_argument"},
		{"WrongTypeProfile", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse","profile":"x"}`, nil, 400, "invalid_argument"},
		{"Empty", "POST", "/v1/users", "", ``, nil, 400, "invalid_argument"},
		{"Blank", "POST", "/v1/users", "", "  \n", nil, 400, "invalid_argument"},
		{"Array", "POST", "/v1/users", "", `[]`, nil, 400, "invalid_argument"},
		{"Null", "POST", "/v1/users", "", `null`, nil, 400, "invalid_argument"},
		{"TwoObjects", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse"}{}`, nil, 400, "invalid_argument"},
		{"TrailingBrace", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse"}}`, nil, 400, "invalid_argument"},
		{"TrailingBracket", "POST", "/v1/users", "", `{"username":"bobby","password":"correct horse"}]`, nil, 400, "invalid_argument"},
		{"InvalidUTF8", "POST", "/v1/users", "", "{\"username\":\"bobby\",\"password\":\"correct horse\",\"profile\":{\"first_name\":\"\xff\"}}", nil, 400, "invalid_argument"},
		{"Gzip", "POST", "/v1/users", "", gz.Bytes(), []string{"Content-Encoding", "gzip"}, 400, "invalid_argument"},
		{"LoginMalformed", "POST", "/v1/sessions", "", `{"username":"alice","password":`, nil, 400, "invalid_argument"},
		{"LoginUnknownField", "POST", "/v1/sessions", "", `{"username":"alice","password":"correct horse","otp":1}`, nil, 400, "invalid_argument"},
		{"PatchMalformed", "PATCH", "/v1/sessions/current", tok, `{"data":{`, nil, 400, "invalid_argument"},
		{"PatchNoData", "PATCH", "/v1/sessions/current", tok, `{}`, nil, 400, "invalid_argument"},
		{"PatchDataArray", "PATCH", "/v1/sessions/current", tok, `{"data":[1]}`, nil, 400, "invalid_argument"},
		{"PatchUnknownField", "PATCH", "/v1/sessions/current", tok, `{"data":{},"x":1}`, nil, 400, "invalid_argument"},
		{"ProfileNoProfile", "PATCH", "/v1/users/me", tok, `{}`, nil, 400, "invalid_argument"},
		{"ProfileWrongType", "PATCH", "/v1/users/me", tok, `{"profile":{"email":5}}`, nil, 400, "invalid_argument"},
		{"MessageWrongType", "POST", "/v1/messages", tok, `{"to":["bob"],"body":"x"}`, nil, 400, "invalid_argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.do(tc.method, tc.path, tc.token, tc.body, tc.hdr...)
			wantError(t, resp, body, tc.status, tc.code)
		})
	}

	t.Run("TooLarge", func(t *testing.T) {
		resp, body := rawRequest(t, n.HTTPAddr(), fmt.Sprintf(
			"PATCH /v1/sessions/current HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d", tok, maxBody+1))
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "too_large")
	})
	t.Run("AtLimit", func(t *testing.T) {
		// Exactly 1 MiB is read and parsed: an invalid username, not a refusal.
		prefix, suffix := `{"username":"`, `","password":"correct horse"}`
		b := prefix + strings.Repeat("a", maxBody-len(prefix)-len(suffix)) + suffix
		resp, body := c.do("POST", "/v1/users", "", b)
		wantError(t, resp, body, 400, "invalid_argument")
	})
	t.Run("NothingStored", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/users/me", tok, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/users/me: %d %s", resp.StatusCode, body)
		}
		st, err := n.db.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Users != 1 {
			t.Errorf("stored users = %d, want 1", st.Users)
		}
	})
}

func TestHTTP_Auth(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "auth-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	var sess struct {
		Session struct {
			ID     string `json:"id"`
			UserID string `json:"user_id"`
		}
	}
	resp, body := c.do("GET", "/v1/sessions/current", tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("current: %d %s", resp.StatusCode, body)
	}
	json.Unmarshal(body, &sess)
	sid, uid := sess.Session.ID, sess.Session.UserID
	now := clock.Now()

	k := deriveKey(testKey, purposeJWT)
	good := func() map[string]any {
		return map[string]any{"iss": tokenIssuer, "aud": tokenAudience, "sub": uid, "sid": sid, "jti": sid,
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	}
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"OK", tok, true},
		{"OKCrafted", craftHS256(t, k, keyID(k), good()), true},
		{"ErrAlgNone", craftNone(t, keyID(k), good()), false},
		{"ErrTamperedPayload", tamper(t, tok), false},
		// Same length as tok, sent on the connection that just carried tok: the token
		// cache must not key on the (reused) request buffer.
		{"ErrTamperedSignature", tok[:len(tok)-4] + strings.Map(func(r rune) rune { return 'A' + (r+1)%26 }, tok[len(tok)-4:]), false},
		{"OKAgain", tok, true},
		{"ErrSameLengthForgery", tok[:len(tok)-10] + "0123456789", false},
		{"ErrWrongKey", craftHS256(t, deriveKey(otherKey, purposeJWT), keyID(k), good()), false},
		{"ErrMissingExp", craftHS256(t, k, keyID(k), without(good(), "exp")), false},
		{"ErrWrongAudience", craftHS256(t, k, keyID(k), with(good(), "aud", "someone-else")), false},
		{"ErrExpired", craftHS256(t, k, keyID(k), with(good(), "exp", now.Add(-time.Minute).Unix())), false},
		{"ErrOtherSession", craftHS256(t, k, keyID(k), with(with(good(), "sid", "nope"), "jti", "nope")), false},
		{"ErrOtherUser", craftHS256(t, k, keyID(k), with(good(), "sub", "someone")), false},
		{"ErrGarbage", "not.a.token", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.do("GET", "/v1/sessions/current", tc.token, nil)
			if tc.ok {
				if resp.StatusCode != 200 {
					t.Errorf("status = %d, want 200 (%s)", resp.StatusCode, body)
				}
				return
			}
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
			if got := resp.Header.Get("WWW-Authenticate"); got == "" {
				t.Errorf("WWW-Authenticate missing on 401")
			}
		})
	}
	t.Run("ErrNotBearer", func(t *testing.T) {
		for _, h := range []string{"", "Bearer", "Bearer ", "Basic YWxpY2U6eA==", "Bearertoken", tok} {
			resp, body := c.do("GET", "/v1/sessions/current", "", nil, "Authorization", h)
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
		}
	})
	t.Run("ErrExpiredSession", func(t *testing.T) {
		// The cached token and the session both end at the session's absolute expiry.
		clock.Add(cfg.SessionTTL + time.Minute)
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil)
		wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	})
}

func grepLines(b []byte, substr string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestHTTP_Metrics(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "metrics-0"))
	c := newTestClient(t, n)
	signUp(t, c, "alice")
	c.do("GET", "/v1/nope", "", nil)
	for range 3 { // one series, resolved once and cached, counts them all
		c.do("GET", "/healthz", "", nil)
	}
	resp, body := c.do("GET", "/metrics", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		`sessiond_http_requests_total{method="POST",route="/v1/users",status="201"} 1`,
		`sessiond_http_requests_total{method="POST",route="/v1/sessions",status="201"} 1`,
		`sessiond_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`sessiond_http_requests_total{method="GET",route="/healthz",status="200"} 3`,
		`sessiond_http_request_duration_seconds_count{method="GET",route="/healthz"} 3`,
		"sessiond_stored_users 1",
		"sessiond_stored_sessions 1",
		"sessiond_http_request_duration_seconds_bucket",
		// The sign-up and the login each committed (the sign-up's claim and user in one).
		"sessiond_storage_commit_writes_count ",
		"sessiond_storage_commit_seconds_bucket",
		"sessiond_storage_log_sync_seconds_count ",
		"sessiond_storage_log_bytes_total ",
		"sessiond_storage_checkpoints_total ",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(body, "sessiond_http_requests_total"))
		}
	}
	resp, body = c.do("GET", "/readyz", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "ready") {
		t.Errorf("readyz = %d %s", resp.StatusCode, body)
	}
}
