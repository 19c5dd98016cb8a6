package main_test

// Upgrades from the first release (commit cf22e35), built from this checkout's git
// history: its data directory opens in this build with nothing lost, and a three-node
// cluster of it upgrades one node at a time under a write load.

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/storage"
)

// firstRelease is the commit of the first release, whose data directories and clusters
// this build must upgrade.
const firstRelease = "cf22e35"

// preSigningKeys is the last commit before session tokens were signed with Ed25519 keys
// (EdDSA): its nodes replicate with this build's (the same sync protocol) but verify only
// HS256 tokens.
const preSigningKeys = "2e2230e"

// releaseBuild is an older build made from git history, once per test run.
type releaseBuild struct {
	once     sync.Once
	dir, bin string // the checkout and build, removed by TestMain
	skip     string
	err      error
}

var (
	releaseBuildsMu sync.Mutex
	releaseBuilds   = map[string]*releaseBuild{}
)

// removeReleaseBuilds removes the checkouts and builds of releaseBinary (TestMain).
func removeReleaseBuilds() {
	releaseBuildsMu.Lock()
	defer releaseBuildsMu.Unlock()
	for _, b := range releaseBuilds {
		if b.dir != "" {
			os.RemoveAll(b.dir)
		}
	}
}

// firstReleaseBinary builds the first release from git history once per test run. It
// skips the test when the checkout has no git history holding it (an archive, a shallow
// clone).
func firstReleaseBinary(t *testing.T) string { return releaseBinary(t, firstRelease) }

// releaseBinary builds commit from git history once per test run. It skips the test when
// the checkout has no git history holding it (an archive, a shallow clone).
func releaseBinary(t *testing.T, commit string) string {
	t.Helper()
	releaseBuildsMu.Lock()
	b, ok := releaseBuilds[commit]
	if !ok {
		b = &releaseBuild{}
		releaseBuilds[commit] = b
	}
	releaseBuildsMu.Unlock()
	b.once.Do(func() {
		root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
		if err != nil {
			b.skip = "not in a git checkout: cannot build " + commit + " to upgrade from"
			return
		}
		repo := strings.TrimSpace(string(root))
		if err := exec.Command("git", "-C", repo, "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
			b.skip = "the checkout's history lacks " + commit + " (a shallow clone?): cannot build it to upgrade from"
			return
		}
		dir, err := os.MkdirTemp("", "sessiond-"+commit+"-")
		if err != nil {
			b.err = err
			return
		}
		b.dir = dir
		archive := exec.Command("git", "-C", repo, "archive", "--format=tar", commit)
		untar := exec.Command("tar", "-x", "-C", dir)
		if untar.Stdin, err = archive.StdoutPipe(); err != nil {
			b.err = err
			return
		}
		if err := untar.Start(); err != nil {
			b.err = err
			return
		}
		var archiveErr strings.Builder
		archive.Stderr = &archiveErr
		if err := archive.Run(); err != nil {
			b.err = fmt.Errorf("git archive %s: %v: %s", commit, err, archiveErr.String())
			return
		}
		if err := untar.Wait(); err != nil {
			b.err = fmt.Errorf("untar %s: %v", commit, err)
			return
		}
		bin := filepath.Join(dir, "sessiond-"+commit)
		build := exec.Command("go", "build", "-o", bin, "./edge/cmd/sessiond")
		build.Dir = dir
		if out, err := build.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v\n%s", commit, err, out)
			return
		}
		b.bin = bin
	})
	if b.skip != "" {
		t.Skip(b.skip)
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

// stop stops n with SIGTERM and waits for it to exit.
func (n *clNode) stop() {
	n.t.Helper()
	n.signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("%s did not stop within 30s of SIGTERM", n.name)
	}
}

