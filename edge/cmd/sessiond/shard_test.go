package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
)

// shardUser is a user of the sharded cluster test, with the bookmark of its latest
// answer (sent back with every request, as a client library would).
type shardUser struct {
	name, password, token, bookmark string
	id                              string
	cart                            string
	sent                            []string // bodies of the messages it sent, in order
}

// shardReply is one answer: status, the serving and forwarding nodes, the decoded body.
type shardReply struct {
	status            int
	servedBy, fwdBy   string
	body              map[string]any
	transportFailures int
	sentBookmark      string
}

// do sends a request as u to node n, keeps the answer's bookmark, and retries a transport
// failure or a 503 a few times (a node may be going down under it; a client would retry).
func (u *shardUser) do(t *testing.T, n *clNode, method, path string, body any) shardReply {
	t.Helper()
	var rep shardReply
	for attempt := range 5 {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, n.url(path), rd)
		req.Header.Set("Content-Type", "application/json")
		if u.token != "" {
			req.Header.Set("Authorization", "Bearer "+u.token)
		}
		if u.bookmark != "" {
			req.Header.Set("X-Sessiond-Bookmark", u.bookmark)
		}
		rep.sentBookmark = u.bookmark
		resp, err := clClient.Do(req)
		if err != nil {
			rep.transportFailures++
			time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
			continue
		}
		rep.status, rep.servedBy, rep.fwdBy = resp.StatusCode, resp.Header.Get("X-Served-By"), resp.Header.Get("X-Sessiond-Forwarded-By")
		rep.body = nil
		_ = json.NewDecoder(resp.Body).Decode(&rep.body)
		resp.Body.Close()
		if b := resp.Header.Get("X-Sessiond-Bookmark"); b != "" {
			u.bookmark = b
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			time.Sleep(time.Duration(max(ra, 1)) * 200 * time.Millisecond)
			continue
		}
		return rep
	}
	return rep
}

