package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// script is a test server that answers its requests from a list, in order, and records
// what it was sent. The last answer repeats. Safe for concurrent use.
type script struct {
	mu      sync.Mutex
	answers []answer
	got     []*http.Request
	srv     *httptest.Server
}

type answer struct {
	status int
	header map[string]string
	body   string
}

func newScript(t *testing.T, answers ...answer) *script {
	t.Helper()
	s := &script{answers: answers}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc := r.Clone(context.Background())
		rc.Body = io.NopCloser(bytes.NewReader(body))
		s.mu.Lock()
		a := s.answers[min(len(s.got), len(s.answers)-1)]
		s.got = append(s.got, rc)
		s.mu.Unlock()
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		fmt.Fprint(w, a.body)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *script) requests() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.got...)
}

func apiError(status int, code string, retryAfter string) answer {
	a := answer{status: status, body: fmt.Sprintf(`{"error":{"code":%q,"message":"test %s"}}`, code, code)}
	if retryAfter != "" {
		a.header = map[string]string{"Retry-After": retryAfter}
	}
	return a
}

var created = answer{status: 201, body: `{"message":{"id":"m1","from":"a","to":"b","body":"hi","sent_at":"2026-01-02T03:04:05.000000006Z"}}`}

func mustNew(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRetry: which refusals a call retries, for a POST (not idempotent) and a GET, and
// that it waits the Retry-After the node asked for.
func TestRetry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		first     answer
		get       bool
		wantTries int
		wantErr   *Error
		minWait   time.Duration
	}{
		{"OKPostAfter429", apiError(429, api.CodeRateLimited, "1"), false, 2, nil, time.Second},
		{"OKPostAfterBehind", apiError(503, api.CodeBehind, "1"), false, 2, nil, time.Second},
		{"OKGetAfterUnavailable", apiError(503, api.CodeUnavailable, ""), true, 2, nil, 0},
		{"OKGetAfter502", answer{status: 502, body: "bad gateway"}, true, 2, nil, 0},
		{"ErrPostUnavailable", apiError(503, api.CodeUnavailable, "1"), false, 1, ErrUnavailable, 0},
		{"ErrPostBadGateway", answer{status: 502, body: "bad gateway"}, false, 1, &Error{Status: 502}, 0},
		{"ErrNotFound", apiError(404, api.CodeNotFound, ""), true, 1, ErrNotFound, 0},
		{"ErrInvalid", apiError(400, api.CodeInvalidArgument, ""), false, 1, ErrInvalidArgument, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScript(t, tc.first, created)
			c := mustNew(t, Config{Endpoints: []string{s.srv.URL}, Backoff: time.Millisecond})
			start := time.Now()
			var err error
			if tc.get {
				_, err = c.Do(context.Background(), Request{Method: "GET", Path: "/v1/x", Idempotent: true}, nil)
			} else {
				_, err = c.SendMessage(context.Background(), api.SendMessageRequest{To: "b", Body: "hi"})
			}
			elapsed := time.Since(start)
			if got := len(s.requests()); got != tc.wantTries {
				t.Errorf("attempts=%d, want %d", got, tc.wantTries)
			}
			if tc.wantErr == nil && err != nil {
				t.Fatalf("err=%v, want nil", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err=%v, want one that is %v", err, tc.wantErr)
			}
			if elapsed < tc.minWait {
				t.Errorf("call took %s, want at least the Retry-After %s", elapsed, tc.minWait)
			}
			reqs := s.requests()
			if id := reqs[0].Header.Get(api.HeaderRequestID); id == "" || reqs[len(reqs)-1].Header.Get(api.HeaderRequestID) != id {
				t.Errorf("X-Request-ID differs between the attempts of one call, or is missing")
			}
		})
	}
}

// TestRetryAfterTooLong: a Retry-After beyond MaxRetryWait is not waited for; the error
// says how long to wait, with its code, status and message.
func TestRetryAfterTooLong(t *testing.T) {
	s := newScript(t, apiError(429, api.CodeRateLimited, "60"), created)
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}})
	start := time.Now()
	_, err := c.SendMessage(context.Background(), api.SendMessageRequest{To: "b", Body: "hi"})
	if time.Since(start) > 2*time.Second {
		t.Errorf("call took %s: waited for a Retry-After beyond MaxRetryWait", time.Since(start))
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err=%v (%T), want *Error", err, err)
	}
	if e.Status != 429 || e.Code != api.CodeRateLimited || e.Message != "test rate_limited" || e.RetryAfter != time.Minute {
		t.Errorf("Error=%+v, want 429 rate_limited, its message, RetryAfter 1m", e)
	}
	if !errors.Is(err, ErrRateLimited) || errors.Is(err, ErrUnavailable) || !IsCode(err, api.CodeRateLimited) {
		t.Errorf("errors.Is does not match by code")
	}
	if len(s.requests()) != 1 {
		t.Errorf("attempts=%d, want 1", len(s.requests()))
	}
}

