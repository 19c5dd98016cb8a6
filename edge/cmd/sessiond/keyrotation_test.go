package main_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestKeyRotation rotates the cluster key of three running nodes without a restart, as
// docs/OPERATIONS.md, "Rotating the cluster key" tells operators to: add the new key everywhere (SIGHUP), make it
// first everywhere (SIGHUP), remove the old everywhere (SIGHUP). Throughout, no node sees
// another as anything but alive, and after each step a write on one node reaches the
// others and a token issued before the rotation still works on every node — also on a
// node restarted after the old key was removed. Afterwards a node holding only the old
// key can neither gossip (its joins fail, nobody lists it) nor sync (the sync channel
// refuses a TLS client proving the old key, and accepts one proving the new).
func TestKeyRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	oldKey, newKey := strings.TrimSpace(runKeygen(t)), strings.TrimSpace(runKeygen(t))
	nodes := prepareCluster(t, []string{"eu-1", "us-1", "ap-1"}, []string{"eu", "us", "ap"}, oldKey)
	for _, n := range nodes {
		n.start()
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	keyFile := nodes[0].keyFile // shared by the three, as one file deployed everywhere

	register(t, nodes[0], "alice", "alice-password")
	var oldToken string
	waitFor(t, 10*time.Second, "alice's account on us-1", func() bool {
		st, tok := login(nodes[1], "alice", "alice-password")
		oldToken = tok
		return st == http.StatusCreated
	})
	for _, n := range nodes {
		waitFor(t, 10*time.Second, "three members alive on "+n.name, func() bool { return len(n.aliveMembers(oldToken)) == 3 })
	}

	// Watch membership throughout: every node, every 100ms, must list the three alive.
	var bad atomic.Value // string: the first thing seen that was not whole
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, n := range nodes {
				for _, other := range nodes {
					if s := n.memberStatus(oldToken, other.name); s != "alive" && bad.Load() == nil {
						bad.Store(n.name + " saw " + other.name + " as " + strings.TrimSpace(s+" (absent?)"))
					}
				}
			}
		}
	})
	watched := func() {
		t.Helper()
		if b := bad.Load(); b != nil {
			t.Fatalf("the cluster did not stay whole: %s", b)
		}
	}
	defer func() { close(stop); wg.Wait() }()

	reloaded := func(n *clNode) int { return strings.Count(n.logText(), "cluster keys reloaded") }
	step := func(name string, keys ...string) {
		t.Helper()
		if err := os.WriteFile(keyFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			before := reloaded(n)
			n.signal(syscall.SIGHUP)
			waitFor(t, 10*time.Second, name+": "+n.name+" to reload its keys", func() bool { return reloaded(n) > before })
		}
		user := strings.ReplaceAll(name, " ", "")
		register(t, nodes[len(user)%3], user, user+"-password")
		for _, n := range nodes {
			waitFor(t, 15*time.Second, name+": "+user+"'s account on "+n.name, func() bool {
				st, _ := login(n, user, user+"-password")
				return st == http.StatusCreated
			})
			if st, body := call("GET", n.url("/v1/sessions/current"), oldToken, nil); st != http.StatusOK {
				t.Fatalf("%s: the token issued before the rotation on %s: status %d %v, want 200", name, n.name, st, body)
			}
		}
		watched()
		t.Logf("%s: done", name)
	}
	step("addnew", oldKey, newKey)
	step("newfirst", newKey, oldKey)
	step("removeold", newKey)
	syncWith := func(key string) error { return syncCall(nodes[0].syn, key) }
	if err := syncWith(newKey); err != nil {
		t.Errorf("sync client with the new key: %v, want accepted", err)
	}
	if err := syncWith(oldKey); err == nil {
		t.Errorf("sync client with only the old key: accepted, want refused")
	}
	watched()
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close

	// A restart after the removal keeps the retired token key (in --data).
	nodes[1].kill9()
	nodes[1].start()
	waitFor(t, 30*time.Second, "us-1 ready after restart", nodes[1].ready)
	if st, body := call("GET", nodes[1].url("/v1/sessions/current"), oldToken, nil); st != http.StatusOK {
		t.Errorf("the token issued before the rotation on us-1 restarted after it: status %d %v, want 200", st, body)
	}
	_, newToken := login(nodes[0], "alice", "alice-password")
	waitFor(t, 20*time.Second, "three members alive after the restart", func() bool { return len(nodes[0].aliveMembers(newToken)) == 3 })

	// A node started with only the retired key stays out.
	stale := prepareCluster(t, []string{"stale"}, []string{"eu"}, oldKey)[0]
	stale.join = nodes[0].gossip
	stale.start()
	waitFor(t, 30*time.Second, "the stale node's joins to fail twice", func() bool {
		return strings.Count(stale.logText(), "join failed; retrying") >= 2
	})
	for _, n := range nodes {
		if s := n.memberStatus(newToken, "stale"); s != "" {
			t.Errorf("%s lists the node with only the retired key as %q, want it absent", n.name, s)
		}
	}
	if st, _ := login(stale, "alice", "alice-password"); st != http.StatusUnauthorized {
		t.Errorf("login to the stale node: status %d, want 401 (nothing reached it)", st)
	}
}

// syncCall makes one request to the sync server at addr as a peer holding cluster key
// key (base64) would, and returns the error if the server refuses it. The identity is
// derived as the node derives it (edge/keys.go): HKDF-SHA256 of the key for
// "sessiond/sync/v1", an ed25519 seed.
func syncCall(addr, key string) error {
	ck, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return err
	}
	seed, err := hkdf.Key(sha256.New, ck, nil, "sessiond/sync/v1", 32)
	if err != nil {
		return err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, // #nosec G402 -- a test client; the server is what is tested
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
	}}}
	// An empty digest request: a server that accepts the peer answers 400 (invalid
	// message); one that refuses it fails the handshake or answers 403.
	resp, err := hc.Post("https://"+addr+"/sync/v1/digest", "application/octet-stream", bytes.NewReader(nil))
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		return errForbidden
	}
	return nil
}

var errForbidden = &httpError{http.StatusForbidden}

type httpError struct{ status int }

func (e *httpError) Error() string { return http.StatusText(e.status) }

// TestSyncProtocolMaxFlag: --test-sync-protocol-max is a test hook, and refuses a version
// this build does not speak.
func TestSyncProtocolMaxFlag(t *testing.T) {
	base := []string{"--data", t.TempDir(), "--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--sync", "127.0.0.1:0"}
	if _, errOut, code := runBin(t, nil, append(base, "--test-sync-protocol-max", "5")...); code != 2 || !strings.Contains(errOut, "needs --enable-test-hooks") {
		t.Errorf("without --enable-test-hooks: exit %d, stderr %q; want 2 and a hint", code, errOut)
	}
	for _, v := range []string{"4", "99", "300"} {
		_, errOut, code := runBin(t, nil, append(base, "--enable-test-hooks", "--test-sync-protocol-max", v)...)
		if code == 0 || !strings.Contains(errOut, v) {
			t.Errorf("--test-sync-protocol-max %s: exit %d, stderr %q; want a failure naming it", v, code, errOut)
		}
	}
}
