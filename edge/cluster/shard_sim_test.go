package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
)

// region. Users register, sign in, edit their sessions and message each other on nodes
// that hold their records; every write ends up on exactly the nodes that hold its key's
// homes, in both regions, and nowhere else.
func TestSimShardedPlacement(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	c := newTestCluster(t, 6, []string{"eu", "us"}, clustersim.WithReplicas(2), clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rng, seed)
	tab := c.Table()
	ctx := context.Background()

	var sessions []*clustersim.Session
	for k := range 30 {
		name := fmt.Sprintf("user%d", k)
		region := []string{"eu", "us"}[k%2]
		i := c.OwnerIn(tab, region, crdt.NamePartition(name))
		a := w.MustRegister(t, i, name)
		s := w.MustLogin(t, i, a)
		_, err := c.Nodes[i].API().Sessions.PatchData(ctx, s.Principal(), functions.DataPatch{
			Set: map[string]json.RawMessage{"cart": json.RawMessage(fmt.Sprintf(`"%d items"`, k))}})
		mustOK(t, "patch", err)
		sessions = append(sessions, s)
	}
	// Messages between users placed apart: sent on a node that holds both (the sender's
	// node looks the recipient's name up locally).
	sent := 0
	for _, s := range sessions {
		to := sessions[rng.IntN(len(sessions))].Account
		homes := []int{crdt.IDPartition(s.Account.ID), crdt.NamePartition(to.Username)}
		for _, i := range c.Alive() {
			if tab.Owns(c.Nodes[i].Peer().ID, homes[0]) && tab.Owns(c.Nodes[i].Peer().ID, homes[1]) {
				w.SendOn(i, s, to)
				sent++
				break
			}
		}
	}
	t.Logf("%d messages sent", sent)
	if sent == 0 {
		t.Fatalf("no node holds both partitions of any pair: placement is not spreading")
	}
	extra := c.CheckPlaced(t, 30*time.Second, false)
	for i, n := range extra {
		if n > 0 {
			t.Errorf("%s keeps %d keys it does not hold: every write was made on a holder", c.Nodes[i].Name, n)
		}
	}
	// Every node stores a part, not everything.
	want := c.Model.Expected(c.Nodes[0].Now())
	for _, i := range c.Alive() {
		st, _ := clustersim.State(ctx, c.Nodes[i].DB())
		if len(st) >= len(want) {
			t.Errorf("%s stores %d keys of %d: it should hold about two thirds", c.Nodes[i].Name, len(st), len(want))
		}
	}
	if d := slices.Sorted(func(yield func(string) bool) {
		for _, f := range w.Failed {
			if !yield(fmt.Sprint(f)) {
				return
			}
		}
	}); len(d) > 0 {
		t.Errorf("workload failures: %v", w.Failed)
	}
}