// TestRetryDeadline: a call whose context ends before the Retry-After returns the error
// at once rather than waiting to fail.
func TestRetryDeadline(t *testing.T) {
	s := newScript(t, apiError(503, api.CodeBehind, "3"), created)
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.CurrentSession(ctx)
	if !errors.Is(err, ErrBehind) {
		t.Fatalf("err=%v, want behind", err)
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Errorf("call took %s, want an immediate return", time.Since(start))
	}
}

// TestRetryBounded: MaxAttempts bounds the attempts of a call that keeps being refused.
func TestRetryBounded(t *testing.T) {
	s := newScript(t, apiError(503, api.CodeUnavailable, ""))
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}, MaxAttempts: 3, Backoff: time.Millisecond})
	_, err := c.Me(context.Background())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err=%v, want unavailable", err)
	}
	if got := len(s.requests()); got != 3 {
		t.Errorf("attempts=%d, want 3", got)
	}
}

// deadAddr returns an address that refuses connections.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// TestFailoverRefused: an endpoint that refuses connections is skipped, for a POST too
// (nothing was sent), and the client keeps to the one that answered.
func TestFailoverRefused(t *testing.T) {
	s := newScript(t, created)
	var attempts []Attempt
	c := mustNew(t, Config{Endpoints: []string{deadAddr(t), s.srv.URL}, Observe: func(a Attempt) { attempts = append(attempts, a) }})
	for range 3 {
		if _, err := c.SendMessage(context.Background(), api.SendMessageRequest{To: "b", Body: "hi"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(attempts) != 4 || attempts[0].Err == nil || attempts[1].Status != 201 || attempts[1].N != 2 {
		t.Fatalf("attempts=%+v, want a refused one then three that answered", attempts)
	}
	for _, a := range attempts[1:] {
		if a.Endpoint != s.srv.URL {
			t.Errorf("attempt to %s, want %s", a.Endpoint, s.srv.URL)
		}
	}
}

// TestFailoverAllDown: with no endpoint up, a call fails with a *TransportError that
// says nothing was sent.
func TestFailoverAllDown(t *testing.T) {
	c := mustNew(t, Config{Endpoints: []string{deadAddr(t), deadAddr(t)}, Backoff: time.Millisecond})
	_, err := c.SendMessage(context.Background(), api.SendMessageRequest{To: "b", Body: "hi"})
	var te *TransportError
	if !errors.As(err, &te) || te.MaybeApplied {
		t.Fatalf("err=%v, want a *TransportError with MaybeApplied false", err)
	}
}

// hanging returns a server that never answers until the test ends.
func hanging(t *testing.T) *httptest.Server {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop); srv.Close() })
	return srv
}

// TestFailoverTimeout: a read that times out moves to the next endpoint; a POST that
// times out is not sent again (it may have been applied).
func TestFailoverTimeout(t *testing.T) {
	slow := hanging(t)
	s := newScript(t, answer{status: 200, body: `{"user":{"id":"u","username":"alice","created_at":"2026-01-02T03:04:05Z","profile":{"first_name":"","last_name":"","email":"","address":""}}}`})
	t.Run("OKRead", func(t *testing.T) {
		c := mustNew(t, Config{Endpoints: []string{slow.URL, s.srv.URL}, AttemptTimeout: 200 * time.Millisecond})
		u, err := c.Me(context.Background())
		if err != nil || u.Username != "alice" {
			t.Fatalf("Me=%+v, %v; want alice from the second endpoint", u, err)
		}
	})
	t.Run("ErrPostMaybeApplied", func(t *testing.T) {
		c := mustNew(t, Config{Endpoints: []string{slow.URL, s.srv.URL}, AttemptTimeout: 200 * time.Millisecond})
		before := len(s.requests())
		_, err := c.SendMessage(context.Background(), api.SendMessageRequest{To: "b", Body: "hi"})
		var te *TransportError
		if !errors.As(err, &te) || !te.MaybeApplied || te.Endpoint != slow.URL {
			t.Fatalf("err=%v, want a *TransportError from %s that may have been applied", err, slow.URL)
		}
		if got := len(s.requests()); got != before {
			t.Errorf("the POST was sent to the second endpoint too")
		}
	})
}