// TestShardedCluster runs three regions of three nodes with --replicas 2: every key is on
// two nodes of each region. Every user is readable through every node (a node that does
// not hold the user forwards to one that does, and says so); a node killed with SIGKILL
// leaves every read and write working; a node added takes over part of the data, which
// moves to it with nothing lost.
func TestShardedCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	key := strings.TrimSpace(runKeygen(t))
	names := []string{"eu-1", "eu-2", "eu-3", "us-1", "us-2", "us-3", "ap-1", "ap-2", "ap-3"}
	regions := []string{"eu", "eu", "eu", "us", "us", "us", "ap", "ap", "ap"}
	nodes := prepareCluster(t, names, regions, key)
	for _, n := range nodes {
		n.extra = append(n.extra, "--replicas", "2")
		n.start()
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	byName := map[string]*clNode{}
	var members []placement.Member
	for _, n := range nodes {
		byName[n.name] = n
		members = append(members, placement.Member{Name: n.name, Region: n.region})
	}
	// Placement ranks members by name, so the test can tell who holds what.
	holdersOf := func(ms []placement.Member, region string, p int) []string {
		var out []string
		for _, m := range placement.New(ms, 2).Owners(region, p) {
			out = append(out, m.Name)
		}
		return out
	}

	users := make([]*shardUser, 12)
	for i := range users {
		u := &shardUser{name: fmt.Sprintf("shard%02d", i), password: fmt.Sprintf("password-%02d", i)}
		users[i] = u
		entry := nodes[i%len(nodes)]
		if r := u.do(t, entry, "POST", "/v1/users", map[string]any{"username": u.name, "password": u.password}); r.status != http.StatusCreated {
			t.Fatalf("register %s on %s: %d %v", u.name, entry.name, r.status, r.body)
		}
		waitFor(t, 10*time.Second, "all nine members alive on "+entry.name, func() bool {
			r := u.do(t, entry, "POST", "/v1/sessions", map[string]any{"username": u.name, "password": u.password})
			if r.status != http.StatusCreated {
				return false
			}
			u.token, _ = r.body["token"].(string)
			sess, _ := r.body["session"].(map[string]any)
			u.id, _ = sess["user_id"].(string)
			return true
		})
	}
	token := users[0].token
	// placed waits until every node of live sees want members alive, each holding its
	// share of the partitions (none is still joining): until then a node's placement may
	// differ from the test's, and it serves what it holds by its own.
	placed := func(live []*clNode, want int) {
		t.Helper()
		waitFor(t, 60*time.Second, fmt.Sprintf("every node to see %d members alive, each holding partitions", want), func() bool {
			for _, n := range live {
				_, info := call("GET", n.url("/v1/cluster"), token, nil)
				ms, _ := info["members"].([]any)
				alive := 0
				for _, m := range ms {
					if mm, _ := m.(map[string]any); mm["status"] == "alive" {
						if mm["partitions"] == nil {
							return false
						}
						alive++
					}
				}
				if alive != want {
					return false
				}
			}
			return true
		})
	}
	placed(nodes, 9)

	// Each user edits its session through one node and reads it back through every node.
	// checkReads checks that every user reads its latest write through every live node,
	// served by a holder: the node asked, or one it forwarded to, by one of the placements
	// given (membership may be changing).
	checkReads := func(live []*clNode, placements ...[]placement.Member) {
		t.Helper()
		for i, u := range users {
			u.cart = fmt.Sprintf("cart-%d-%d", i, time.Now().UnixNano())
			entry := live[i%len(live)]
			if r := u.do(t, entry, "PATCH", "/v1/sessions/current", map[string]any{"data": map[string]any{"cart": u.cart}}); r.status != http.StatusOK {
				t.Fatalf("patch %s via %s: %d %v", u.name, entry.name, r.status, r.body)
			}
			p := crdt.IDPartition(u.id)
			for _, n := range live {
				r := u.do(t, n, "GET", "/v1/sessions/current", nil)
				if r.status != http.StatusOK {
					t.Fatalf("read %s via %s: %d %v (transport failures %d)", u.name, n.name, r.status, r.body, r.transportFailures)
				}
				sess, _ := r.body["session"].(map[string]any)
				data, _ := sess["data"].(map[string]any)
				if data["cart"] != u.cart {
					t.Errorf("read %s via %s (served by %s): cart %v, want %q (bookmark sent %q)", u.name, n.name, r.servedBy, data["cart"], u.cart, r.sentBookmark)
				}
				var seen [][]string
				fits := slices.ContainsFunc(placements, func(ms []placement.Member) bool {
					holders := holdersOf(ms, n.region, p)
					seen = append(seen, holders)
					if slices.Contains(holders, n.name) {
						return r.servedBy == n.name && r.fwdBy == ""
					}
					return r.fwdBy == n.name
				})
				if !fits {
					t.Errorf("read of %s via %s served by %s, forwarded by %q; holders in %s: %v", u.name, n.name, r.servedBy, r.fwdBy, n.region, seen)
				}
			}
		}
	}
	checkReads(nodes, members)

	// Messages between every pair of neighbours, sent through a node that holds neither.
	send := func(live []*clNode) {
		t.Helper()
		for i, u := range users {
			to := users[(i+1)%len(users)]
			body := fmt.Sprintf("from %s #%d", u.name, len(u.sent))
			entry := live[(i*5+1)%len(live)]
			if r := u.do(t, entry, "POST", "/v1/messages", map[string]any{"to": to.name, "body": body}); r.status != http.StatusCreated {
				t.Fatalf("send %s → %s via %s: %d %v", u.name, to.name, entry.name, r.status, r.body)
			}
			u.sent = append(u.sent, body)
		}
	}
	checkMessages := func(live []*clNode) {
		t.Helper()
		for i, u := range users {
			from := users[(i+len(users)-1)%len(users)]
			for _, n := range live {
				// Another user's messages are eventual (u's bookmark does not name them):
				// they arrive, in order, and nothing is lost.
				var got []string
				waitFor(t, 10*time.Second, fmt.Sprintf("%s's messages to %s via %s", from.name, u.name, n.name), func() bool {
					r := u.do(t, n, "GET", "/v1/messages?with="+from.name, nil)
					if r.status != http.StatusOK {
						t.Fatalf("%s reads its conversation with %s via %s: %d %v", u.name, from.name, n.name, r.status, r.body)
					}
					got = nil
					ms, _ := r.body["messages"].([]any)
					for _, m := range ms {
						mm, _ := m.(map[string]any)
						if mm["from"] == from.name {
							got = append(got, fmt.Sprint(mm["body"]))
						}
					}
					return len(got) >= len(from.sent)
				})
				if !slices.Equal(got, from.sent) {
					t.Errorf("%s's conversation with %s via %s: %q, want %q", u.name, from.name, n.name, got, from.sent)
				}
			}
		}
	}
	send(nodes)
	checkMessages(nodes)

	// The live stream through a node that does not hold its user: forwarded, and events
	// flow through it as they happen.
	streamer, sender := users[3], users[4]
	var via *clNode
	for _, n := range nodes {
		if !slices.Contains(holdersOf(members, n.region, crdt.IDPartition(streamer.id)), n.name) {
			via = n
			break
		}
	}
	req, _ := http.NewRequest("GET", via.url("/v1/messages/stream"), nil)
	req.Header.Set("Authorization", "Bearer "+streamer.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Sessiond-Forwarded-By") != via.name {
		t.Fatalf("stream via %s: status %d, forwarded by %q", via.name, resp.StatusCode, resp.Header.Get("X-Sessiond-Forwarded-By"))
	}
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- line
			}
		}
		close(events)
	}()
	body := fmt.Sprintf("live from %s", sender.name)
	if r := sender.do(t, nodes[len(nodes)-1], "POST", "/v1/messages", map[string]any{"to": streamer.name, "body": body}); r.status != http.StatusCreated {
		t.Fatalf("send to the streamer: %d %v", r.status, r.body)
	}
	select {
	case ev := <-events:
		if !strings.Contains(ev, body) {
			t.Errorf("stream event %s, want the message %q", ev, body)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no stream event through %s within 10s", via.name)
	}
	resp.Body.Close()

	// The cluster view shows each member's share of the partitions.
	st, info := call("GET", nodes[0].url("/v1/cluster"), token, nil)
	pl, _ := info["placement"].(map[string]any)
	if st != http.StatusOK || pl == nil || pl["replicas"] != float64(2) || pl["holds"].(float64) < 2000 || pl["holds"].(float64) > 3500 {
		t.Errorf("GET /v1/cluster: %d, placement %v; want replicas 2 and about 2731 of 4096 partitions held", st, pl)
	}
	for _, m := range info["members"].([]any) {
		if mm := m.(map[string]any); mm["status"] == "alive" && mm["partitions"] == nil {
			t.Errorf("member %v has no share of partitions", mm["name"]) // placed waited for it
		}
	}

	// SIGKILL a node: every read and write still succeeds through the others.
	dead := byName["eu-2"]
	dead.kill9()
	var live []*clNode
	for _, n := range nodes {
		if n != dead {
			live = append(live, n)
		}
	}
	send(live)
	var withoutDead []placement.Member
	for _, m := range members {
		if m.Name != dead.name {
			withoutDead = append(withoutDead, m)
		}
	}
	checkReads(live, members, withoutDead) // before or after failure detection; forwards skip the dead
	checkMessages(live)

	// The region settles on the failure before a node is added: every node sees eu-2
	// failed (then removed), and eu-1 and eu-3, the two left in eu, hold every partition of it (two
	// replicas) and have pulled eu-2's share, so both store the same keys, all of eu's.
	// Were eu-4 to join first, it would take eu-2's share in eu-2's stead: nobody would
	// give it partitions, and nothing would be handed off or dropped (placement moves
	// only what it must).
	for _, n := range live {
		waitFor(t, 30*time.Second, "eu-2 failed on "+n.name, func() bool { return n.memberStatus(token, "eu-2") == "failed" })
	}
	// Each user writes through eu-1 and eu-3, which now hold every partition of eu: each
	// stamps a write of its own into every user's session, so the partitions that move to
	// eu-4 below carry writes of the node that gives them.
	for _, u := range users {
		for _, n := range []*clNode{byName["eu-1"], byName["eu-3"]} {
			if r := u.do(t, n, "PATCH", "/v1/sessions/current", map[string]any{"data": map[string]any{"via-" + n.name: u.name}}); r.status != http.StatusOK || r.servedBy != n.name {
				t.Fatalf("patch %s via %s: %d, served by %s: %v", u.name, n.name, r.status, r.servedBy, r.body)
			}
		}
	}
	// eu-2's machine is lost: the operator removes it for good (sessiond members remove),
	// so that no node keeps writes of its own for it (handoff waits for failed holders,
	// which may come back). A live member or an unknown name is refused.
	removeMember := func(name string) (string, error) {
		out, err := exec.Command(clBuild(t), "members", "remove", name, "--http", byName["eu-1"].url(""),
			"--cluster-key-file", byName["eu-1"].keyFile).CombinedOutput()
		return string(out), err
	}
	for name, want := range map[string]string{"eu-3": "eu-3 is alive", "eu-9": `no member "eu-9"`} {
		if out, err := removeMember(name); err == nil || !strings.Contains(out, want) {
			t.Errorf("sessiond members remove %s: %v, %q; want a failure saying %q", name, err, out, want)
		}
	}
	if out, err := removeMember("eu-2"); err != nil || !strings.Contains(out, "eu-2 is left") {
		t.Fatalf("sessiond members remove eu-2: %v, %q", err, out)
	}
	for _, n := range live {
		// Listed removed: its node ID's record reached every node.
		waitFor(t, 30*time.Second, "eu-2 removed on "+n.name, func() bool { return n.memberStatus(token, "eu-2") == "removed" })
	}
	placed(live, 8)
	waitFor(t, 60*time.Second, "eu-1 and eu-3 to store the same keys, all of eu's", func() bool {
		k1, k3 := storedKeys(t, byName["eu-1"]), storedKeys(t, byName["eu-3"])
		return k1 > 0 && k1 == k3
	})

	// Add a node to eu: part of the region's data moves to it, with nothing lost.
	extra := prepareCluster(t, []string{"eu-4"}, []string{"eu"}, key)[0]
	extra.keyFile = nodes[0].keyFile
	extra.join = nodes[0].gossip
	extra.extra = append(extra.extra, "--replicas", "2")
	extra.start()
	waitFor(t, 30*time.Second, "eu-4 ready", extra.ready)
	live = append(live, extra)
	var ms2 []placement.Member
	for _, n := range live {
		ms2 = append(ms2, placement.Member{Name: n.name, Region: n.region})
	}
	waitFor(t, 30*time.Second, "eu-4 alive on eu-1", func() bool {
		return byName["eu-1"].memberStatus(token, "eu-4") == "alive"
	})
	waitFor(t, 30*time.Second, "eu-4 to hold data", func() bool { return storedKeys(t, extra) > 0 })
	placed(live, 9)
	send(live)
	checkReads(live, ms2)
	checkMessages(live)
	// Keys moved off the nodes that gave partitions to eu-4: once handoff settles, no node
	// stores keys it does not hold, and each of eu-1 and eu-3 that gave eu-4 a user's
	// partition dropped keys (once it saw eu-4 hold them: eu-4 itself keeps what it caught
	// up on).
	gave := map[string]bool{} // eu-1 or eu-3, when it no longer holds some user's partition
	for _, u := range users {
		for _, name := range []string{"eu-1", "eu-3"} {
			if !slices.Contains(holdersOf(ms2, "eu", crdt.IDPartition(u.id)), name) {
				gave[name] = true
			}
		}
	}
	if len(gave) == 0 {
		t.Fatalf("neither eu-1 nor eu-3 gives eu-4 a user's partition: the test's users do not show handoff")
	}
	var dropped float64
	var moving []string // each node's latest "moving", for the failure message
	defer func() {
		if t.Failed() {
			t.Logf("moving, as each node last reported it: %v; expected drops on %v", moving, slices.Sorted(maps.Keys(gave)))
		}
	}()
	waitFor(t, 90*time.Second, "handoff to settle on every node, with keys dropped by the nodes that gave eu-4 partitions", func() bool {
		dropped, moving = 0, moving[:0]
		settled := true
		for _, n := range live {
			_, info := call("GET", n.url("/v1/cluster"), token, nil)
			pl, _ := info["placement"].(map[string]any)
			mv, _ := pl["moving"].(map[string]any)
			moving = append(moving, fmt.Sprintf("%s=%v", n.name, mv))
			if mv == nil || mv["keys"] != float64(0) || (gave[n.name] && mv["dropped"] == float64(0)) {
				settled = false
				continue
			}
			dropped += mv["dropped"].(float64)
		}
		return settled
	})
	for _, n := range live {
		t.Logf("%s stores %.0f keys", n.name, storedKeys(t, n))
	}
	t.Logf("%.0f keys handed off and dropped", dropped)

	// eu-2 is started again with its old data, which the operator is told never to do:
	// its node ID was recorded removed, so the others refuse its sync requests, and it
	// stops at once, saying why (exit status 1). The others still list it removed.
	before := storedKeys(t, byName["eu-1"])
	dead.start()
	select {
	case <-dead.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("the removed eu-2, started again with its data, still runs after 60s")
	}
	if code := dead.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(dead.logText(), "removed from the cluster for good") {
		t.Errorf("the removed eu-2 exited with status %d; want 1 and a log saying it was removed for good:\n%s", code, dead.logText())
	}
	refused := false // by its ID, before it learned from the record that it was removed
	for _, n := range live {
		refused = refused || strings.Contains(n.logText(), "refused a request of a node removed from the cluster for good")
		if st := n.memberStatus(token, "eu-2"); st != "removed" {
			t.Errorf("%s lists the returned eu-2 %q, want removed", n.name, st)
		}
	}
	if !refused {
		t.Error("no node logged refusing the returned eu-2's sync requests")
	}
	// The returned eu-2 brought eu-1 nothing. (eu-1 may still drop a few keys meanwhile,
	// in a handoff round after the one that reported it settled: CI once saw 72 → 63, with
	// a round that dropped 9 keys two seconds after the one that dropped 12.)
	if after := storedKeys(t, byName["eu-1"]); after > before {
		t.Errorf("eu-1 stored %.0f keys before eu-2 returned and %.0f after", before, after)
	}
}

// storedKeys reads sessiond_stored_keys from n's metrics.
func storedKeys(t *testing.T, n *clNode) float64 {
	resp, err := clClient.Get(n.url("/metrics"))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "sessiond_stored_keys "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}
