package main_test

// Real sessiond binaries forming a three-region cluster on loopback: the product as users
// and operators run it, with kill -9, SIGSTOP/SIGCONT and a node holding the wrong key.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	clBinaryOnce sync.Once
	clBinary     string
	clBinaryErr  error
)

// clBuild builds the sessiond binary once per test run.
func clBuild(t *testing.T) string {
	t.Helper()
	clBinaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sessiond-cluster-bin")
		if err != nil {
			clBinaryErr = err
			return
		}
		clBinary = filepath.Join(dir, "sessiond")
		out, err := exec.Command("go", "build", "-o", clBinary, ".").CombinedOutput()
		if err != nil {
			clBinaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if clBinaryErr != nil {
		t.Fatal(clBinaryErr)
	}
	return clBinary
}

func clFreePort(t *testing.T) int {
	t.Helper()
	return freePort(t)
}

// Ports for the processes a test starts come from below the kernel's ephemeral range
// (32768-60999 on Linux), so that no outgoing connection of a running node can take one
// between the test picking it and the node binding it, and none is handed out twice in
// one test binary. Each is checked free for TCP and UDP (gossip binds both).
var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		p := 20000 + mathrand.IntN(12000)
		if portsUsed[p] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		portsUsed[p] = true
		return p
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// clNode is one sessiond process of the test cluster.
type clNode struct {
	t                 *testing.T
	name, region      string
	data, keyFile     string
	http, gossip, syn string
	join              string
	extra             []string // more flags
	bin               string   // the binary; default: clBuild's
	// firstRelease: bin is the first release's (cf22e35), which lacks some of the flags
	// start passes by default.
	firstRelease bool

	mu     sync.Mutex
	starts int // processes started, each of which logs its start once it is up
	cmd    *exec.Cmd
	log    bytes.Buffer
	exited chan struct{}
}

func (n *clNode) url(path string) string { return "http://" + n.http + path }

// start runs the process; it is stopped at the end of the test.
func (n *clNode) start() {
	n.t.Helper()
	args := []string{
		"--node", n.name, "--region", n.region, "--data", n.data,
		"--http", n.http, "--gossip", n.gossip, "--sync", n.syn,
		"--cluster-key-file", n.keyFile, "--fast-gossip", "--anti-entropy-every", "2s",
		"--login-per-account", "10000", "--login-per-address", "10000", "--log-level", "debug",
	}
	if !n.firstRelease {
		args = append(args, "--signups-per-address", "10000", "--messages-per-user", "100000",
			// Logins and sign-ups wait for a hashing worker as long as they need: under -race
			// a hash takes ten times as long, and these tests are not about the queue's bound.
			"--password-wait", "1m", "--password-queue", "4096")
	}
	if n.join != "" {
		args = append(args, "--join", n.join)
	}
	args = append(args, n.extra...)
	bin := n.bin
	if bin == "" {
		bin = clBuild(n.t)
	}
	cmd := exec.Command(bin, args...)
	// Tests sign one account in many times a minute. Set in the environment, which an
	// older release's binary ignores, where it would refuse the flag.
	cmd.Env = append(os.Environ(), "SESSIOND_SIGNINS_PER_ACCOUNT=100000")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	n.starts++
	n.mu.Unlock()
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			n.mu.Lock()
			n.log.WriteString(sc.Text() + "\n")
			n.mu.Unlock()
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
}

func (n *clNode) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *clNode) signal(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("signal %s to %s: %v", sig, n.name, err)
	}
}

// kill9 kills the process with SIGKILL and waits for it to be gone.
func (n *clNode) kill9() {
	n.t.Helper()
	n.signal(syscall.SIGKILL)
	<-n.exited
}

func newCluster(t *testing.T, names, regions []string, key string) []*clNode {
	t.Helper()
	nodes := prepareCluster(t, names, regions, key)
	for _, n := range nodes {
		n.start()
	}
	return nodes
}

// prepareCluster returns the nodes of a cluster without starting them, so that a test can
// set their flags or binary first; the nodes it starts are killed at the end of the test.
func prepareCluster(t *testing.T, names, regions []string, key string) []*clNode {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []*clNode
	for i, name := range names {
		n := &clNode{
			t: t, name: name, region: regions[i], data: t.TempDir(), keyFile: keyFile,
			http:   fmt.Sprintf("127.0.0.1:%d", clFreePort(t)),
			gossip: fmt.Sprintf("127.0.0.1:%d", clFreePort(t)),
			syn:    fmt.Sprintf("127.0.0.1:%d", clFreePort(t)),
		}
		if i > 0 {
			n.join = nodes[0].gossip
		}
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.cmd == nil {
				continue
			}
			n.cmd.Process.Signal(syscall.SIGCONT)
			n.cmd.Process.Signal(syscall.SIGKILL)
			<-n.exited
			if t.Failed() {
				t.Logf("log of %s:\n%s", n.name, n.logText())
			}
		}
	})
	return nodes
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var clClient = &http.Client{Timeout: 5 * time.Second}

// call sends a JSON request and returns the status and decoded body (nil on transport
// errors, reported as status 0).
func call(method, url, token string, body any) (int, map[string]any) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := clClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (n *clNode) ready() bool {
	st, _ := call("GET", n.url("/readyz"), "", nil)
	return st == http.StatusOK
}

// aliveMembers returns the names of the members n sees as alive, using token.
func (n *clNode) aliveMembers(token string) []string {
	st, body := call("GET", n.url("/v1/cluster"), token, nil)
	if st != http.StatusOK {
		return nil
	}
	var names []string
	ms, _ := body["members"].([]any)
	for _, m := range ms {
		mm := m.(map[string]any)
		if mm["status"] == "alive" {
			names = append(names, mm["name"].(string))
		}
	}
	return names
}