// writeAtHolders runs k rounds of writes, each on a node that holds what it writes: a
// registration and a login, a session edit, a message (when some node holds both sides).
func writeAtHolders(t *testing.T, c *clustersim.Cluster, w *clustersim.Workload, rng *rand.Rand, k int) {
	t.Helper()
	ctx := context.Background()
	tab := c.Table()
	regions := []string{"eu", "us"}
	known := slices.Clone(w.Accounts) // settled everywhere: a partition hides newer ones
	if len(known) == 0 {
		known = w.Accounts
	}
	for range k {
		name := fmt.Sprintf("user%d", w.Next())
		i := c.OwnerIn(tab, regions[rng.IntN(2)], crdt.NamePartition(name))
		a := w.MustRegister(t, i, name)
		s := w.MustLogin(t, i, a)
		_, err := c.Nodes[i].API().Sessions.PatchData(ctx, s.Principal(), functions.DataPatch{
			Set: map[string]json.RawMessage{"k": json.RawMessage(fmt.Sprintf(`"%d"`, w.Next()))}})
		mustOK(t, "patch", err)
		to, _ := clustersim.Pick(rng, append(known, a))
		for _, j := range c.Alive() {
			id := c.Nodes[j].Peer().ID
			if c.Group(i) == c.Group(j) && tab.Owns(id, crdt.IDPartition(a.ID)) && tab.Owns(id, crdt.IDPartition(to.ID)) {
				// The session is replicated to j by push; wait for it, as a bookmark would.
				clustersim.WaitFor(t, 5*time.Second, func() (bool, string) {
					_, ok, err := c.Nodes[j].DB().Record(ctx, crdt.SessionKey(s.ID))
					return ok && err == nil, fmt.Sprintf("session %s not on %s", s.ID, c.Nodes[j].Name)
				})
				w.SendOn(j, s, to)
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
	c := newTestCluster(t, 6, []string{"eu", "us"}, clustersim.WithReplicas(2), clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rng, seed)
	w.Verbose = true

	writeAtHolders(t, c, w, rng, 20)
	c.CheckPlaced(t, 30*time.Second, true)

	c.Kill(0) // its partitions move to the others of its region, which pull them
	writeAtHolders(t, c, w, rng, 10)
	c.CheckPlaced(t, 30*time.Second, true)

	c.Restart(0) // they move back: the others hand them over and drop them
	writeAtHolders(t, c, w, rng, 10)
	c.CheckPlaced(t, 30*time.Second, true)

	c.AddNode("eu") // a newcomer takes about a third of the region's partitions
	writeAtHolders(t, c, w, rng, 10)
	c.CheckPlaced(t, 30*time.Second, true)

	// A joining newcomer pulls what it will hold before it takes it: when it does, every
	// write made so far is already there, before any handoff.
	j := c.JoinNode("us")
	tab := c.Table()
	want := c.Model.Expected(c.Nodes[0].Now())
	got, err := clustersim.State(context.Background(), c.Nodes[j].DB())
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	for key := range want {
		if _, ok := got[key]; tab.OwnsAny(c.Nodes[j].Peer().ID, crdt.KeyHomes(key).Append(nil)) && !ok {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%s took its share lacking %d of its keys: it did not catch up first", c.Nodes[j].Name, missing)
	}
	writeAtHolders(t, c, w, rng, 5)
	c.CheckPlaced(t, 30*time.Second, true)

	c.Wipe(2) // back under its name, empty: it pulls all it holds
	c.CheckPlaced(t, 30*time.Second, true)

	// A partition across both regions: each side places the partitions over the members
	// it sees, writes land on nodes that hold them by the whole cluster's placement but
	// not by their side's, and after the heal everything moves back.
	c.Partition([]int{0, 1, 2}, []int{3, 4, 5, 6})
	writeAtHolders(t, c, w, rng, 10)
	c.Heal()
	c.CheckPlaced(t, 30*time.Second, true)

	var dropped int
	for _, i := range c.Alive() {
		dropped += c.Nodes[i].Rep().Handoff().Dropped
	}
	t.Logf("%d keys dropped after handoff; Workload: %s", dropped, w.Summary())
	if dropped == 0 {
		t.Errorf("no node dropped anything: partitions never moved away from a node")
	}
	if len(w.Failed) > 0 {
		t.Errorf("workload failures: %v", w.Failed)
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
	c := newTestCluster(t, 5, []string{"us", "eu"}, clustersim.WithReplicas(1), clustersim.WithAntiEntropy(time.Hour))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
	ctx := context.Background()
	// n0, n2, n4 in us; n1, n3 in eu. A name whose partition n4 holds in us, and
	// another us node (B) holds without n4.
	var name string
	var p, b, e int
	for k := 0; ; k++ {
		name = fmt.Sprintf("drifter%d", k)
		p = crdt.NamePartition(name)
		e = c.OwnerIn(c.Table(), "us", p)
		if e == 4 {
			break
		}
	}
	cl := c.Table().Owners("eu", p)
	ci := slices.IndexFunc(c.Nodes, func(n *clustersim.Node) bool { return n.Peer().ID == cl[0].ID })
	c.Kill(e)
	b = c.OwnerIn(c.Table(), "us", p)
	t.Logf("partition %d: us holder n%d, then n%d while n%d is down; eu holder n%d", p, e, b, e, ci)
	acc := w.MustRegister(t, b, name)
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		_, ok, err := c.Nodes[ci].DB().Record(ctx, crdt.UserKey(acc.ID))
		return err == nil && ok, fmt.Sprintf("the account never reached n%d", ci)
	})

	c.Freeze(ci) // from now on eu's holder believes b holds p
	c.Restart(e) // e takes p over from b
	s2 := w.MustLogin(t, ci, acc)
	key := crdt.SessionKey(s2.ID)
	m, ok, err := c.Nodes[ci].DB().Record(ctx, key)
	if err != nil || !ok {
		t.Fatalf("session %s not on n%d after login: %v", s2.ID, ci, err)
	}
	var mark crdt.Bookmark
	mark.Add(m.Version())
	has := func(i int) bool {
		_, ok, err := c.Nodes[i].DB().Record(ctx, key)
		return err == nil && ok
	}
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return has(b), fmt.Sprintf("n%d never got the session n%d pushed by its old placement", b, ci)
	})
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		if err := c.Nodes[b].Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		return !has(b) && has(e), fmt.Sprintf("n%d has not handed the session off to n%d", b, e)
	})

	// b holds p again. Anti-entropy is refused from now on, so the session can come back
	// only by a round that the refusal holds back.
	c.Net.SetRefuse(func(kind string, _ []byte) error {
		if kind == "digest" {
			return errors.New("refused by the test")
		}
		return nil
	})
	c.Kill(e)
	if !c.Nodes[b].Rep().HoldsPartition(p) {
		t.Fatalf("n%d does not hold partition %d again", b, p)
	}
	// Two writes of eu's holder in a partition b holds: each push to b tells Through,
	// and once b has the second, the push of the first has been handled.
	var others []*clustersim.Account
	for k := 0; len(others) < 2; k++ {
		n := fmt.Sprintf("%s-other%d", name, k)
		if c.OwnerIn(c.Table(), "us", crdt.NamePartition(n)) == b {
			others = append(others, w.MustRegister(t, ci, n))
		}
	}
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		_, ok, err := c.Nodes[b].DB().Record(ctx, crdt.UserKey(others[1].ID))
		return err == nil && ok, fmt.Sprintf("n%d never got n%d's push", b, ci)
	})
	if c.Nodes[b].Rep().Covers(mark, p) && !has(b) {
		t.Fatalf("n%d answers for session %s (bookmark %v covered in partition %d) but does not hold it", b, s2.ID, mark, p)
	}
	c.Net.SetRefuse(nil)
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return c.Nodes[b].Rep().Covers(mark, p), fmt.Sprintf("n%d never knew it holds the session again", b)
	})
	if !has(b) {
		t.Fatalf("n%d answers for session %s (bookmark %v covered in partition %d) but does not hold it", b, s2.ID, mark, p)
	}
}