func bookmarkOf(t *testing.T, marks ...crdt.Timestamp) string {
	t.Helper()
	var b crdt.Bookmark
	for _, m := range marks {
		b.Add(m)
	}
	return b.String()
}

// TestBookmarks: the client sends what it received, merged per origin as nodes merge,
// keeps it over an error response, and starts from Config.Bookmark.
func TestBookmarks(t *testing.T) {
	a1 := crdt.Timestamp{Wall: 100, Node: 1}
	a2 := crdt.Timestamp{Wall: 200, Node: 1}
	b1 := crdt.Timestamp{Wall: 150, Node: 2}
	bmA2 := bookmarkOf(t, a2)
	s := newScript(t,
		answer{status: 200, header: map[string]string{api.HeaderBookmark: bookmarkOf(t, a2)}, body: `{}`},
		answer{status: 200, header: map[string]string{api.HeaderBookmark: bookmarkOf(t, a1, b1)}, body: `{}`}, // older for node 1
		apiError(404, api.CodeNotFound, ""),
		answer{status: 200, body: `{}`},
	)
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}, MaxAttempts: 1})
	ctx := context.Background()
	for range 4 {
		c.Do(ctx, Request{Method: "GET", Path: "/v1/x"}, nil)
	}
	want := []string{"", bmA2, bookmarkOf(t, a2, b1), bookmarkOf(t, a2, b1)}
	for i, r := range s.requests() {
		if got := r.Header.Get(api.HeaderBookmark); got != want[i] {
			t.Errorf("request %d sent bookmark %q, want %q", i, got, want[i])
		}
	}
	if c.Bookmark() != want[3] {
		t.Errorf("Bookmark()=%q, want %q", c.Bookmark(), want[3])
	}
	c2 := mustNew(t, Config{Endpoints: []string{s.srv.URL}, Bookmark: c.Bookmark()})
	if c2.Bookmark() != want[3] || c.Fork().Bookmark() != "" {
		t.Errorf("Config.Bookmark not kept, or Fork kept the bookmark")
	}
	if err := c2.SetBookmark("not a bookmark!"); err == nil || c2.Bookmark() != want[3] {
		t.Errorf("SetBookmark of garbage: err=%v, bookmark %q", err, c2.Bookmark())
	}
	if _, err := New(Config{Endpoints: []string{s.srv.URL}, Bookmark: "%%"}); err == nil {
		t.Errorf("New accepted a Config.Bookmark that is no bookmark")
	}
}

// TestBookmarkOfContext: under WithBookmark a call sends the context's bookmark, not the
// Client's, and the answer's goes into both; CarryBookmarks keeps a visitor's in a cookie,
// sets it before the headers go out, and ignores one that is not a bookmark.
func TestBookmarkOfContext(t *testing.T) {
	a1 := crdt.Timestamp{Wall: 100, Node: 1}
	b1 := crdt.Timestamp{Wall: 150, Node: 2}
	s := newScript(t,
		answer{status: 200, header: map[string]string{api.HeaderBookmark: bookmarkOf(t, a1)}, body: `{}`},
		answer{status: 200, header: map[string]string{api.HeaderBookmark: bookmarkOf(t, b1)}, body: `{}`},
		answer{status: 200, body: `{}`},
	)
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}, MaxAttempts: 1})
	c.Do(context.Background(), Request{Method: "GET", Path: "/v1/x"}, nil) // the Client's: a1

	var seen []string // the visitor's bookmark as each response went out
	app := CarryBookmarks("bm", false)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := c.Do(r.Context(), Request{Method: "GET", Path: "/v1/x"}, nil); err != nil {
			t.Errorf("Do: %v", err)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	visit := func(cookie string) *http.Response {
		req := httptest.NewRequest("GET", "/", nil)
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: "bm", Value: cookie})
		}
		rec := httptest.NewRecorder()
		app.ServeHTTP(rec, req)
		for _, ck := range rec.Result().Cookies() {
			if ck.Name == "bm" {
				seen = append(seen, ck.Value)
			}
		}
		return rec.Result()
	}
	visit("not a bookmark!")
	if len(seen) != 1 || seen[0] != bookmarkOf(t, b1) {
		t.Fatalf("cookies set %q, want the visitor's bookmark %q alone", seen, bookmarkOf(t, b1))
	}
	if r := visit(seen[0]); len(r.Cookies()) != 0 {
		t.Errorf("a visit that wrote nothing new set the cookie again: %v", r.Cookies())
	}
	want := []string{"", "", bookmarkOf(t, b1)} // the Client's, the visitor's (none), the visitor's
	for i, r := range s.requests() {
		if got := r.Header.Get(api.HeaderBookmark); got != want[i] {
			t.Errorf("request %d sent bookmark %q, want %q", i, got, want[i])
		}
	}
	if c.Bookmark() != bookmarkOf(t, a1, b1) {
		t.Errorf("the Client's bookmark %q, want %q: the visitor's answers merge into it too", c.Bookmark(), bookmarkOf(t, a1, b1))
	}
}

