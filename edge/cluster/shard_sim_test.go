package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
	"github.com/sessiond/sessiond/functions"
)

// table returns the placement of the live nodes, as every node computes it once
// membership has settled.
func (c *testCluster) table() *placement.Table {
	var ms []placement.Member
	for _, i := range c.alive() {
		if p := c.nodes[i].Peer(); !p.Joining {
			ms = append(ms, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
		}
	}
	return placement.New(ms, c.cfg.replicas)
}

// checkPlaced waits until every acknowledged write is on every live node that holds one
// of its key's homes, in every region, with the winning state — and, when settled, until
// no node stores a key it does not hold (handoff done) — then reports what each node
// stores: what it holds, and keys it keeps without holding them (extra: a write it
// accepted or received for others). It returns the extra keys per node.
func (c *testCluster) checkPlaced(t testing.TB, within time.Duration, settled bool) map[int]int {
	t.Helper()
	ctx := context.Background()
	tab := c.table()
	start := time.Now()
	var extra map[int]int
	waitFor(t, within, func() (bool, string) {
		want := c.model.expected(c.nodes[0].Now())
		extra = map[int]int{}
		for _, i := range c.alive() {
			n := c.nodes[i]
			got, err := state(ctx, n.DB())
			if err != nil {
				return false, fmt.Sprintf("%s: %v", n.name, err)
			}
			id := n.Peer().ID
			for key, enc := range want {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					continue
				}
				if g, ok := got[key]; !ok || string(g) != string(enc) {
					return false, fmt.Sprintf("%s holds %s but has %s, want %s", n.name, key, describeOr(g, ok), describe(enc))
				}
			}
			for key := range got {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					extra[i]++
				}
			}
			if settled && extra[i] > 0 {
				return false, fmt.Sprintf("%s still stores %d keys it does not hold", n.name, extra[i])
			}
		}
		return true, ""
	})
	want := c.model.expected(c.nodes[0].Now())
	var lines []string
	for _, i := range c.alive() {
		n := c.nodes[i]
		st, _ := state(ctx, n.DB())
		lines = append(lines, fmt.Sprintf("%s/%s: %d keys (%d of them not its own), share %d of %d partitions (ideal %.0f)",
			n.name, n.region, len(st), extra[i], tab.Share(n.Peer().ID), crdt.Partitions, tab.Ideal(n.region)))
	}
	c.logf("placed in %s: %d keys acknowledged\n  %s", time.Since(start).Round(time.Millisecond), len(want), strings.Join(lines, "\n  "))
	return extra
}

func describeOr(enc []byte, ok bool) string {
	if !ok {
		return "nothing"
	}
	return describe(enc)
}

// ownerIn returns a live node of region that holds partition p.
func ownerIn(tab *placement.Table, c *testCluster, region string, p int) int {
	for _, m := range tab.Owners(region, p) {
		for _, i := range c.alive() {
			if c.nodes[i].Peer().ID == m.ID {
				return i
			}
		}
	}
	return -1
}