// TestSimShardedOriginLeaves: a node that joined (so that every partition it holds was
// gained, and what it knows of them was taught under its placements since) keeps knowing
// it holds a write its origin pushed to it after the origin leaves, without asking
// anyone: the placement changes with the leave, and what the origin's Throughs told about
// the partitions it still holds stays true.
func TestSimShardedOriginLeaves(t *testing.T) {
	c := newTestCluster(t, 4, []string{"us", "eu"}, clustersim.WithReplicas(1), clustersim.WithAntiEntropy(time.Hour))
	j := c.JoinNode("us")
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(3, 4)), 1)
	ctx := context.Background()
	var name string
	var p, e int
	for k := 0; ; k++ {
		name = fmt.Sprintf("leaver%d", k)
		p = crdt.NamePartition(name)
		if c.OwnerIn(c.Table(), "us", p) == j {
			e = c.OwnerIn(c.Table(), "eu", p)
			break
		}
	}
	acc := w.MustRegister(t, e, name)
	m, ok, err := c.Nodes[e].DB().Record(ctx, crdt.UserKey(acc.ID))
	if err != nil || !ok {
		t.Fatalf("the account is not on n%d, where it was registered: %v", e, err)
	}
	var b crdt.Bookmark
	b.Add(m.Version())
	if b.Mark(c.Nodes[e].DB().NodeID()).IsZero() {
		t.Fatalf("the registration on n%d is not its own write: %v", e, b)
	}
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return c.Nodes[j].Rep().Covers(b, p), fmt.Sprintf("n%d never knew it holds n%d's registration in partition %d", j, e, p)
	})
	c.Kill(e)
	if !c.Nodes[j].Rep().HoldsPartition(p) {
		t.Fatalf("n%d no longer holds partition %d", j, p)
	}
	if !c.Nodes[j].Rep().Covers(b, p) {
		t.Errorf("n%d forgot it holds n%d's registration in partition %d once n%d left", j, e, p, e)
	}
}