// TestUpgradeFromFirstRelease writes users, sessions, messages, a sign-out and an erased
// account with the first release, stops it, and starts this build on its data
// directory: the file is migrated once, and everything is there — the first release's
// tokens work, the sign-out and the erasure hold.
func TestUpgradeFromFirstRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the first release and starts real processes; skipped with -short")
	}
	old := firstReleaseBinary(t)
	n := prepareCluster(t, []string{"up"}, []string{"eu"}, base64.StdEncoding.EncodeToString(e2eKey))[0]
	n.bin, n.firstRelease = old, true
	n.start()
	waitFor(t, 30*time.Second, "the first release ready", n.ready)

	w := newWorld()
	w.populate(t, []*clNode{n}, "user", 5, 4)
	register(t, n, "leaver", userPassword("leaver"))
	_, leaver := login(n, "leaver", userPassword("leaver"))
	if st, _ := call("DELETE", n.url("/v1/sessions/current"), leaver, nil); st != http.StatusNoContent {
		t.Fatalf("sign out: %d", st)
	}
	register(t, n, "gone", userPassword("gone"))
	_, gone := login(n, "gone", userPassword("gone"))
	if st, _ := call("POST", n.url("/v1/messages"), gone, map[string]string{"to": "user0", "body": "bye"}); st != http.StatusCreated {
		t.Fatalf("message from gone: %d", st)
	}
	if st, _ := call("DELETE", n.url("/v1/users/me"), gone, nil); st != http.StatusNoContent {
		t.Fatalf("erase gone: %d", st)
	}
	if !w.holds(t, n) {
		t.Fatal("the first release does not serve what it acknowledged")
	}
	counts := storedRecords(t, n) // the first release does not export sessiond_stored_keys
	n.stop()

	n.bin, n.firstRelease = "", false
	n.start()
	waitFor(t, 30*time.Second, "this build ready on the first release's data", n.ready)
	want := fmt.Sprintf("from_format=1 to_format=%d", storage.FormatVersion)
	if c := strings.Count(n.logText(), `msg="data file migrated"`); c != 1 || !strings.Contains(n.logText(), want) {
		t.Errorf("%d migration log lines, want one %q", c, want)
	}
	if !w.holds(t, n) {
		t.Error("after the upgrade the node lacks sessions, session data or messages written by the first release")
	}
	if got := storedRecords(t, n); got != counts {
		t.Errorf("after the upgrade: %s; before: %s", got, counts)
	}
	for _, u := range w.users {
		if st, _ := login(n, u, userPassword(u)); st != http.StatusCreated {
			t.Errorf("login %s after the upgrade: %d", u, st)
		}
	}
	if st, _ := call("GET", n.url("/v1/sessions/current"), leaver, nil); st != http.StatusUnauthorized {
		t.Errorf("a token signed out before the upgrade: %d, want 401", st)
	}
	if st, _ := login(n, "gone", userPassword("gone")); st != http.StatusUnauthorized {
		t.Errorf("login of an account erased before the upgrade: %d, want 401", st)
	}
	_, tok := login(n, "user0", userPassword("user0"))
	for _, m := range conversationBodies(n, tok, "gone") {
		t.Errorf("a message of the erased account survived the upgrade: %v", m)
	}

	// Once migrated, the file opens as it is.
	n.stop()
	n.start()
	waitFor(t, 30*time.Second, "ready after a second start", n.ready)
	if c := strings.Count(n.logText(), `msg="data file migrated"`); c != 1 {
		t.Errorf("%d migration log lines after a second start, want still 1", c)
	}
	if !w.holds(t, n) {
		t.Error("after a second start the node lacks data")
	}
}