// TestSimShardedPlacement: two regions of three nodes, each partition on two nodes per
// region. Users register, sign in, edit their sessions and message each other on nodes
// that hold their records; every write ends up on exactly the nodes that hold its key's
// homes, in both regions, and nowhere else.
func TestSimShardedPlacement(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	c := newTestCluster(t, 6, []string{"eu", "us"}, withReplicas(2), withSeed(seed))
	w := newWorkload(c, rng, seed)
	tab := c.table()
	ctx := context.Background()

	var sessions []*simSession
	for k := range 30 {
		name := fmt.Sprintf("user%d", k)
		region := []string{"eu", "us"}[k%2]
		i := ownerIn(tab, c, region, crdt.NamePartition(name))
		a := mustRegister(t, w, i, name)
		s := mustLogin(t, w, i, a)
		_, err := c.nodes[i].API().sessions.PatchData(ctx, principal(s), functions.DataPatch{
			Set: map[string]json.RawMessage{"cart": json.RawMessage(fmt.Sprintf(`"%d items"`, k))}})
		mustOK(t, "patch", err)
		sessions = append(sessions, s)
	}
	// Messages between users placed apart: sent on a node that holds both (the sender's
	// node looks the recipient's name up locally).
	sent := 0
	for _, s := range sessions {
		to := sessions[rng.IntN(len(sessions))].acc
		homes := []int{crdt.IDPartition(s.acc.id), crdt.NamePartition(to.username)}
		for _, i := range c.alive() {
			if tab.Owns(c.nodes[i].Peer().ID, homes[0]) && tab.Owns(c.nodes[i].Peer().ID, homes[1]) {
				w.sendOn(i, s, to)
				sent++
				break
			}
		}
	}
	t.Logf("%d messages sent", sent)
	if sent == 0 {
		t.Fatalf("no node holds both partitions of any pair: placement is not spreading")
	}
	extra := c.checkPlaced(t, 30*time.Second, false)
	for i, n := range extra {
		if n > 0 {
			t.Errorf("%s keeps %d keys it does not hold: every write was made on a holder", c.nodes[i].name, n)
		}
	}
	// Every node stores a part, not everything.
	want := c.model.expected(c.nodes[0].Now())
	for _, i := range c.alive() {
		st, _ := state(ctx, c.nodes[i].DB())
		if len(st) >= len(want) {
			t.Errorf("%s stores %d keys of %d: it should hold about two thirds", c.nodes[i].name, len(st), len(want))
		}
	}
	if d := slices.Sorted(func(yield func(string) bool) {
		for _, f := range w.failed {
			if !yield(fmt.Sprint(f)) {
				return
			}
		}
	}); len(d) > 0 {
		t.Errorf("workload failures: %v", w.failed)
	}
}

// AddNode starts a new node in region and adds it to every live node's peers.
func (c *testCluster) AddNode(region string) int { return c.addNode(region, false) }

// JoinNode starts a new node in region as a joining node (Config.Joining): it holds
// nothing until it has caught up, then takes its share.
func (c *testCluster) JoinNode(region string) int {
	c.t.Helper()
	i := c.addNode(region, true)
	n := c.nodes[i]
	tab := c.table()
	if s := tab.Share(n.Peer().ID); s != 0 {
		c.t.Errorf("%s holds %d partitions while joining", n.name, s)
	}
	select {
	case <-n.Rep().CaughtUp():
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not catch up within 30s", n.name)
	}
	n.Rep().Joined()
	n.joining.Store(false)
	c.logf("%s joined", n.name)
	c.updatePeers()
	return i
}

func (c *testCluster) addNode(region string, joining bool) int {
	c.t.Helper()
	n := &testNode{c: c, name: fmt.Sprintf("n%d", len(c.nodes)), region: region,
		path: filepath.Join(c.t.TempDir(), "sessiond.db")}
	n.joining.Store(joining)
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := n.start(); err != nil {
		c.t.Fatalf("start %s: %v", n.name, err)
	}
	c.logf("add %s in %s", n.name, region)
	c.updatePeers()
	return len(c.nodes) - 1
}

// writeAtHolders runs k rounds of writes, each on a node that holds what it writes: a
// registration and a login, a session edit, a message (when some node holds both sides).
func writeAtHolders(t *testing.T, c *testCluster, w *workload, rng *rand.Rand, k int) {
	t.Helper()
	ctx := context.Background()
	tab := c.table()
	regions := []string{"eu", "us"}
	known := slices.Clone(w.accounts) // settled everywhere: a partition hides newer ones
	if len(known) == 0 {
		known = w.accounts
	}
	for range k {
		name := fmt.Sprintf("user%d", w.next())
		i := ownerIn(tab, c, regions[rng.IntN(2)], crdt.NamePartition(name))
		a := mustRegister(t, w, i, name)
		s := mustLogin(t, w, i, a)
		_, err := c.nodes[i].API().sessions.PatchData(ctx, principal(s), functions.DataPatch{
			Set: map[string]json.RawMessage{"k": json.RawMessage(fmt.Sprintf(`"%d"`, w.next()))}})
		mustOK(t, "patch", err)
		to, _ := pick(rng, append(known, a))
		for _, j := range c.alive() {
			id := c.nodes[j].Peer().ID
			if c.group(i) == c.group(j) && tab.Owns(id, crdt.IDPartition(a.id)) && tab.Owns(id, crdt.IDPartition(to.id)) {
				// The session is replicated to j by push; wait for it, as a bookmark would.
				waitFor(t, 5*time.Second, func() (bool, string) {
					_, ok, err := c.nodes[j].DB().Record(ctx, crdt.SessionKey(s.id))
					return ok && err == nil, fmt.Sprintf("session %s not on %s", s.id, c.nodes[j].name)
				})
				w.sendOn(j, s, to)
				break
			}
		}
	}
}