// TestSimShardedTakeOverAfterOriginFailed: the node that takes a partition over from a
// failed one meets a bookmark of the failed node's write in it by pulling the partition
// from its holder in another region — which joined with the others, so that no node
// ever held the partition but as one it gained, known only from what the failed node's
// pushes told it.
func TestSimShardedTakeOverAfterOriginFailed(t *testing.T) {
	c := newTestCluster(t, 1, []string{"eu"}, clustersim.WithReplicas(1), clustersim.WithAntiEntropy(time.Hour))
	// Three nodes join at once, as a cluster's nodes do when they start together: the
	// seed, n0, holds everything until they have caught up, then only its share of eu.
	joiners := []int{c.StartJoining("us"), c.StartJoining("us"), c.StartJoining("eu")}
	for _, i := range joiners {
		select {
		case <-c.Nodes[i].Rep().CaughtUp():
		case <-time.After(30 * time.Second):
			t.Fatalf("n%d did not catch up", i)
		}
	}
	e := joiners[2]
	c.MarkJoined(e) // eu's share first: n0 gives it up before the us nodes hold theirs
	c.MarkJoined(joiners[0])
	c.MarkJoined(joiners[1])
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(5, 6)), 1)
	ctx := context.Background()
	var name string
	var p, u int
	for k := 0; ; k++ {
		name = fmt.Sprintf("taken%d", k)
		p = crdt.NamePartition(name)
		if c.OwnerIn(c.Table(), "eu", p) == e {
			u = c.OwnerIn(c.Table(), "us", p)
			break
		}
	}
	acc := w.MustRegister(t, e, name)
	m, ok, err := c.Nodes[e].DB().Record(ctx, crdt.UserKey(acc.ID))
	if err != nil || !ok {
		t.Fatalf("the account is not on n%d: %v", e, err)
	}
	var b crdt.Bookmark
	b.Add(m.Version())
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return c.Nodes[u].Rep().Covers(b, p), fmt.Sprintf("n%d never knew it holds n%d's registration", u, e)
	})
	c.Kill(e)
	if taker := c.OwnerIn(c.Table(), "eu", p); taker != 0 {
		t.Fatalf("partition %d went to n%d in eu, want n0", p, taker)
	}
	how, err := c.Nodes[0].Rep().Await(ctx, b, p, 0, 10*time.Second)
	if err != nil {
		t.Fatalf("n0, holding partition %d after n%d failed, did not meet a bookmark of n%d's write there: %v", p, e, e, err)
	}
	if _, ok, err := c.Nodes[0].DB().Record(ctx, crdt.UserKey(acc.ID)); err != nil || !ok {
		t.Errorf("n0 met the bookmark (%v) without holding the account: %v", how, err)
	}
}