// TestRollingUpgradeFromFirstRelease upgrades a three-node cluster of the first release
// one node at a time (stop, new binary, start) while writers send messages through every
// running node. The first release accepts only its own sync protocol, so upgraded and
// old nodes may not replicate to each other meanwhile; every request to a running node
// is answered, nothing acknowledged is lost, and all converge once the last node runs
// this build; then tokens are EdDSA, and the first release's HS256 tokens still work.
func TestRollingUpgradeFromFirstRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the first release and starts real processes; skipped with -short")
	}
	old := firstReleaseBinary(t)
	nodes := prepareCluster(t, []string{"a", "b", "c"}, []string{"eu", "us", "ap"}, base64.StdEncoding.EncodeToString(e2eKey))
	for _, n := range nodes {
		n.bin, n.firstRelease = old, true
		n.start()
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	const writers = 3
	tokens := make([]string, writers)
	for i := range writers {
		u := fmt.Sprintf("wr%d", i)
		register(t, nodes[i], u, userPassword(u))
	}
	for i := range writers {
		u := fmt.Sprintf("wr%d", i)
		// Every node must know every writer's session before any node goes down.
		waitFor(t, 30*time.Second, u+" known everywhere", func() bool {
			for _, n := range nodes {
				if st, _ := login(n, u, userPassword(u)); st != http.StatusCreated {
					return false
				}
			}
			return true
		})
		_, tokens[i] = login(nodes[i], u, userPassword(u))
		tok := tokens[i]
		waitFor(t, 30*time.Second, u+"'s session everywhere", func() bool {
			for _, n := range nodes {
				if st, _ := call("GET", n.url("/v1/sessions/current"), tok, nil); st != http.StatusOK {
					return false
				}
			}
			return true
		})
	}

	var (
		down    [3]atomic.Bool // a node stopped for its upgrade: requests to it may fail
		mu      sync.Mutex
		acked   = make([][]string, writers) // bodies acknowledged per writer
		unknown = map[string]bool{}         // bodies sent to a stopping node without an answer
		failure atomic.Value
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		served  atomic.Int64
	)
	hc := &http.Client{Timeout: 10 * time.Second}
	for wi := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := fmt.Sprintf("wr%d", (wi+1)%writers)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := nodes[(wi+i)%len(nodes)]
				body := fmt.Sprintf("wr%d #%d via %s", wi, i, n.name)
				req, _ := http.NewRequest("POST", n.url("/v1/messages"), strings.NewReader(fmt.Sprintf(`{"to":%q,"body":%q}`, to, body)))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+tokens[wi])
				wasDown := down[(wi+i)%len(nodes)].Load()
				resp, err := hc.Do(req)
				if err != nil {
					if !wasDown && !down[(wi+i)%len(nodes)].Load() {
						failure.Store(fmt.Sprintf("%s, running, did not answer: %v", n.name, err))
						return
					}
					mu.Lock()
					unknown[body] = true // it may have been written before the node stopped
					mu.Unlock()
					continue
				}
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusCreated:
					mu.Lock()
					acked[wi] = append(acked[wi], body)
					mu.Unlock()
					served.Add(1)
				case wasDown || down[(wi+i)%len(nodes)].Load():
					// stopping or starting: a refusal is allowed, nothing was acknowledged
				default:
					failure.Store(fmt.Sprintf("%s answered %d", n.name, resp.StatusCode))
					return
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	progress := func(k int64) {
		t.Helper()
		from := served.Load()
		waitFor(t, 60*time.Second, fmt.Sprintf("%d more writes acknowledged", k), func() bool {
			return failure.Load() != nil || served.Load() >= from+k
		})
		if f := failure.Load(); f != nil {
			t.Fatal(f)
		}
	}
	progress(100)
	for i, n := range nodes {
		down[i].Store(true)
		n.stop()
		n.bin, n.firstRelease = "", false
		// The first upgraded node finds no peer that speaks its protocol to catch up from:
		// it serves what it has after the catch-up timeout.
		n.extra = []string{"--catch-up-timeout", "3s"}
		n.start()
		waitFor(t, 60*time.Second, n.name+" ready on this build", n.ready)
		down[i].Store(false)
		progress(100)
	}
	// Every member verifies EdDSA now: tokens are EdDSA, from every node, and work on
	// every node, as do the HS256 tokens the first release issued.
	for _, n := range nodes {
		var tok string
		waitFor(t, 30*time.Second, n.name+" to issue EdDSA tokens once every member runs this build", func() bool {
			_, tok = login(n, "wr1", userPassword("wr1"))
			return tok != "" && tokenHeader(t, tok)["alg"] == "EdDSA"
		})
		for _, o := range nodes {
			waitFor(t, 30*time.Second, "an EdDSA token from "+n.name+" to work on "+o.name, func() bool {
				st, _ := call("GET", o.url("/v1/sessions/current"), tok, nil)
				return st == http.StatusOK
			})
			if st, _ := call("GET", o.url("/v1/sessions/current"), tokens[0], nil); st != http.StatusOK {
				t.Errorf("a first-release token on %s after the upgrade: %d", o.name, st)
			}
		}
	}
	close(stop)
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatal(f)
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for wi := range writers {
		total += len(acked[wi])
	}
	t.Logf("%d messages acknowledged during the upgrade", total)
	for _, n := range nodes {
		waitFor(t, 90*time.Second, n.name+" to hold every acknowledged message", func() bool {
			for wi := range writers {
				var got []string
				for _, m := range conversationBodies(n, tokens[wi], fmt.Sprintf("wr%d", (wi+1)%writers)) {
					if m[0] == fmt.Sprintf("wr%d", wi) {
						got = append(got, m[1])
					}
				}
				have := map[string]bool{}
				for _, b := range got {
					if !slices.Contains(acked[wi], b) && !unknown[b] {
						t.Fatalf("%s holds %q, which was never sent", n.name, b)
					}
					have[b] = true
				}
				for _, b := range acked[wi] {
					if !have[b] {
						return false
					}
				}
			}
			return true
		})
	}
	waitConverged(t, nodes...)
}