// TestSimShardedMembership: partitions move as nodes die, return, join and lose their
// disk; new holders pull what they gain, and a node that stores what it no longer holds
// drops it only once the holders confirmed it. Nothing acknowledged is lost, and once
// movement settles every key is on exactly its holders.
func TestSimShardedMembership(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 11))
	c := newTestCluster(t, 6, []string{"eu", "us"}, withReplicas(2), withSeed(seed))
	w := newWorkload(c, rng, seed)
	w.verbose = true

	writeAtHolders(t, c, w, rng, 20)
	c.checkPlaced(t, 30*time.Second, true)

	c.Kill(0) // its partitions move to the others of its region, which pull them
	writeAtHolders(t, c, w, rng, 10)
	c.checkPlaced(t, 30*time.Second, true)

	c.Restart(0) // they move back: the others hand them over and drop them
	writeAtHolders(t, c, w, rng, 10)
	c.checkPlaced(t, 30*time.Second, true)

	c.AddNode("eu") // a newcomer takes about a third of the region's partitions
	writeAtHolders(t, c, w, rng, 10)
	c.checkPlaced(t, 30*time.Second, true)

	// A joining newcomer pulls what it will hold before it takes it: when it does, every
	// write made so far is already there, before any handoff.
	j := c.JoinNode("us")
	tab := c.table()
	want := c.model.expected(c.nodes[0].Now())
	got, err := state(context.Background(), c.nodes[j].DB())
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	for key := range want {
		if _, ok := got[key]; tab.OwnsAny(c.nodes[j].Peer().ID, crdt.KeyHomes(key).Append(nil)) && !ok {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%s took its share lacking %d of its keys: it did not catch up first", c.nodes[j].name, missing)
	}
	writeAtHolders(t, c, w, rng, 5)
	c.checkPlaced(t, 30*time.Second, true)

	c.Wipe(2) // back under its name, empty: it pulls all it holds
	c.checkPlaced(t, 30*time.Second, true)

	// A partition across both regions: each side places the partitions over the members
	// it sees, writes land on nodes that hold them by the whole cluster's placement but
	// not by their side's, and after the heal everything moves back.
	c.Partition([]int{0, 1, 2}, []int{3, 4, 5, 6})
	writeAtHolders(t, c, w, rng, 10)
	c.Heal()
	c.checkPlaced(t, 30*time.Second, true)

	var dropped int
	for _, i := range c.alive() {
		dropped += c.nodes[i].Rep().Handoff().Dropped
	}
	t.Logf("%d keys dropped after handoff; workload: %s", dropped, w.summary())
	if dropped == 0 {
		t.Errorf("no node dropped anything: partitions never moved away from a node")
	}
	if len(w.failed) > 0 {
		t.Errorf("workload failures: %v", w.failed)
	}
}