// TestBookmarkConcurrent: bookmarks from concurrent calls all end up in the client's.
func TestBookmarkConcurrent(t *testing.T) {
	var k bookmark
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				k.merge(bookmarkOf(t, crdt.Timestamp{Wall: int64(1 + i), Node: crdt.NodeID(1 + w)}))
			}
		}()
	}
	wg.Wait()
	b, err := crdt.ParseBookmark(k.String())
	if err != nil {
		t.Fatal(err)
	}
	for w := range 8 {
		if m := b.Mark(crdt.NodeID(1 + w)); m.Wall != 50 {
			t.Errorf("mark of node %d = %d, want 50", 1+w, m.Wall)
		}
	}
}

// TestTokenAndDevice: Login keeps the token and sends the device token with the next
// login to the same account only; Logout forgets the token.
func TestTokenAndDevice(t *testing.T) {
	s := newScript(t,
		answer{status: 201, body: `{"device":"dev1","session":{"id":"s","user_id":"u","username":"alice","created_at":"2026-01-02T03:04:05Z","last_used_at":"2026-01-02T03:04:05Z","expires_at":"2026-01-02T03:04:05Z","idle_expires_at":"2026-01-02T03:04:05Z","data":{}},"token":"tok1"}`},
		answer{status: 204},
	)
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}})
	ctx := context.Background()
	if _, err := c.Login(ctx, api.LoginRequest{Username: "alice", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	if c.Token() != "tok1" {
		t.Fatalf("Token()=%q, want tok1", c.Token())
	}
	c.Login(ctx, api.LoginRequest{Username: "alice", Password: "pw"})
	c.Login(ctx, api.LoginRequest{Username: "bob", Password: "pw"})
	c.SetToken("tok1")
	if err := c.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Token() != "" {
		t.Errorf("Token()=%q after Logout, want none", c.Token())
	}
	reqs := s.requests()
	var devices []string
	for _, r := range reqs[:3] {
		var body api.LoginRequest
		json.NewDecoder(r.Body).Decode(&body)
		devices = append(devices, body.Device)
		if r.Header.Get("Authorization") != "" {
			t.Errorf("a login sent a token")
		}
	}
	if strings.Join(devices, ",") != ",dev1," {
		t.Errorf("devices sent=%q, want none, dev1, none", devices)
	}
	if got := reqs[3].Header.Get("Authorization"); got != "Bearer tok1" {
		t.Errorf("Logout sent Authorization %q", got)
	}
}

// TestStreamParse: comments and unknown events are skipped, messages decoded, and the
// end event ends the stream with ErrSessionEnded.
func TestStreamParse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, ": connected\n\n: ping\n\nevent: future\ndata: {}\n\n")
		fmt.Fprint(w, "event: message\ndata: {\"id\":\"m1\",\"from\":\"a\",\"to\":\"b\",\"body\":\"hi\",\"sent_at\":\"2026-01-02T03:04:05Z\"}\n\n")
		fmt.Fprint(w, "event: end\ndata: {\"reason\":\"session ended\"}\n\n")
	}))
	defer srv.Close()
	c := mustNew(t, Config{Endpoints: []string{srv.URL}})
	s, err := c.StreamMessages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, err := s.Next()
	if err != nil || m.ID != "m1" || m.Body != "hi" {
		t.Fatalf("Next()=%+v, %v; want message m1", m, err)
	}
	_, err = s.Next()
	var end *StreamEndError
	if !errors.Is(err, ErrSessionEnded) || !errors.As(err, &end) || end.Reason != "session ended" {
		t.Fatalf("Next()=%v, want the end event", err)
	}
}