func (n *clNode) memberStatus(token, name string) string {
	st, body := call("GET", n.url("/v1/cluster"), token, nil)
	if st != http.StatusOK {
		n.t.Logf("GET /v1/cluster on %s: status %d, body %v", n.name, st, body)
	}
	ms, _ := body["members"].([]any)
	for _, m := range ms {
		if mm := m.(map[string]any); mm["name"] == name {
			s, _ := mm["status"].(string)
			return s
		}
	}
	return ""
}

func login(n *clNode, user, password string) (int, string) {
	st, body := call("POST", n.url("/v1/sessions"), "", map[string]string{"username": user, "password": password})
	tok, _ := body["token"].(string)
	return st, tok
}

func register(t *testing.T, n *clNode, user, password string) {
	t.Helper()
	st, body := call("POST", n.url("/v1/users"), "", map[string]any{
		"username": user, "password": password,
		"profile": map[string]string{"first_name": strings.ToUpper(user[:1]) + user[1:]},
	})
	if st != http.StatusCreated {
		t.Fatalf("register %s on %s: status %d, body %v", user, n.name, st, body)
	}
}

func TestClusterThreeRegions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	key := strings.TrimSpace(runKeygen(t))
	nodes := newCluster(t, []string{"eu-1", "us-1", "ap-1"}, []string{"eu", "us", "ap"}, key)
	eu, us, ap := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}

	// Register in one region, log in in another, edit in the third.
	register(t, eu, "alice", "alice-password")
	var token string
	waitFor(t, 10*time.Second, "alice's account to reach us", func() bool {
		st, tok := login(us, "alice", "alice-password")
		token = tok
		return st == http.StatusCreated
	})
	waitFor(t, 10*time.Second, "all three members alive on eu", func() bool { return len(eu.aliveMembers(token)) == 3 })
	waitFor(t, 10*time.Second, "the session to reach ap", func() bool {
		st, _ := call("GET", ap.url("/v1/sessions/current"), token, nil)
		return st == http.StatusOK
	})
	if st, body := call("PATCH", ap.url("/v1/sessions/current"), token, map[string]any{"data": map[string]any{"cart": []int{1, 2}}}); st != http.StatusOK {
		t.Fatalf("patch on ap: %d %v", st, body)
	}
	if st, body := call("PATCH", ap.url("/v1/users/me"), token, map[string]any{"profile": map[string]string{"address": "1 Harbour St"}}); st != http.StatusOK {
		t.Fatalf("profile patch on ap: %d %v", st, body)
	}
	waitFor(t, 10*time.Second, "ap's edits visible on eu", func() bool {
		_, s := call("GET", eu.url("/v1/sessions/current"), token, nil)
		_, u := call("GET", eu.url("/v1/users/me"), token, nil)
		sess, _ := s["session"].(map[string]any)
		user, _ := u["user"].(map[string]any)
		if sess == nil || user == nil {
			return false
		}
		data, _ := sess["data"].(map[string]any)
		prof, _ := user["profile"].(map[string]any)
		return fmt.Sprint(data["cart"]) == "[1 2]" && prof["address"] == "1 Harbour St"
	})

	// Logout in one region rejects the token in the others.
	if st, _ := call("DELETE", eu.url("/v1/sessions/current"), token, nil); st != http.StatusNoContent {
		t.Fatalf("logout on eu: %d", st)
	}
	for _, n := range []*clNode{us, ap} {
		waitFor(t, 10*time.Second, "the revoked token to stop working on "+n.name, func() bool {
			st, _ := call("GET", n.url("/v1/sessions/current"), token, nil)
			return st == http.StatusUnauthorized
		})
	}

	// kill -9 a node, write while it is down, restart it: it catches up before ready.
	_, token = login(eu, "alice", "alice-password")
	us.kill9()
	register(t, eu, "bob", "bob-password-1")
	us.start()
	waitFor(t, 30*time.Second, "us ready after restart", us.ready)
	if st, _ := login(us, "bob", "bob-password-1"); st != http.StatusCreated {
		t.Fatalf("bob's login on restarted us: status %d, want 201 (a ready node has caught up)", st)
	}

	// SIGSTOP past failure detection, write meanwhile, SIGCONT: the paused node catches up.
	ap.signal(syscall.SIGSTOP)
	waitFor(t, 30*time.Second, "eu to see ap failed", func() bool { return eu.memberStatus(token, "ap-1") == "failed" })
	register(t, eu, "carol", "carol-password")
	ap.signal(syscall.SIGCONT)
	waitFor(t, 30*time.Second, "ap alive again on eu", func() bool { return eu.memberStatus(token, "ap-1") == "alive" })
	waitFor(t, 20*time.Second, "carol's account on ap", func() bool {
		st, _ := login(ap, "carol", "carol-password")
		return st == http.StatusCreated
	})

	// A node with another cluster key stays out: its join attempts fail and nobody lists it.
	stranger := newCluster(t, []string{"intruder"}, []string{"eu"}, strings.TrimSpace(runKeygen(t)))[0]
	stranger.cmd.Process.Kill()
	<-stranger.exited
	stranger.join = eu.gossip
	stranger.start()
	waitFor(t, 30*time.Second, "the intruder's join attempts to fail twice", func() bool {
		return strings.Count(stranger.logText(), "join failed; retrying") >= 2
	})
	for _, n := range nodes {
		if s := n.memberStatus(token, "intruder"); s != "" {
			t.Errorf("%s lists the intruder with status %q, want it absent", n.name, s)
		}
	}
	if st, _ := login(stranger, "alice", "alice-password"); st != http.StatusUnauthorized {
		t.Errorf("login to the intruder: status %d, want 401 (it holds no data)", st)
	}
}

func runKeygen(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(clBuild(t), "keygen").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