// TestSimShardedStaleThrough: a node that drops a partition (handing it off) and later
// holds it again must not believe a peer's Through from before: the peer's pushes since
// its last round with the node may have carried writes the node then dropped. Here eu's
// holder of a partition goes by an old placement (its membership frozen) and keeps
// pushing its writes to the us node that held the partition; that node hands one of
// them off to the node that took the partition over and drops it, then holds the
// partition again when that node dies. It must not answer for the dropped write until it
// has it again.
func TestSimShardedStaleThrough(t *testing.T) {
	c := newTestCluster(t, 5, []string{"us", "eu"}, withReplicas(1), withAntiEntropy(time.Hour))
	w := newWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
	ctx := context.Background()
	// n0, n2, n4 in us; n1, n3 in eu. A name whose partition n4 holds in us, and
	// another us node (B) holds without n4.
	var name string
	var p, b, e int
	for k := 0; ; k++ {
		name = fmt.Sprintf("drifter%d", k)
		p = crdt.NamePartition(name)
		e = ownerIn(c.table(), c, "us", p)
		if e == 4 {
			break
		}
	}
	cl := c.table().Owners("eu", p)
	ci := slices.IndexFunc(c.nodes, func(n *testNode) bool { return n.Peer().ID == cl[0].ID })
	c.Kill(e)
	b = ownerIn(c.table(), c, "us", p)
	t.Logf("partition %d: us holder n%d, then n%d while n%d is down; eu holder n%d", p, e, b, e, ci)
	acc := mustRegister(t, w, b, name)
	waitFor(t, 10*time.Second, func() (bool, string) {
		_, ok, err := c.nodes[ci].DB().Record(ctx, crdt.UserKey(acc.id))
		return err == nil && ok, fmt.Sprintf("the account never reached n%d", ci)
	})

	c.Freeze(ci) // from now on eu's holder believes b holds p
	c.Restart(e) // e takes p over from b
	s2 := mustLogin(t, w, ci, acc)
	key := crdt.SessionKey(s2.id)
	m, ok, err := c.nodes[ci].DB().Record(ctx, key)
	if err != nil || !ok {
		t.Fatalf("session %s not on n%d after login: %v", s2.id, ci, err)
	}
	var mark crdt.Bookmark
	mark.Add(m.Version())
	has := func(i int) bool {
		_, ok, err := c.nodes[i].DB().Record(ctx, key)
		return err == nil && ok
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		return has(b), fmt.Sprintf("n%d never got the session n%d pushed by its old placement", b, ci)
	})
	waitFor(t, 10*time.Second, func() (bool, string) {
		if err := c.nodes[b].Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		return !has(b) && has(e), fmt.Sprintf("n%d has not handed the session off to n%d", b, e)
	})

	// b holds p again. Anti-entropy is refused from now on, so the session can come back
	// only by a round that the refusal holds back.
	c.net.setRefuse(func(kind string, _ []byte) error {
		if kind == "digest" {
			return errors.New("refused by the test")
		}
		return nil
	})
	c.Kill(e)
	if !c.nodes[b].Rep().HoldsPartition(p) {
		t.Fatalf("n%d does not hold partition %d again", b, p)
	}
	// Two writes of eu's holder in a partition b holds: each push to b tells Through,
	// and once b has the second, the push of the first has been handled.
	var others []*account
	for k := 0; len(others) < 2; k++ {
		n := fmt.Sprintf("%s-other%d", name, k)
		if ownerIn(c.table(), c, "us", crdt.NamePartition(n)) == b {
			others = append(others, mustRegister(t, w, ci, n))
		}
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		_, ok, err := c.nodes[b].DB().Record(ctx, crdt.UserKey(others[1].id))
		return err == nil && ok, fmt.Sprintf("n%d never got n%d's push", b, ci)
	})
	if c.nodes[b].Rep().Covers(mark, p) && !has(b) {
		t.Fatalf("n%d answers for session %s (bookmark %v covered in partition %d) but does not hold it", b, s2.id, mark, p)
	}
	c.net.setRefuse(nil)
	waitFor(t, 10*time.Second, func() (bool, string) {
		return c.nodes[b].Rep().Covers(mark, p), fmt.Sprintf("n%d never knew it holds the session again", b)
	})
	if !has(b) {
		t.Fatalf("n%d answers for session %s (bookmark %v covered in partition %d) but does not hold it", b, s2.id, mark, p)
	}
}
