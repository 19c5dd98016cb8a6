package main_test

// End-to-end tests of the real binary: built once, started on free loopback ports, and
// driven over real HTTP through every route of docs/API.md, its bad inputs, a JWT attack
// table, kill -9 and restart, and the command line's exit codes.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	sdk "github.com/sessiond/sessiond/edge/client"
)

// e2eKey is the cluster key of the e2e nodes, so the tests can forge tokens with it.
var e2eKey = bytes.Repeat([]byte{0x42}, 32)

var (
	e2eBinOnce sync.Once
	e2eBinDir  string
	e2eBin     string
	e2eBinErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBinDir != "" {
		os.RemoveAll(e2eBinDir)
	}
	removeReleaseBuilds()
	os.Exit(code)
}

// e2eBinary builds the sessiond binary once per test run, with the race detector when
// the tests run with it, so races in the server fail the test too.
func e2eBinary(t testing.TB) string {
	t.Helper()
	e2eBinOnce.Do(func() {
		e2eBinDir, e2eBinErr = os.MkdirTemp("", "sessiond-e2e-")
		if e2eBinErr != nil {
			return
		}
		e2eBin = filepath.Join(e2eBinDir, "sessiond")
		args := []string{"build", "-o", e2eBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			e2eBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if e2eBinErr != nil {
		t.Fatal(e2eBinErr)
	}
	return e2eBin
}

func freeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// lockedBuffer collects a process's output; safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// daemon is one sessiond process.
type daemon struct {
	t          testing.TB
	name, data string
	keyFile    string
	http       string
	extra      []string // more flags
	env        []string // more environment
	// ownLimits leaves out the generous login limits start passes by default, so that
	// extra or env set them.
	ownLimits bool

	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// newDaemon prepares a node called name with data in dir (a fresh one when empty).
func newDaemon(t testing.TB, name, dir string, extra ...string) *daemon {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	keyFile := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(e2eKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &daemon{t: t, name: name, data: dir, keyFile: keyFile, extra: extra}
}

// start runs the process on fresh ports; it is killed at the end of the test if still
// running, and its output is logged if the test failed.
func (d *daemon) start() {
	d.t.Helper()
	d.http = freeAddr(d.t)
	args := []string{
		"--http", d.http, "--gossip", freeAddr(d.t), "--sync", freeAddr(d.t),
		"--data", d.data, "--node", d.name, "--fast-gossip", "--cluster-key-file", d.keyFile,
		// Logins and sign-ups wait for a hashing worker as long as they need: under -race
		// a hash takes ten times as long, and these tests are not about the queue's bound.
		"--password-wait", "1m", "--password-queue", "4096",
	}
	if !d.ownLimits {
		args = append(args, "--login-per-account", "10000", "--login-per-address", "100000", "--signins-per-account", "100000", "--signups-per-address", "100000", "--messages-per-user", "100000")
	}
	args = append(args, d.extra...)
	d.cmd = exec.Command(e2eBinary(d.t), args...)
	d.cmd.Env = append(os.Environ(), d.env...)
	d.out = &lockedBuffer{}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd, out := d.cmd, d.out
	go func() {
		cmd.Wait()
		close(exited)
	}()
	d.t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if strings.Contains(out.String(), "WARNING: DATA RACE") {
			d.t.Errorf("%s: data race in the server:\n%s", d.name, out.String())
		} else if d.t.Failed() {
			d.t.Logf("output of %s:\n%s", d.name, out.String())
		}
	})
}

// waitReady polls /readyz until it answers 200, failing early if the process exits.
func (d *daemon) waitReady() {
	d.t.Helper()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		select {
		case <-d.exited:
			d.t.Fatalf("%s exited before ready (%v):\n%s", d.name, d.cmd.ProcessState, d.out.String())
		default:
		}
		if resp, err := hc.Get("http://" + d.http + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s not ready within 20s:\n%s", d.name, d.out.String())
		}
		time.Sleep(wait)
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (d *daemon) wait(within time.Duration) int {
	d.t.Helper()
	select {
	case <-d.exited:
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		d.t.Fatalf("%s still running after %s", d.name, within)
		return -1
	}
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal %s: %v", sig, err)
	}
}

// runBin runs the binary with args to completion and returns its output and exit code.
func runBin(t testing.TB, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2eBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// headerCheck fails the test for any response without X-Served-By naming the node or
// without the security headers.
type headerCheck struct {
	t    testing.TB
	node string
	base http.RoundTripper
}

func (h headerCheck) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := h.base.RoundTrip(req)
	if err == nil {
		checkCommonHeaders(h.t, req.Method+" "+req.URL.Path, h.node, resp.Header)
	}
	return resp, err
}

func checkCommonHeaders(t testing.TB, what, node string, h http.Header) {
	if got := h.Get("X-Served-By"); got != node {
		t.Errorf("%s: X-Served-By = %q, want %q", what, got, node)
	}
	for _, k := range []string{"X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy"} {
		if h.Get(k) == "" {
			t.Errorf("%s: no %s header", what, k)
		}
	}
}

// client talks JSON to one node.
type client struct {
	t    testing.TB
	base string
	addr string
	hc   *http.Client
}

func newClient(t testing.TB, d *daemon) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, base: "http://" + d.http, addr: d.http,
		hc: &http.Client{Transport: headerCheck{t: t, node: d.name, base: tr}, Timeout: 15 * time.Second}}
}

// reply is a response with its body read.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// try sends a request: body is sent as is when string or []byte, else as JSON. It returns
// an error only for transport failures.
func (c *client) try(method, path, token string, body any) (reply, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return reply{}, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return reply{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func (c *client) do(method, path, token string, body any) reply {
	c.t.Helper()
	r, err := c.try(method, path, token, body)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// want checks the status, and decodes the body into v when v is not nil.
func (c *client) want(status int, method, path, token string, body, v any) reply {
	c.t.Helper()
	r := c.do(method, path, token, body)
	if r.status != status {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, status, r.body)
	}
	if v != nil {
		r.json(c.t, v)
	}
	return r
}

// wantErr checks for the JSON error with status and code.
func (c *client) wantErr(status int, code, method, path, token string, body any) reply {
	c.t.Helper()
	r := c.do(method, path, token, body)
	checkError(c.t, method+" "+path, r, status, code)
	return r
}

func checkError(t testing.TB, what string, r reply, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d: %.300s", what, r.status, status, r.body)
		return
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("%s: body %.300s, want error code %q with a message", what, r.body, code)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
}

// rawHead sends only a request head on a fresh connection and reads the answer: for
// bodies the server must refuse from their declared length alone.
func (c *client) rawHead(head string) reply {
	c.t.Helper()
	conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head+"\r\n\r\n"); err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// API objects: package api's, which the node encodes; the user keeps a profile the
// tests address by field name.
type (
	apiUser struct {
		ID        string            `json:"id"`
		Username  string            `json:"username"`
		CreatedAt time.Time         `json:"created_at"`
		Profile   map[string]string `json:"profile"`
	}
	apiSession = api.Session
	apiMessage = api.Message
	apiPage    = api.Page
)

const pw = "correct horse battery"

func (c *client) register(name string, profile map[string]string) apiUser {
	c.t.Helper()
	var out struct{ User apiUser }
	c.want(201, "POST", "/v1/users", "", map[string]any{"username": name, "password": pw, "profile": profile}, &out)
	return out.User
}

// sdk returns the Go client (package client) of the node, acting with token: through
// the tests' transport, which checks every response's common headers; one attempt, as a
// 503 is a failure here rather than something to retry; decoding strictly, so that the
// node sends nothing package api lacks. The status of its last response goes to *status.
func (c *client) sdk(token string, status *int) *sdk.Client {
	c.t.Helper()
	sc, err := sdk.New(sdk.Config{
		Endpoints: []string{c.base}, HTTPClient: c.hc, Token: token, MaxAttempts: 1,
		DisallowUnknownFields: true, Observe: func(a sdk.Attempt) { *status = a.Status },
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return sc
}

// wantStatus fails the test unless err is nil and the status is want.
func (c *client) wantStatus(what string, err error, status, want int) {
	c.t.Helper()
	if err != nil || status != want {
		c.t.Fatalf("%s: status %d, want %d: %v", what, status, want, err)
	}
}

func (c *client) login(name, password string) (string, apiSession) {
	c.t.Helper()
	var status int
	out, err := c.sdk("", &status).Login(context.Background(), api.LoginRequest{Username: name, Password: password})
	c.wantStatus("login "+name, err, status, 201)
	if out.Token == "" || out.Session.ID == "" {
		c.t.Fatalf("login %s: no token or session", name)
	}
	return out.Token, out.Session
}

func (c *client) current(token string) apiSession {
	c.t.Helper()
	var status int
	s, err := c.sdk(token, &status).CurrentSession(context.Background())
	c.wantStatus("GET /v1/sessions/current", err, status, 200)
	return s
}

func (c *client) send(token, to, body string) apiMessage {
	c.t.Helper()
	var status int
	m, err := c.sdk(token, &status).SendMessage(context.Background(), api.SendMessageRequest{To: to, Body: body})
	c.wantStatus("POST /v1/messages", err, status, 201)
	return m
}

// conversation pages through the whole conversation with limit per page.
func (c *client) conversation(token, with string, limit int) ([]apiMessage, string) {
	c.t.Helper()
	var status int
	sc := c.sdk(token, &status)
	var all []apiMessage
	cursor := ""
	for range 10000 {
		p, err := sc.Messages(context.Background(), with, cursor, limit)
		c.wantStatus("GET /v1/messages", err, status, 200)
		if len(p.Messages) > limit {
			c.t.Fatalf("page of %d messages with limit %d", len(p.Messages), limit)
		}
		cursor = p.Next
		if len(p.Messages) == 0 {
			return all, cursor
		}
		all = append(all, p.Messages...)
	}
	c.t.Fatal("conversation paging does not end")
	return nil, ""
}

func dataOf(t testing.TB, s apiSession) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out
}

// Token forging with the cluster key, as edge derives its JWT key from it.
func jwtKey(t testing.TB) ([]byte, string) {
	t.Helper()
	k, err := hkdf.Key(sha256.New, e2eKey, nil, "sessiond/jwt/v1", 32)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append([]byte("kid:"), k...))
	return k, hex.EncodeToString(sum[:6])
}

func forge(t testing.TB, header, claims map[string]any, key []byte) string {
	t.Helper()
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	if key == nil {
		return input + "."
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(input))
	return input + "." + enc.EncodeToString(m.Sum(nil))
}

// forgeHeader returns tok with its header replaced by header (its payload and signature
// kept).
func forgeHeader(t testing.TB, header map[string]any, tok string) string {
	t.Helper()
	h, _ := json.Marshal(header)
	_, rest, _ := strings.Cut(tok, ".")
	return base64.RawURLEncoding.EncodeToString(h) + "." + rest
}

func TestE2E_API(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary; skipped with -short")
	}
	t.Parallel()
	d := newDaemon(t, "e2e-api", "")
	d.start()
	d.waitReady()
	c := newClient(t, d)
	registered := 0 // accounts stored, to check rejected input stores nothing

	t.Run("Health", func(t *testing.T) {
		var h map[string]string
		c.want(200, "GET", "/healthz", "", nil, &h)
		if h["status"] != "ok" {
			t.Errorf("healthz = %v, want status ok", h)
		}
		c.want(200, "GET", "/readyz", "", nil, nil)
	})

	var alice apiUser
	t.Run("Register", func(t *testing.T) {
		alice = c.register("alice", map[string]string{"first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com", "address": "1 Rabbit Hole\nWonderland"})
		registered++
		if alice.ID == "" || alice.Username != "alice" || alice.Profile["last_name"] != "Liddell" || alice.CreatedAt.IsZero() {
			t.Errorf("registered user = %+v", alice)
		}
		if alice.CreatedAt.Location() != time.UTC {
			t.Errorf("created_at %v is not UTC", alice.CreatedAt)
		}
		c.wantErr(409, "username_taken", "POST", "/v1/users", "", map[string]any{"username": "alice", "password": "another password"})

		// Boundaries that are accepted.
		for _, tc := range []struct {
			name     string
			password string
			profile  map[string]string
		}{
			{"abc", pw, nil},
			{strings.Repeat("z", 32), pw, nil},
			{"a_b.c-9", "12345678", nil},
			{"long-pw", strings.Repeat("p", 256), nil},
			{"bytes-pw", "éééé", nil}, // 4 characters, 8 bytes
			{"full-profile", pw, map[string]string{"first_name": strings.Repeat("f", 100), "last_name": strings.Repeat("l", 100),
				"email": strings.Repeat("e", 242) + "@example.com", "address": strings.Repeat("a", 499) + "\n"}},
			{"unicode", pw, map[string]string{"first_name": "Zoë", "last_name": "Ångström", "address": "Straße 1\tOben"}},
		} {
			var out struct{ User apiUser }
			c.want(201, "POST", "/v1/users", "", map[string]any{"username": tc.name, "password": tc.password, "profile": tc.profile}, &out)
			registered++
			if tc.profile != nil && out.User.Profile["first_name"] != tc.profile["first_name"] {
				t.Errorf("%s: profile = %v", tc.name, out.User.Profile)
			}
		}
		c.login("bytes-pw", "éééé")
		// Nothing is truncated: a long password's prefix does not sign in.
		c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": "long-pw", "password": strings.Repeat("p", 72)})
		c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": "long-pw", "password": strings.Repeat("p", 255)})
		c.login("long-pw", strings.Repeat("p", 256))

		ok := func(m map[string]any) map[string]any {
			out := map[string]any{"username": "newbie", "password": pw}
			for k, v := range m {
				out[k] = v
			}
			return out
		}
		prof := func(k, v string) map[string]any { return ok(map[string]any{"profile": map[string]string{k: v}}) }
		for _, tc := range []struct {
			name string
			body any
		}{
			{"UsernameShort", ok(map[string]any{"username": "ab"})},
			{"UsernameLong", ok(map[string]any{"username": strings.Repeat("a", 33)})},
			{"UsernameEmpty", ok(map[string]any{"username": ""})},
			{"UsernameUpper", ok(map[string]any{"username": "Alice"})},
			{"UsernameSpace", ok(map[string]any{"username": "al ice"})},
			{"UsernameSlash", ok(map[string]any{"username": "al/ice"})},
			{"UsernameNonASCII", ok(map[string]any{"username": "ålice"})},
			{"UsernameNUL", ok(map[string]any{"username": "ali\x00ce"})},
			{"UsernameMissing", map[string]any{"password": pw}},
			{"PasswordShort", ok(map[string]any{"password": "1234567"})},
			{"PasswordShortBytes", ok(map[string]any{"password": "ééé"})},
			{"PasswordLong", ok(map[string]any{"password": strings.Repeat("p", 257)})},
			{"PasswordMissing", map[string]any{"username": "newbie"}},
			{"FirstNameLong", prof("first_name", strings.Repeat("f", 101))},
			{"FirstNameControl", prof("first_name", "Al\x07ice")},
			{"FirstNameNewline", prof("first_name", "Al\nice")},
			{"FirstNameC1", prof("first_name", "Al\u009bice")},
			{"LastNameLong", prof("last_name", strings.Repeat("l", 101))},
			{"EmailLong", prof("email", strings.Repeat("e", 243)+"@example.com")},
			{"EmailNoAt", prof("email", "alice.example.com")},
			{"EmailTwoAts", prof("email", "a@b@example.com")},
			{"EmailNoLocal", prof("email", "@example.com")},
			{"EmailNoDomain", prof("email", "alice@")},
			{"EmailSpace", prof("email", "al ice@example.com")},
			{"AddressLong", prof("address", strings.Repeat("a", 501))},
			{"AddressControl", prof("address", "1 Street\x1b[31m")},
			{"Malformed", `{"username":"newbie","password":`},
			{"NotJSON", `username=newbie&password=x`},
			{"UsernameNumber", `{"username":42,"password":"correct horse"}`},
			{"PasswordBool", `{"username":"newbie","password":true}`},
			{"ProfileString", `{"username":"newbie","password":"correct horse","profile":"x"}`},
			{"EmailNumber", `{"username":"newbie","password":"correct horse","profile":{"email":1}}`},
			{"UnknownField", `{"username":"newbie","password":"correct horse","is_admin":true}`},
			{"UnknownProfileField", `{"username":"newbie","password":"correct horse","profile":{"role":"admin"}}`},
			{"Empty", ``},
			{"Array", `[{"username":"newbie","password":"correct horse"}]`},
			{"Null", `null`},
			{"TwoObjects", `{"username":"newbie","password":"correct horse"} {"username":"newbie2","password":"correct horse"}`},
			{"Trailing", `{"username":"newbie","password":"correct horse"}}`},
			{"InvalidUTF8", "{\"username\":\"newbie\",\"password\":\"correct horse\",\"profile\":{\"first_name\":\"\xff\xfe\"}}"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := c.do("POST", "/v1/users", "", tc.body)
				checkError(t, tc.name, r, 400, "invalid_argument")
			})
		}
		t.Run("TooLarge", func(t *testing.T) {
			r := c.rawHead(fmt.Sprintf("POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d", 1<<20+1))
			checkError(t, "1 MiB + 1", r, 413, "too_large")
			checkCommonHeaders(t, "413", d.name, r.header)
			// Exactly 1 MiB is parsed (and refused for what it says).
			pre, suf := `{"username":"newbie","password":"`, `"}`
			r = c.do("POST", "/v1/users", "", pre+strings.Repeat("p", 1<<20-len(pre)-len(suf))+suf)
			checkError(t, "1 MiB", r, 400, "invalid_argument")
		})
		t.Run("NothingStored", func(t *testing.T) {
			c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": "newbie", "password": pw})
			if got := metricValue(t, c, "sessiond_stored_users"); got != float64(registered) {
				t.Errorf("sessiond_stored_users = %v, want %d", got, registered)
			}
		})
	})

	var aliceTok string
	var aliceSess apiSession
	t.Run("Login", func(t *testing.T) {
		aliceTok, aliceSess = c.login("alice", pw)
		if aliceSess.UserID != alice.ID || aliceSess.Username != "alice" || !aliceSess.ExpiresAt.After(time.Now()) ||
			aliceSess.IdleExpiresAt.After(aliceSess.ExpiresAt) || len(aliceSess.Data) != 0 {
			t.Errorf("session = %+v", aliceSess)
		}
		if len(aliceSess.ID) < 32 {
			t.Errorf("session id %q: want at least 128 random bits", aliceSess.ID)
		}
		wrong := c.do("POST", "/v1/sessions", "", map[string]string{"username": "alice", "password": "wrong password"})
		unknown := c.do("POST", "/v1/sessions", "", map[string]string{"username": "nobody", "password": "wrong password"})
		invalid := c.do("POST", "/v1/sessions", "", map[string]string{"username": "NO BODY", "password": "x"})
		checkError(t, "wrong password", wrong, 401, "unauthorized")
		if !bytes.Equal(wrong.body, unknown.body) || !bytes.Equal(wrong.body, invalid.body) || wrong.status != unknown.status {
			t.Errorf("wrong password → %d %s; unknown user → %d %s; invalid name → %s: want identical", wrong.status, wrong.body, unknown.status, unknown.body, invalid.body)
		}
		c.wantErr(400, "invalid_argument", "POST", "/v1/sessions", "", `{"username":"alice"`)
		c.wantErr(400, "invalid_argument", "POST", "/v1/sessions", "", `{"username":"alice","password":"x","remember":true}`)
		c.wantErr(400, "invalid_argument", "POST", "/v1/sessions", "", ``)
	})

	t.Run("Current", func(t *testing.T) {
		s := c.current(aliceTok)
		if s.ID != aliceSess.ID || s.UserID != alice.ID || !s.ExpiresAt.Equal(aliceSess.ExpiresAt) {
			t.Errorf("current = %+v, want session %s", s, aliceSess.ID)
		}
		c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", "", nil)
		c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", "x.y.z", nil)
	})

	t.Run("PatchData", func(t *testing.T) {
		var out struct{ Session apiSession }
		c.want(200, "PATCH", "/v1/sessions/current", aliceTok, `{"data":{"theme":"dark","cart":[1, 2],"obj":{ "a" : {"b":true} },"n":1.5}}`, &out)
		want := map[string]string{"theme": `"dark"`, "cart": `[1,2]`, "obj": `{"a":{"b":true}}`, "n": `1.5`}
		if got := dataOf(t, out.Session); !maps.Equal(got, want) {
			t.Errorf("data after set = %v, want %v", got, want)
		}
		c.want(200, "PATCH", "/v1/sessions/current", aliceTok, `{"data":{"theme":null,"n":2}}`, &out)
		want = map[string]string{"cart": `[1,2]`, "obj": `{"a":{"b":true}}`, "n": `2`}
		if got := dataOf(t, c.current(aliceTok)); !maps.Equal(got, want) {
			t.Errorf("data after null = %v, want %v", got, want)
		}
		c.want(200, "PATCH", "/v1/sessions/current", aliceTok, `{"data":{}}`, nil)
		c.want(200, "PATCH", "/v1/sessions/current", aliceTok, `{"data":{"never-set":null}}`, nil)

		big := strings.Repeat("x", 16<<10) // 16 KiB + 2 quotes
		keys257 := map[string]int{}
		for i := range 257 {
			keys257[fmt.Sprintf("k%d", i)] = i
		}
		for _, tc := range []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"ValueTooLarge", map[string]any{"data": map[string]string{"big": big}}, 413, "too_large"},
			{"TooManyKeys", map[string]any{"data": keys257}, 413, "too_large"},
			{"KeyTooLong", map[string]any{"data": map[string]int{strings.Repeat("k", 129): 1}}, 400, "invalid_argument"},
			{"KeyEmpty", map[string]any{"data": map[string]int{"": 1}}, 400, "invalid_argument"},
			{"KeyControl", map[string]any{"data": map[string]int{"a\tb": 1}}, 400, "invalid_argument"},
			{"DataArray", `{"data":[1,2]}`, 400, "invalid_argument"},
			{"DataString", `{"data":"x"}`, 400, "invalid_argument"},
			{"DataNull", `{"data":null}`, 400, "invalid_argument"},
			{"DataMissing", `{}`, 400, "invalid_argument"},
			{"UnknownField", `{"data":{"a":1},"ttl":5}`, 400, "invalid_argument"},
			{"Malformed", `{"data":{"a":}}`, 400, "invalid_argument"},
			{"Empty", ``, 400, "invalid_argument"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := c.do("PATCH", "/v1/sessions/current", aliceTok, tc.body)
				checkError(t, tc.name, r, tc.status, tc.code)
			})
		}
		t.Run("TotalTooLarge", func(t *testing.T) {
			val := `"` + strings.Repeat("v", 15<<10) + `"`
			for i := range 4 { // 4 × 15 KiB fits in 64 KiB
				c.want(200, "PATCH", "/v1/sessions/current", aliceTok, fmt.Sprintf(`{"data":{"blob%d":%s}}`, i, val), nil)
			}
			r := c.do("PATCH", "/v1/sessions/current", aliceTok, fmt.Sprintf(`{"data":{"blob4":%s}}`, val))
			checkError(t, "fifth 15 KiB value", r, 413, "too_large")
			// Deleting and setting in one patch stays within the cap.
			c.want(200, "PATCH", "/v1/sessions/current", aliceTok, fmt.Sprintf(`{"data":{"blob0":null,"blob1":null,"blob2":null,"blob3":null,"blob4":%s}}`, val), nil)
			c.want(200, "PATCH", "/v1/sessions/current", aliceTok, `{"data":{"blob4":null}}`, nil)
		})
		t.Run("KeysAccumulate", func(t *testing.T) {
			a, b := map[string]int{}, map[string]int{}
			for i := range 200 {
				a[fmt.Sprintf("a%d", i)] = i
				b[fmt.Sprintf("b%d", i)] = i
			}
			c.want(200, "PATCH", "/v1/sessions/current", aliceTok, map[string]any{"data": a}, nil)
			checkError(t, "400 more keys", c.do("PATCH", "/v1/sessions/current", aliceTok, map[string]any{"data": b}), 413, "too_large")
			del := map[string]any{}
			for k := range a {
				del[k] = nil
			}
			c.want(200, "PATCH", "/v1/sessions/current", aliceTok, map[string]any{"data": del}, nil)
		})
		t.Run("TooLargeBody", func(t *testing.T) {
			r := c.rawHead(fmt.Sprintf("PATCH /v1/sessions/current HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d", aliceTok, 2<<20))
			checkError(t, "2 MiB patch", r, 413, "too_large")
		})
		t.Run("Intact", func(t *testing.T) {
			if got := dataOf(t, c.current(aliceTok)); !maps.Equal(got, want) {
				t.Errorf("data after rejected patches = %v, want %v", got, want)
			}
		})
	})

	t.Run("Logout", func(t *testing.T) {
		tok, _ := c.login("alice", pw)
		c.current(tok)
		c.want(204, "DELETE", "/v1/sessions/current", tok, nil, nil)
		c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", tok, nil)
		c.wantErr(401, "unauthorized", "DELETE", "/v1/sessions/current", tok, nil)
		c.current(aliceTok) // other sessions unaffected
	})

	bob := c.register("bob", nil)
	registered++
	bobTok, bobSess := c.login("bob", pw)

	var second, third apiSession
	var secondTok, thirdTok string
	t.Run("List", func(t *testing.T) {
		secondTok, second = c.login("alice", pw)
		thirdTok, third = c.login("alice", pw)
		var out struct{ Sessions []apiSession }
		c.want(200, "GET", "/v1/sessions", secondTok, nil, &out)
		var ids []string
		for i, s := range out.Sessions {
			ids = append(ids, s.ID)
			if s.UserID != alice.ID {
				t.Errorf("listed session %s of user %s", s.ID, s.UserID)
			}
			if s.Current != (s.ID == second.ID) {
				t.Errorf("session %s: current = %v", s.ID, s.Current)
			}
			if i > 0 && s.CreatedAt.After(out.Sessions[i-1].CreatedAt) {
				t.Errorf("sessions not newest first: %v after %v", s.CreatedAt, out.Sessions[i-1].CreatedAt)
			}
		}
		// The logged-out session is gone; the three active ones are listed, newest first.
		if want := []string{third.ID, second.ID, aliceSess.ID}; !slices.Equal(ids, want) {
			t.Errorf("listed sessions %v, want %v", ids, want)
		}
	})

	t.Run("RevokeOne", func(t *testing.T) {
		// Another user's session, or none: 404, and it keeps working for its owner.
		c.wantErr(404, "not_found", "DELETE", "/v1/sessions/"+third.ID, bobTok, nil)
		c.current(thirdTok)
		c.wantErr(404, "not_found", "DELETE", "/v1/sessions/no-such-session", aliceTok, nil)
		c.wantErr(404, "not_found", "DELETE", "/v1/sessions/"+bobSess.ID, aliceTok, nil)
		c.current(bobTok)

		c.want(204, "DELETE", "/v1/sessions/"+second.ID, aliceTok, nil, nil)
		c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", secondTok, nil)
		c.current(aliceTok)
		c.current(thirdTok)
	})

	t.Run("JWTAttacks", func(t *testing.T) {
		k, kid := jwtKey(t)
		now := time.Now()
		good := func() map[string]any {
			return map[string]any{"iss": "sessiond", "aud": "sessiond-api", "sub": alice.ID, "sid": third.ID, "jti": third.ID,
				"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		}
		edit := func(k string, v any) map[string]any {
			m := good()
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
			return m
		}
		hs := map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}
		// The node's signing key, as its key set publishes it: the kid of its EdDSA
		// tokens, and the public key an algorithm confusion would use as an HMAC secret.
		var set struct{ Keys []struct{ Kid, X string } }
		c.do("GET", "/.well-known/jwks.json", "", nil).json(t, &set)
		if len(set.Keys) == 0 {
			t.Fatal("the node publishes no signing key")
		}
		okpKid := set.Keys[0].Kid
		okpPub, _ := base64.RawURLEncoding.DecodeString(set.Keys[0].X)
		parts := strings.Split(thirdTok, ".")
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		tampered := bytes.Replace(payload, []byte(alice.ID), []byte(bob.ID), 1)
		for _, tc := range []struct {
			name  string
			token string
			ok    bool
		}{
			// The positive control: a token forged with the real key and claims works, so
			// each refusal below is for the reason it names.
			{"OKForged", forge(t, hs, good(), k), true},
			{"ErrAlgNone", forge(t, map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, good(), nil), false},
			{"ErrTamperedPayload", parts[0] + "." + base64.RawURLEncoding.EncodeToString(tampered) + "." + parts[2], false},
			{"ErrWrongKey", forge(t, hs, good(), bytes.Repeat([]byte{7}, 32)), false},
			{"ErrClusterKeyItself", forge(t, hs, good(), e2eKey), false},
			{"ErrMissingExp", forge(t, hs, edit("exp", nil), k), false},
			{"ErrWrongAudience", forge(t, hs, edit("aud", "other-service"), k), false},
			{"ErrWrongIssuer", forge(t, hs, edit("iss", "evil"), k), false},
			{"ErrExpired", forge(t, hs, edit("exp", now.Add(-time.Hour).Unix()), k), false},
			{"ErrOtherUsersSession", forge(t, hs, edit("sub", bob.ID), k), false},
			{"ErrRevokedSession", forge(t, hs, edit("sid", second.ID), k), false},
			// Algorithm confusion against the signing key: HS256 under its kid, keyed with
			// its public key or with the cluster key's token key.
			{"ErrHS256WithSigningKid", forge(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": okpKid}, good(), okpPub), false},
			{"ErrHS256WithSigningKidTokenKey", forge(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": okpKid}, good(), k), false},
			{"ErrAlgNoneWithSigningKid", forge(t, map[string]any{"alg": "none", "typ": "JWT", "kid": okpKid}, good(), nil), false},
			{"ErrEdDSAWithTokenKeyKid", forgeHeader(t, map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": kid}, thirdTok), false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := c.do("GET", "/v1/sessions/current", tc.token, nil)
				if tc.ok {
					if r.status != 200 {
						t.Errorf("status %d, want 200: %s", r.status, r.body)
					}
					return
				}
				checkError(t, tc.name, r, 401, "unauthorized")
			})
		}
	})

	t.Run("Profile", func(t *testing.T) {
		var out struct{ User apiUser }
		c.want(200, "GET", "/v1/users/me", aliceTok, nil, &out)
		if out.User.ID != alice.ID || out.User.Profile["email"] != "alice@example.com" {
			t.Errorf("me = %+v", out.User)
		}
		c.want(200, "PATCH", "/v1/users/me", aliceTok, map[string]any{"profile": map[string]string{"email": "alice@wonderland.example"}}, &out)
		want := map[string]string{"first_name": "Alice", "last_name": "Liddell", "email": "alice@wonderland.example", "address": "1 Rabbit Hole\nWonderland"}
		if !maps.Equal(out.User.Profile, want) {
			t.Errorf("profile after patch = %v, want %v", out.User.Profile, want)
		}
		c.want(200, "PATCH", "/v1/users/me", aliceTok, `{"profile":{}}`, nil)
		c.want(200, "PATCH", "/v1/users/me", aliceTok, `{"profile":{"first_name":null}}`, nil)
		for _, body := range []string{
			`{"profile":{"email":"not-an-email"}}`,
			`{"profile":{"first_name":"` + strings.Repeat("f", 101) + `","email":"ok@example.com"}}`,
			`{"profile":{"address":"` + strings.Repeat("a", 501) + `"}}`,
			`{"profile":{"last_name":"bell\u0007"}}`,
			`{"profile":{"nickname":"al"}}`,
			`{"profile":"x"}`,
			`{}`,
			`{"profile":{"email":`,
		} {
			checkError(t, body[:min(len(body), 40)], c.do("PATCH", "/v1/users/me", aliceTok, body), 400, "invalid_argument")
		}
		c.want(200, "GET", "/v1/users/me", aliceTok, nil, &out)
		if !maps.Equal(out.User.Profile, want) {
			t.Errorf("profile after rejected patches = %v, want %v", out.User.Profile, want)
		}
		c.wantErr(401, "unauthorized", "GET", "/v1/users/me", "", nil)
	})

	dave := c.register("dave", nil)
	registered++
	daveTok, _ := c.login("dave", pw)
	_ = dave

	var sent []apiMessage
	t.Run("Messages", func(t *testing.T) {
		m := c.send(aliceTok, "bob", "hi bob")
		if m.From != "alice" || m.To != "bob" || m.Body != "hi bob" || m.ID == "" || m.SentAt.IsZero() {
			t.Errorf("sent = %+v", m)
		}
		sent = append(sent, m)
		sent = append(sent, c.send(bobTok, "alice", "hi alice\nhow are you?"))
		for i := range 7 {
			sent = append(sent, c.send(aliceTok, "bob", fmt.Sprintf("message %d", i)))
		}
		sent = append(sent, c.send(aliceTok, "bob", strings.Repeat("m", 4096)))
		c.wantErr(404, "not_found", "POST", "/v1/messages", aliceTok, map[string]string{"to": "ghost", "body": "boo"})
		c.wantErr(404, "not_found", "POST", "/v1/messages", aliceTok, map[string]string{"to": "NOT A NAME", "body": "boo"})
		for _, tc := range []struct {
			name string
			body any
		}{
			{"Empty", map[string]string{"to": "bob", "body": ""}},
			{"TooLong", map[string]string{"to": "bob", "body": strings.Repeat("m", 4097)}},
			{"Control", map[string]string{"to": "bob", "body": "ring \x07"}},
			{"WrongType", `{"to":"bob","body":5}`},
			{"Unknown", `{"to":"bob","body":"x","cc":"dave"}`},
			{"Malformed", `{"to":"bob",`},
		} {
			checkError(t, tc.name, c.do("POST", "/v1/messages", aliceTok, tc.body), 400, "invalid_argument")
		}
		c.wantErr(401, "unauthorized", "POST", "/v1/messages", "", map[string]string{"to": "bob", "body": "x"})

		// Paging with a cursor returns every message once, in conversation order, for both.
		for _, who := range []struct {
			tok, with string
		}{{aliceTok, "bob"}, {bobTok, "alice"}} {
			for _, limit := range []int{1, 3, 100, 500} {
				got, _ := c.conversation(who.tok, who.with, limit)
				if ids(got) != ids(sent) {
					t.Errorf("conversation with %s, limit %d:\n got %s\nwant %s", who.with, limit, ids(got), ids(sent))
				}
			}
		}
		var p apiPage
		c.want(200, "GET", "/v1/messages?with=bob", aliceTok, nil, &p)
		if len(p.Messages) != len(sent) || p.Messages[1].Body != "hi alice\nhow are you?" || p.Messages[1].From != "bob" {
			t.Errorf("default page: %d messages, want %d", len(p.Messages), len(sent))
		}
		// The cursor after the last page picks up what came since, and only that.
		_, cursor := c.conversation(aliceTok, "bob", 4)
		late := c.send(bobTok, "alice", "one more")
		sent = append(sent, late)
		c.want(200, "GET", "/v1/messages?with=bob&after="+cursor, aliceTok, nil, &p)
		if len(p.Messages) != 1 || p.Messages[0].ID != late.ID {
			t.Errorf("after the last cursor: %s, want [%s]", ids(p.Messages), late.ID)
		}
		c.want(200, "GET", "/v1/messages?with=bob&after="+p.Next, aliceTok, nil, &p)
		if len(p.Messages) != 0 {
			t.Errorf("after the newest cursor: %d messages, want 0", len(p.Messages))
		}
		for _, q := range []string{"", "?with=", "?with=bob&limit=0", "?with=bob&limit=501", "?with=bob&limit=-1",
			"?with=bob&limit=ten", "?with=bob&after=%21%21%21", "?with=bob&after=AAAA"} {
			checkError(t, "GET /v1/messages"+q, c.do("GET", "/v1/messages"+q, aliceTok, nil), 400, "invalid_argument")
		}
		c.wantErr(404, "not_found", "GET", "/v1/messages?with=ghost", aliceTok, nil)
		c.wantErr(401, "unauthorized", "GET", "/v1/messages?with=bob", "", nil)

		// Dave sees none of alice and bob's conversation.
		got, _ := c.conversation(daveTok, "alice", 100)
		if len(got) != 0 {
			t.Errorf("dave's conversation with alice holds %d messages of others", len(got))
		}
	})

	t.Run("Conversations", func(t *testing.T) {
		c.send(aliceTok, "dave", "hello dave")
		var out struct {
			Conversations []struct {
				With        string     `json:"with"`
				LastMessage apiMessage `json:"last_message"`
				Count       int        `json:"count"`
			}
		}
		c.want(200, "GET", "/v1/conversations", aliceTok, nil, &out)
		var got []string
		for _, cv := range out.Conversations {
			got = append(got, fmt.Sprintf("%s:%d:%s", cv.With, cv.Count, cv.LastMessage.Body))
		}
		if want := []string{"dave:1:hello dave", fmt.Sprintf("bob:%d:one more", len(sent))}; !slices.Equal(got, want) {
			t.Errorf("alice's conversations = %v, want %v", got, want)
		}
		c.want(200, "GET", "/v1/conversations", bobTok, nil, &out)
		if len(out.Conversations) != 1 || out.Conversations[0].With != "alice" {
			t.Errorf("bob's conversations = %+v, want only alice", out.Conversations)
		}
		c.wantErr(401, "unauthorized", "GET", "/v1/conversations", "", nil)

		// A page at a time: limit 1, then after the first page's cursor.
		var page struct {
			Conversations []struct {
				With string `json:"with"`
			}
			Next string `json:"next"`
		}
		c.want(200, "GET", "/v1/conversations?limit=1", aliceTok, nil, &page)
		if len(page.Conversations) != 1 || page.Conversations[0].With != "dave" || page.Next == "" {
			t.Fatalf("alice's first page of one = %+v, want dave and a cursor", page)
		}
		c.want(200, "GET", "/v1/conversations?limit=1&after="+page.Next, aliceTok, nil, &page)
		if len(page.Conversations) != 1 || page.Conversations[0].With != "bob" || page.Next != "" {
			t.Errorf("alice's second page of one = %+v, want bob and no cursor", page)
		}
		c.wantErr(400, "invalid_argument", "GET", "/v1/conversations?limit=0", aliceTok, nil)
		c.wantErr(400, "invalid_argument", "GET", "/v1/conversations?limit=501", aliceTok, nil)
		c.wantErr(400, "invalid_argument", "GET", "/v1/conversations?after=%21", aliceTok, nil)
	})

	t.Run("Stream", func(t *testing.T) {
		c.wantErr(401, "unauthorized", "GET", "/v1/messages/stream", "", nil)
		bobStream := openStream(t, c, d.name, bobTok)
		aliceStream := openStream(t, c, d.name, aliceTok)
		daveStream := openStream(t, c, d.name, daveTok)
		m := c.send(aliceTok, "bob", "live!")
		for _, s := range []*sseStream{bobStream, aliceStream} {
			got := s.next(t, 5*time.Second)
			if got.ID != m.ID || got.From != "alice" || got.To != "bob" || got.Body != "live!" {
				t.Errorf("%s's stream: %+v, want %+v", s.who, got, m)
			}
		}
		m2 := c.send(daveTok, "alice", "from dave")
		if got := daveStream.next(t, 5*time.Second); got.ID != m2.ID {
			t.Errorf("dave's stream: %+v, want %+v (and not alice and bob's)", got, m2)
		}
		if got := aliceStream.next(t, 5*time.Second); got.ID != m2.ID {
			t.Errorf("alice's stream: %+v, want %+v", got, m2)
		}
	})

	t.Run("Cluster", func(t *testing.T) {
		var out struct {
			Node    map[string]any
			Members []map[string]any
		}
		c.want(200, "GET", "/v1/cluster", aliceTok, nil, &out)
		if out.Node["name"] != d.name || out.Node["region"] != "local" || out.Node["id"] == "" {
			t.Errorf("node = %v", out.Node)
		}
		if len(out.Members) != 1 || out.Members[0]["name"] != d.name || out.Members[0]["status"] != "alive" {
			t.Errorf("members = %v, want only %s, alive", out.Members, d.name)
		}
		c.wantErr(401, "unauthorized", "GET", "/v1/cluster", "", nil)
	})

	t.Run("RevokeAll", func(t *testing.T) {
		other, _ := c.login("alice", pw)
		c.want(204, "DELETE", "/v1/sessions", thirdTok, nil, nil)
		for _, tok := range []string{aliceTok, thirdTok, other} {
			c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", tok, nil)
		}
		c.current(bobTok) // another user's sessions are untouched
		aliceTok, _ = c.login("alice", pw)
		var out struct{ Sessions []apiSession }
		c.want(200, "GET", "/v1/sessions", aliceTok, nil, &out)
		if len(out.Sessions) != 1 {
			t.Errorf("sessions after revoke-all and a new login: %d, want 1", len(out.Sessions))
		}
	})

	t.Run("DeleteAccount", func(t *testing.T) {
		c.register("carol", map[string]string{"first_name": "Carol"})
		carolTok, _ := c.login("carol", pw)
		carolTok2, _ := c.login("carol", pw)
		c.send(carolTok, "alice", "hi from carol")
		c.want(204, "DELETE", "/v1/users/me", carolTok, nil, nil)
		for _, tok := range []string{carolTok, carolTok2} {
			c.wantErr(401, "unauthorized", "GET", "/v1/sessions/current", tok, nil)
			c.wantErr(401, "unauthorized", "GET", "/v1/users/me", tok, nil)
		}
		wrong := c.do("POST", "/v1/sessions", "", map[string]string{"username": "nobody", "password": pw})
		r := c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": pw})
		if !bytes.Equal(r.body, wrong.body) {
			t.Errorf("login to an erased account: %s, want the same as an unknown user: %s", r.body, wrong.body)
		}
		var out struct {
			Conversations []struct{ With string }
		}
		c.want(200, "GET", "/v1/conversations", aliceTok, nil, &out)
		for _, cv := range out.Conversations {
			if cv.With == "carol" {
				t.Errorf("alice still lists a conversation with the erased carol")
			}
		}
		c.wantErr(404, "not_found", "GET", "/v1/messages?with=carol", aliceTok, nil)
		c.wantErr(404, "not_found", "POST", "/v1/messages", aliceTok, map[string]string{"to": "carol", "body": "are you there?"})
		// The name is free again, for a new account that sees nothing of the old one.
		c.register("carol", nil)
		registered++
		newTok, _ := c.login("carol", pw)
		if got, _ := c.conversation(newTok, "alice", 100); len(got) != 0 {
			t.Errorf("the new carol sees %d messages of the erased one", len(got))
		}
		var me struct{ User apiUser }
		c.want(200, "GET", "/v1/users/me", newTok, nil, &me)
		if me.User.Profile["first_name"] != "" {
			t.Errorf("the new carol inherited a profile: %v", me.User.Profile)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		for _, p := range []struct{ method, path string }{
			{"GET", "/v1/nope"}, {"GET", "/v1/users"}, {"PUT", "/v1/sessions/current"}, {"POST", "/v1/cluster"},
			{"GET", "/v1/users/" + alice.ID}, {"GET", "/v1/sessions/" + bobSess.ID},
		} {
			checkError(t, p.method+" "+p.path, c.do(p.method, p.path, aliceTok, nil), 404, "not_found")
		}
	})

	t.Run("UI", func(t *testing.T) {
		r := c.want(200, "GET", "/", "", nil, nil)
		if !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Errorf("GET /: Content-Type %q, CSP %q", r.header.Get("Content-Type"), r.header.Get("Content-Security-Policy"))
		}
		c.want(200, "GET", "/app.css", "", nil, nil)
	})

	t.Run("Metrics", func(t *testing.T) {
		r := c.want(200, "GET", "/metrics", "", nil, nil)
		for _, want := range []string{"sessiond_http_requests_total{", "sessiond_stored_users ", "sessiond_login_failures_total{reason=\"credentials\"}"} {
			if !bytes.Contains(r.body, []byte(want)) {
				t.Errorf("metrics lack %q", want)
			}
		}
		// Labels are routes, not raw paths: no ids or queries leak into the series.
		if bytes.Contains(r.body, []byte(bobSess.ID)) || bytes.Contains(r.body, []byte("with=")) {
			t.Errorf("metrics carry request-specific labels")
		}
		if got := metricValue(t, c, "sessiond_stored_users"); got != float64(registered) {
			t.Errorf("sessiond_stored_users = %v, want %d", got, registered)
		}
	})
}

func ids(ms []apiMessage) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return strings.Join(out, ",")
}

var metricLine = regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+|NaN)$`)

// metricValue returns the value of the unlabelled metric name.
func metricValue(t testing.TB, c *client, name string) float64 {
	t.Helper()
	r := c.want(200, "GET", "/metrics", "", nil, nil)
	for _, m := range metricLine.FindAllStringSubmatch(string(r.body), -1) {
		if m[1] == name {
			v, _ := strconv.ParseFloat(m[2], 64)
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// sseStream reads a message stream's events.
type sseStream struct {
	who    string
	events chan apiMessage
	errs   chan error
}

// openStream opens GET /v1/messages/stream and waits for its ": connected" comment, so
// the subscription exists before the caller sends anything.
func openStream(t *testing.T, c *client, node, token string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/messages/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	hc := &http.Client{Transport: headerCheck{t: t, node: node, base: &http.Transport{DisableCompression: true}}}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sseStream{who: token[len(token)-8:], events: make(chan apiMessage, 16), errs: make(chan error, 1)}
	connected := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(resp.Body)
		var event string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == ": connected":
				close(connected)
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && event == "message":
				var m apiMessage
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &m); err != nil {
					s.errs <- fmt.Errorf("bad event data %q: %v", line, err)
					return
				}
				s.events <- m
			case line == "":
				event = ""
			}
		}
		s.errs <- fmt.Errorf("stream ended: %v", sc.Err())
	}()
	select {
	case <-connected:
	case err := <-s.errs:
		t.Fatalf("stream: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("stream: no \": connected\" within 5s")
	}
	return s
}

// next returns the next message event, failing after within.
func (s *sseStream) next(t *testing.T, within time.Duration) apiMessage {
	t.Helper()
	select {
	case m := <-s.events:
		return m
	case err := <-s.errs:
		t.Fatalf("stream: %v", err)
	case <-time.After(within):
		t.Fatalf("no message event within %s", within)
	}
	return apiMessage{}
}

// TestE2E_Lifecycle covers login throttling (its limits set from the environment and a
// flag), the health subcommand, a second instance on the same data, and SIGTERM.
func TestE2E_Lifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary; skipped with -short")
	}
	t.Parallel()
	d := newDaemon(t, "e2e-life", "", "--login-per-address", "5")
	d.ownLimits = true
	d.env = []string{"SESSIOND_LOGIN_PER_ACCOUNT=3", "SESSIOND_LOGIN_PER_ADDRESS=1000"} // the flag wins
	d.start()
	d.waitReady()
	c := newClient(t, d)
	c.register("alice", nil)
	c.register("bob", nil)
	bobTok, _ := c.login("bob", pw) // address: 1 attempt

	t.Run("Throttle", func(t *testing.T) {
		// Failures count, successes do not. The account's 3 a minute (environment) makes
		// the limit per account and address min(10, 3-1) = 2.
		for range 2 { // address: 2 failures
			c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": "alice", "password": "wrong password"})
		}
		// Past it, the right password is refused too from this address.
		r := c.wantErr(429, "rate_limited", "POST", "/v1/sessions", "", map[string]string{"username": "alice", "password": pw})
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("account throttled: Retry-After = %q, want 1–60 seconds", r.header.Get("Retry-After"))
		}
		for _, name := range []string{"dave", "erin", "frank"} { // address: 5 failures
			c.wantErr(401, "unauthorized", "POST", "/v1/sessions", "", map[string]string{"username": name, "password": "wrong password"})
		}
		// Another account from the same address: past the address's 5 (the flag wins).
		r = c.wantErr(429, "rate_limited", "POST", "/v1/sessions", "", map[string]string{"username": "gina", "password": "wrong password"})
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("address throttled: Retry-After = %q, want 1–60 seconds", r.header.Get("Retry-After"))
		}
		c.current(bobTok) // sessions are not throttled
	})

	t.Run("Health", func(t *testing.T) {
		out, _, code := runBin(t, nil, "health", "--http", d.http)
		if code != 0 || strings.TrimSpace(out) != "ok" {
			t.Errorf("health of a live node: exit %d, output %q; want 0, ok", code, out)
		}
		_, port, _ := net.SplitHostPort(d.http)
		if _, _, code := runBin(t, nil, "health", "--http", ":"+port); code != 0 {
			t.Errorf("health --http :%s: exit %d, want 0", port, code)
		}
		if _, _, code := runBin(t, []string{"SESSIOND_HTTP=" + d.http}, "health"); code != 0 {
			t.Errorf("health with SESSIOND_HTTP: exit %d, want 0", code)
		}
		if _, errOut, code := runBin(t, nil, "health", "--http", freeAddr(t)); code != 1 || !strings.Contains(errOut, "unhealthy") {
			t.Errorf("health of nothing: exit %d, stderr %q; want 1, unhealthy", code, errOut)
		}
		if _, _, code := runBin(t, nil, "health", "--bogus"); code != 2 {
			t.Errorf("health --bogus: exit %d, want 2", code)
		}
	})

	t.Run("DataInUse", func(t *testing.T) {
		start := time.Now()
		_, errOut, code := runBin(t, nil, "--data", d.data, "--http", freeAddr(t), "--gossip", freeAddr(t), "--sync", freeAddr(t),
			"--node", "intruder", "--cluster-key-file", d.keyFile)
		if code != 1 || !strings.Contains(errOut, "in use") {
			t.Errorf("second instance on the same --data: exit %d, stderr %q; want 1 and \"in use\"", code, errOut)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("second instance took %s to give up", took)
		}
		c.current(bobTok) // the first is unharmed
	})

	t.Run("SIGTERM", func(t *testing.T) {
		c.want(200, "PATCH", "/v1/sessions/current", bobTok, map[string]any{"data": map[string]string{"before": "sigterm"}}, nil)
		stream := openStream(t, c, d.name, bobTok)
		// Connections that send nothing (a load balancer's or client's spare ones):
		// fasthttp's graceful shutdown waited for them until --shutdown-timeout (10 s),
		// then failed.
		for range 2 {
			conn, err := net.Dial("tcp", d.http)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
		}
		// And more of them while the node stops, until it is down (a first fix missed
		// those fasthttp set up after it had begun).
		flood, flooded := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(flooded)
			for {
				select {
				case <-flood:
					return
				default:
				}
				if conn, err := net.DialTimeout("tcp", d.http, time.Second); err == nil {
					defer conn.Close()
				}
			}
		}()
		start := time.Now()
		d.signal(syscall.SIGTERM)
		code := d.wait(15 * time.Second)
		close(flood)
		<-flooded
		if code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0", code)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("SIGTERM → exit took %s, want under 5s even with a live stream and idle connections open", took)
		}
		select {
		case <-stream.errs: // ended
		case <-time.After(5 * time.Second):
			t.Errorf("the live stream did not end with the process")
		}
		if strings.Contains(d.out.String(), "level=ERROR") {
			t.Errorf("errors logged during shutdown:\n%s", d.out.String())
		}
		// Everything acknowledged before SIGTERM is there after a restart.
		d.start()
		d.waitReady()
		c := newClient(t, d)
		if got := dataOf(t, c.current(bobTok)); got["before"] != `"sigterm"` {
			t.Errorf("data after restart = %v, want before=sigterm", got)
		}
	})
}

// TestE2E_KillRestart acknowledges writes from concurrent clients while the process runs,
// kills it with SIGKILL in the middle of them, restarts it on the same data and checks
// that every acknowledged write is there.
func TestE2E_KillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary; skipped with -short")
	}
	t.Parallel()
	d := newDaemon(t, "e2e-kill", "")
	d.start()
	d.waitReady()
	c := newClient(t, d)

	const workers = 8
	type acked struct {
		user  string
		token string
		data  map[string]string // key → JSON value
		sent  []string          // message ids to the next worker's user
	}
	results := make([]*acked, workers)
	var total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Every worker signs up and in before any writes, so that each one's recipient exists
	// when the kill comes (password hashing is queued: without this, fast writers could
	// reach the kill before a slow sign-up).
	var signedIn sync.WaitGroup
	signedIn.Add(workers)
	for i := range workers {
		a := &acked{user: fmt.Sprintf("worker-%d", i), data: map[string]string{}}
		results[i] = a
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Errors end the worker: the process is being killed. Only 2xx answers count.
			ok := func() bool {
				defer signedIn.Done()
				r, err := c.try("POST", "/v1/users", "", map[string]string{"username": a.user, "password": pw})
				if err != nil || r.status != 201 {
					return false
				}
				r, err = c.try("POST", "/v1/sessions", "", map[string]string{"username": a.user, "password": pw})
				if err != nil || r.status != 201 {
					return false
				}
				var login struct{ Token string }
				if json.Unmarshal(r.body, &login) != nil {
					return false
				}
				a.token = login.Token
				total.Add(2)
				return true
			}()
			if !ok {
				return
			}
			signedIn.Wait()
			to := fmt.Sprintf("worker-%d", (i+1)%workers)
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key, val := fmt.Sprintf("k%d", j), fmt.Sprintf(`{"n":%d,"w":%d}`, j, i)
				r, err := c.try("PATCH", "/v1/sessions/current", a.token, `{"data":{"`+key+`":`+val+`}}`)
				if err != nil {
					return
				}
				if r.status == 200 {
					a.data[key] = val
					total.Add(1)
				}
				r, err = c.try("POST", "/v1/messages", a.token, map[string]string{"to": to, "body": fmt.Sprintf("%s #%d", a.user, j)})
				if err != nil {
					return
				}
				var m struct{ Message apiMessage }
				if r.status == 201 && json.Unmarshal(r.body, &m) == nil {
					a.sent = append(a.sent, m.Message.ID)
					total.Add(1)
				}
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for total.Load() < 400 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	d.signal(syscall.SIGKILL) // with writes in flight
	d.wait(10 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged before SIGKILL", total.Load())
	if total.Load() < 100 {
		t.Fatalf("only %d writes acknowledged before the kill", total.Load())
	}

	d.start()
	d.waitReady()
	c = newClient(t, d)
	for i, a := range results {
		if a.token == "" {
			continue
		}
		t.Run(a.user, func(t *testing.T) {
			c.login(a.user, pw)
			got := dataOf(t, c.current(a.token))
			for k, v := range a.data {
				if got[k] != v {
					t.Errorf("data[%s] = %s, want %s (acknowledged)", k, got[k], v)
				}
			}
			if results[(i+1)%workers].token == "" {
				t.Fatalf("%s's recipient did not sign up before the kill", a.user)
			}
			to := results[(i+1)%workers].user
			msgs, _ := c.conversation(a.token, to, 500)
			have := map[string]bool{}
			for _, m := range msgs {
				have[m.ID] = true
			}
			for _, id := range a.sent {
				if !have[id] {
					t.Errorf("acknowledged message %s to %s is missing", id, to)
				}
			}
		})
	}
}

func TestE2E_CommandLine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	t.Parallel()
	t.Run("Help", func(t *testing.T) {
		for _, arg := range []string{"--help", "-h"} {
			out, errOut, code := runBin(t, nil, arg)
			help := out + errOut
			if code != 0 {
				t.Errorf("%s: exit %d, want 0", arg, code)
			}
			for _, f := range []string{"http", "data", "node", "region", "gossip", "sync", "advertise", "join",
				"cluster-key-file", "fast-gossip", "catch-up-timeout", "anti-entropy-every", "session-ttl", "idle-ttl",
				"max-skew", "login-per-account", "login-per-address", "cors-origins", "trusted-proxies",
				"shutdown-timeout", "log-format", "log-level"} {
				if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(f) + `\b`).MatchString(help) {
					t.Errorf("%s does not mention --%s", arg, f)
				}
			}
			for _, s := range []string{"SESSIOND_", "keygen", "health", "SESSIOND_CLUSTER_KEY"} {
				if !strings.Contains(help, s) {
					t.Errorf("%s does not mention %s", arg, s)
				}
			}
			// Every flag has a description under it.
			lines := strings.Split(help, "\n")
			for i, l := range lines {
				if strings.HasPrefix(l, "  -") && (i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) == "" || strings.HasPrefix(lines[i+1], "  -")) {
					t.Errorf("flag without a description: %q", l)
				}
			}
		}
	})
	t.Run("Keygen", func(t *testing.T) {
		var keys []string
		for range 2 {
			out, _, code := runBin(t, nil, "keygen")
			k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
			if code != 0 || err != nil || len(k) != 32 || strings.Count(out, "\n") != 1 {
				t.Errorf("keygen: exit %d, output %q: want base64 of 32 bytes on one line", code, out)
			}
			keys = append(keys, out)
		}
		if keys[0] == keys[1] {
			t.Errorf("keygen printed the same key twice")
		}
	})
	t.Run("Version", func(t *testing.T) {
		if out, _, code := runBin(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "sessiond ") {
			t.Errorf("version: exit %d, output %q", code, out)
		}
	})
	t.Run("BadFlags", func(t *testing.T) {
		for _, args := range [][]string{
			{"--no-such-flag"},
			{"--http"},
			{"--login-per-account", "many"},
			{"--session-ttl", "forever"},
			{"--fast-gossip=maybe"},
			{"--log-format", "xml"},
			{"--log-level", "loud"},
			{"serve-please"},
		} {
			_, errOut, code := runBin(t, nil, args...)
			if code != 2 || errOut == "" {
				t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut)
			}
		}
		if _, errOut, code := runBin(t, []string{"SESSIOND_LOGIN_PER_ACCOUNT=lots"}, "--data", t.TempDir()); code != 2 || !strings.Contains(errOut, "SESSIOND_LOGIN_PER_ACCOUNT") {
			t.Errorf("bad SESSIOND_LOGIN_PER_ACCOUNT: exit %d, stderr %q; want 2 naming the variable", code, errOut)
		}
	})
	t.Run("BadConfig", func(t *testing.T) {
		badKey := filepath.Join(t.TempDir(), "bad.key")
		os.WriteFile(badKey, []byte("not base64!\n"), 0o600)
		ports := func() []string {
			return []string{"--data", t.TempDir(), "--http", freeAddr(t), "--gossip", freeAddr(t), "--sync", freeAddr(t)}
		}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--login-per-account", "0"}, "LoginPerAccount"},
			{[]string{"--session-ttl", "-1s"}, "SessionTTL"},
			{[]string{"--join", "127.0.0.1:1"}, "--cluster-key-file"},
			{[]string{"--cluster-key-file", badKey}, "cluster key"},
			{[]string{"--cluster-key-file", filepath.Join(t.TempDir(), "missing.key")}, "cluster key"},
			{[]string{"--http", "nonsense"}, "HTTPAddr"},
		} {
			_, errOut, code := runBin(t, nil, append(ports(), tc.args...)...)
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%v: exit %d, stderr %q; want 1 mentioning %q", tc.args, code, errOut, tc.want)
			}
		}
		// A port already taken fails at start with exit 1.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		args := append(ports(), "--http", ln.Addr().String())
		if _, errOut, code := runBin(t, nil, args...); code != 1 || !strings.Contains(errOut, ln.Addr().String()) {
			t.Errorf("HTTP port in use: exit %d, stderr %q; want 1 naming the address", code, errOut)
		}
	})
}