// TestRollingUpgradeSigningKeys upgrades a three-node cluster of the last build before
// signing keys (preSigningKeys), which replicates with this one but verifies only HS256
// tokens, one node at a time. While an old node is a member, upgraded nodes issue HS256
// tokens, which work on the old nodes too: an upgrade logs nobody out, wherever the load
// balancer sends them. Once every node runs this build, tokens are EdDSA and the HS256
// ones issued before keep working.
func TestRollingUpgradeSigningKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an older commit and starts real processes; skipped with -short")
	}
	old := releaseBinary(t, preSigningKeys)
	nodes := prepareCluster(t, []string{"a", "b", "c"}, []string{"eu", "eu", "eu"}, base64.StdEncoding.EncodeToString(e2eKey))
	for _, n := range nodes {
		n.bin = old
		n.start()
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	register(t, nodes[0], "alice", userPassword("alice"))
	var before string
	waitFor(t, 30*time.Second, "alice's token to work everywhere", func() bool {
		_, before = login(nodes[0], "alice", userPassword("alice"))
		for _, n := range nodes {
			if st, _ := call("GET", n.url("/v1/sessions/current"), before, nil); st != http.StatusOK {
				return false
			}
		}
		return true
	})
	worksOn := func(tok string, on []*clNode, what string) {
		t.Helper()
		for _, o := range on {
			waitFor(t, 30*time.Second, what+" to work on "+o.name, func() bool {
				st, _ := call("GET", o.url("/v1/sessions/current"), tok, nil)
				return st == http.StatusOK
			})
		}
	}
	for i, n := range nodes {
		n.stop()
		n.bin = ""
		n.start()
		waitFor(t, 60*time.Second, n.name+" ready on this build", n.ready)
		if i == len(nodes)-1 {
			break
		}
		_, tok := login(n, "alice", userPassword("alice"))
		if alg := tokenHeader(t, tok)["alg"]; alg != "HS256" {
			t.Errorf("a token from upgraded %s while %s runs the older build: alg %v, want HS256", n.name, nodes[i+1].name, alg)
		}
		worksOn(tok, nodes, "a token from upgraded "+n.name)
	}
	for _, n := range nodes {
		var tok string
		waitFor(t, 30*time.Second, n.name+" to issue EdDSA tokens once every member runs this build", func() bool {
			_, tok = login(n, "alice", userPassword("alice"))
			return tok != "" && tokenHeader(t, tok)["alg"] == "EdDSA"
		})
		worksOn(tok, nodes, "an EdDSA token from "+n.name)
		if kids := jwksKids(t, n); len(kids) == 0 || kids[0] != tokenHeader(t, tok)["kid"] {
			t.Errorf("%s publishes %q; want the kid of its tokens first", n.name, kids)
		}
	}
	worksOn(before, nodes, "a token from before the upgrade")
}