func TestRetryAfterParse(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"1", time.Second}, {" 15 ", 15 * time.Second}, {"-3", 0}, {"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	} {
		if got := retryAfter(tc.in, now); got != tc.want {
			t.Errorf("retryAfter(%q)=%s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestEndpointsPick(t *testing.T) {
	now := time.Unix(0, 0)
	e := newEndpoints([]string{"a", "b", "c"}, false, time.Second)
	e.now = func() time.Time { return now }
	if got := e.pick(-1); got != 0 {
		t.Fatalf("pick=%d, want 0", got)
	}
	e.fail(0)
	if got := e.pick(-1); got != 1 {
		t.Fatalf("after fail(0) pick=%d, want 1", got)
	}
	if got := e.pick(1); got != 2 {
		t.Fatalf("pick avoiding 1=%d, want 2", got)
	}
	e.fail(2)
	e.fail(1)
	if got := e.pick(-1); got != 0 {
		t.Fatalf("all down: pick=%d, want 0 (the current one)", got)
	}
	now = now.Add(2 * time.Second)
	rr := newEndpoints([]string{"a", "b", "c"}, true, time.Second)
	rr.now = func() time.Time { return now }
	var got []int
	for range 4 {
		got = append(got, rr.pick(-1))
	}
	if fmt.Sprint(got) != "[0 1 2 0]" {
		t.Errorf("round robin picks %v, want [0 1 2 0]", got)
	}
}

func TestNewConfig(t *testing.T) {
	for _, eps := range [][]string{nil, {"ftp://x"}, {"http://"}, {"http://x?y=1"}} {
		if _, err := New(Config{Endpoints: eps}); err == nil {
			t.Errorf("New(Endpoints %q) accepted", eps)
		}
	}
	c := mustNew(t, Config{Endpoints: []string{"127.0.0.1:8080", "https://lb.example/sessiond/"}})
	if got := strings.Join(c.Endpoints(), " "); got != "http://127.0.0.1:8080 https://lb.example/sessiond" {
		t.Errorf("Endpoints()=%s", got)
	}
}

// TestImports: the client uses the standard library and this module's api and crdt only.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") && path != "github.com/sessiond/sessiond/edge/api" && path != "github.com/sessiond/sessiond/crdt" {
				t.Errorf("%s imports %s: the client uses the standard library, api and crdt only", f, path)
			}
		}
	}
}

// TestStreamTimeout: AttemptTimeout bounds the opening of a stream (until the node says
// it subscribed it), not the life of a stream that opened.
func TestStreamTimeout(t *testing.T) {
	const bound = 200 * time.Millisecond
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		if strings.HasPrefix(r.URL.Path, "/mute/") {
			select { // headers, but never ": connected"
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		fmt.Fprint(w, ": connected\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * bound):
		case <-stop:
			return
		}
		fmt.Fprint(w, "event: message\ndata: {\"id\":\"late\",\"from\":\"a\",\"to\":\"b\",\"body\":\"x\",\"sent_at\":\"2026-01-02T03:04:05Z\"}\n\n")
	}))
	defer srv.Close()
	defer close(stop)

	c := mustNew(t, Config{Endpoints: []string{srv.URL}, AttemptTimeout: bound, MaxAttempts: 1})
	s, err := c.StreamMessages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if m, err := s.Next(); err != nil || m.ID != "late" {
		t.Fatalf("Next()=%+v, %v; want the message sent after AttemptTimeout", m, err)
	}

	mute := mustNew(t, Config{Endpoints: []string{srv.URL + "/mute"}, AttemptTimeout: bound, MaxAttempts: 1})
	start := time.Now()
	_, err = mute.StreamMessages(context.Background())
	if d := time.Since(start); d > 10*bound {
		t.Errorf("a stream that never opened took %s to fail, want about %s", d, bound)
	}
	var te *TransportError
	if !errors.As(err, &te) {
		t.Fatalf("a stream that never opened: %v, want a *TransportError", err)
	}
}

// TestDecodeEmpty: a 204 leaves the value Do decodes into as it is.
func TestDecodeEmpty(t *testing.T) {
	s := newScript(t, answer{status: 204})
	c := mustNew(t, Config{Endpoints: []string{s.srv.URL}})
	out := api.Status{Status: "kept"}
	rep, err := c.Do(context.Background(), Request{Method: "DELETE", Path: "/v1/x"}, &out)
	if err != nil || rep.Status != 204 || out.Status != "kept" {
		t.Fatalf("Do=%+v, %v, out %+v", rep, err, out)
	}
}
