package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/edge/cluster/placement"
)

// TestSimHandoffFloorAfterGain: a node's pushes vouch (Through) for every write of its
// own in the partitions the receiver holds. A write it handed off and dropped went to
// the partition's holders of the day, not to a node that gains the partition later (its
// region's holder failed): that node must not vouch for it until something that holds it
// teaches it so — and then it must get it.
//
// eu holds n0, n2 and n4, ap n1 and n3, one holder per partition and region. n0 writes
// a key k of a partition p that n2 holds in eu (n4 without n2), hands it off and drops
// it. Then eu is cut off from ap and n2 fails: n4 gains p, and n0's pushes to n4, in
// n4's new era, tell Throughs past k's write. AfterRestart: n0 restarts after the drop
// (its floors are saved). HolderRestarts: ap's holder of p, which holds k, restarts
// while eu is cut off, so that it too learns n0's floor afresh (found by an outside
// review: the two holders then waited for each other for good).
func TestSimHandoffFloorAfterGain(t *testing.T) {
	t.Run("Running", func(t *testing.T) { testSimHandoffFloorAfterGain(t, false, false) })
	t.Run("AfterRestart", func(t *testing.T) { testSimHandoffFloorAfterGain(t, true, false) })
	t.Run("HolderRestarts", func(t *testing.T) { testSimHandoffFloorAfterGain(t, false, true) })
}

func testSimHandoffFloorAfterGain(t *testing.T, restart, holderRestarts bool) {
	c := newTestCluster(t, 5, []string{"eu", "ap"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	n0, n4 := c.Nodes[0], c.Nodes[4]
	for i, region := range []string{"eu", "ap", "eu", "ap", "eu"} {
		if got := c.Nodes[i].Region; got != region {
			t.Fatalf("n%d is in %s, want %s", i, got, region)
		}
	}
	ctx := context.Background()
	tab := c.Table()
	var without2 []placement.Member
	for _, i := range []int{0, 1, 3, 4} {
		p := c.Nodes[i].Peer()
		without2 = append(without2, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
	}
	after := placement.New(without2, 1)

	// n0 registers users until one of its new keys is n2's in eu, and n4's without n2.
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(7, 8)), 1)
	var k string
	for i := 0; k == "" && i < 300; i++ {
		before, err := clustersim.State(ctx, n0.DB())
		if err != nil {
			t.Fatal(err)
		}
		w.MustRegister(t, 0, fmt.Sprintf("floor%d", i))
		now, err := clustersim.State(ctx, n0.DB())
		if err != nil {
			t.Fatal(err)
		}
		for key := range now {
			homes := crdt.KeyHomes(key)
			if _, old := before[key]; old || k != "" {
				continue
			}
			if _, two := homes.Second(); two {
				continue
			}
			p := homes.First()
			if c.OwnerIn(tab, "eu", p) == 2 && c.OwnerIn(after, "eu", p) == 4 {
				k = key
			}
		}
	}
	if k == "" {
		t.Fatal("no key of n0's is n2's in eu and n4's without n2")
	}
	p := crdt.KeyHomes(k).First()
	changes, err := n0.DB().Changes(ctx, []string{k})
	if err != nil || len(changes) != 1 {
		t.Fatalf("changes of %s: %v, %d", k, err, len(changes))
	}
	var b crdt.Bookmark // n0's write that k carries
	b.Add(changes[0].Map.Version())
	if b.Mark(n0.Peer().ID).IsZero() {
		t.Fatalf("%s does not carry a write of n0's: %v", k, changes[0].Map.Version())
	}
	t.Logf("k = %s, partition %#x, write %v", k, p, b)

	// n0 hands k off to its holders (n2, and ap's) and drops it.
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		if err := n0.Rep().HandoffRound(ctx); err != nil {
			return false, fmt.Sprintf("handoff round: %v", err)
		}
		st, err := clustersim.State(ctx, n0.DB())
		if err != nil {
			return false, err.Error()
		}
		_, kept := st[k]
		return !kept, "n0 still stores " + k
	})
	if st, _ := clustersim.State(ctx, n4.DB()); st[k] != nil {
		t.Fatalf("n4 stores %s before it holds it", k)
	}
	if restart {
		c.Kill(0)
		c.Restart(0)
		n0 = c.Nodes[0]
	}

	// eu cut off from ap; n2 fails: n4 gains p.
	c.Cut([]int{0, 4}, []int{1, 2, 3})
	c.Kill(2)
	if !n4.Rep().HoldsPartition(p) {
		t.Fatalf("n4 does not hold %#x once n2 is gone", p)
	}
	// n0 registers a user in a partition q that n4 held all along, and n4 learns that it
	// holds that write: n0's pushes tell Throughs in n4's new era.
	var q int
	var latest crdt.Bookmark
	for i := 0; latest.IsZero(); i++ {
		if i == 300 {
			t.Fatal("no registration of n0's in a partition n4 held all along")
		}
		acc := w.MustRegister(t, 0, fmt.Sprintf("later%d", i))
		q = crdt.KeyHomes(crdt.UserKey(acc.ID)).First()
		if q == p || !n4.Rep().HoldsPartition(q) || c.OwnerIn(tab, "eu", q) != 4 {
			continue
		}
		m, ok, err := n0.DB().Record(ctx, crdt.UserKey(acc.ID))
		if err != nil || !ok {
			t.Fatalf("n0 lacks its own registration: %v", err)
		}
		latest.Add(m.Version())
	}
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		return n4.Rep().Covers(latest, q), fmt.Sprintf("n4 never knew it holds n0's write %v in %#x", latest, q)
	})
	st, err := clustersim.State(ctx, n4.DB())
	if err != nil {
		t.Fatal(err)
	}
	_, has := st[k]
	for _, part := range []int{p, -1} {
		if !has && n4.Rep().Covers(b, part) {
			t.Errorf("n4 vouches for n0's write %v in partition %d (-1: all it holds) but lacks %s: n0 dropped it before n4 held %#x", b, part, k, p)
		}
	}

	a := c.OwnerIn(tab, "ap", p)
	if holderRestarts {
		c.Kill(a)
		c.Restart(a)
	}
	// Once ap is back, a request naming k's write gets it: n4 fetches p from ap's holder.
	c.Heal()
	for _, i := range []int{4, a} {
		for _, want := range []crdt.Bookmark{b, latest} {
			clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
				_, err := c.Nodes[i].Rep().Await(ctx, want, p, 0, time.Second)
				return err == nil, fmt.Sprintf("n%d, a holder of %#x, does not meet n0's write %v there after the heal: %v (%s)", i, p, want, err, c.Nodes[i].Rep().DebugFloors(p))
			})
		}
	}
	if st, _ := clustersim.State(ctx, n4.DB()); st[k] == nil {
		t.Errorf("n4 met %v in %#x without holding %s", b, p, k)
	}
	if !n4.Rep().Covers(latest, q) {
		t.Errorf("n4 no longer knows it holds n0's write %v in %#x", latest, q)
	}
}

// TestSimHandoffFloorRegain: a node vouches for its own writes without asking anyone (its
// commit mark), but not for those it handed off and dropped while it did not hold their
// partition: once it holds the partition again, it must not show a client a bookmark of
// such a write met before it has the write back.
//
// eu holds n0 and n2, ap n1, one holder per partition and region. n0 writes a key k of
// a partition p that n2 holds in eu, hands it off and drops it; then n0, cut off from
// ap, takes p over when n2 fails. Restarted: n0 then restarts, still cut off (what it
// checked before is forgotten; its floors are not).
func TestSimHandoffFloorRegain(t *testing.T) {
	t.Run("Running", func(t *testing.T) { testSimHandoffFloorRegain(t, false) })
	t.Run("Restarted", func(t *testing.T) { testSimHandoffFloorRegain(t, true) })
}

func testSimHandoffFloorRegain(t *testing.T, restart bool) {
	c := newTestCluster(t, 3, []string{"eu", "ap"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	n0 := c.Nodes[0]
	if c.Nodes[2].Region != "eu" || c.Nodes[1].Region != "ap" {
		t.Fatalf("regions: n1 %s, n2 %s", c.Nodes[1].Region, c.Nodes[2].Region)
	}
	ctx := context.Background()
	tab := c.Table()
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(9, 10)), 1)
	var k string
	var b crdt.Bookmark
	for i := 0; k == "" && i < 300; i++ {
		acc := w.MustRegister(t, 0, fmt.Sprintf("regain%d", i))
		key := crdt.UserKey(acc.ID)
		homes := crdt.KeyHomes(key)
		if _, two := homes.Second(); two || c.OwnerIn(tab, "eu", homes.First()) != 2 {
			continue
		}
		m, ok, err := n0.DB().Record(ctx, key)
		if err != nil || !ok {
			t.Fatalf("n0 lacks its own %s: %v", key, err)
		}
		k = key
		b.Add(m.Version())
	}
	if k == "" {
		t.Fatal("no key of n0's is n2's in eu")
	}
	p := crdt.KeyHomes(k).First()
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		if err := n0.Rep().HandoffRound(ctx); err != nil {
			return false, fmt.Sprintf("handoff round: %v", err)
		}
		st, err := clustersim.State(ctx, n0.DB())
		if err != nil {
			return false, err.Error()
		}
		_, kept := st[k]
		return !kept, "n0 still stores " + k
	})

	c.Cut([]int{0}, []int{1, 2})
	c.Kill(2)
	if restart {
		c.Kill(0)
		c.Restart(0)
		n0 = c.Nodes[0]
	}
	if !n0.Rep().HoldsPartition(p) {
		t.Fatalf("n0 does not hold %#x once n2 is gone", p)
	}
	for _, part := range []int{p, -1} {
		if n0.Rep().Covers(b, part) {
			t.Errorf("n0 vouches for its write %v in partition %d (-1: all it holds), which it handed off and dropped", b, part)
		}
	}
	if how, err := n0.Rep().Await(ctx, b, p, 0, 200*time.Millisecond); err == nil {
		t.Errorf("cut off, n0 met %v in %#x (%v) without %s", b, p, how, k)
	}

	c.Heal()
	if _, err := n0.Rep().Await(ctx, b, p, 0, 20*time.Second); err != nil {
		t.Fatalf("n0 did not meet %v in %#x after the heal: %v", b, p, err)
	}
	if st, _ := clustersim.State(ctx, n0.DB()); st[k] == nil {
		t.Errorf("n0 met %v in %#x without holding %s", b, p, k)
	}
}

// TestSimHandoffFloorSoleHolder: one region, one holder per partition. x writes records
// that u holds, hands them off to u and drops them: its floors stand for them. Then u,
// the sole holder, restarts, or a node joins and takes some of u's partitions over.
// Nothing else holds those partitions to teach the holder anything, yet it holds the
// records: it must meet bookmarks of x's writes there, older and newer (found by an
// outside review: no holder ever did).
func TestSimHandoffFloorSoleHolder(t *testing.T) {
	t.Run("Restart", func(t *testing.T) { testSimHandoffFloorSoleHolder(t, false) })
	t.Run("Join", func(t *testing.T) { testSimHandoffFloorSoleHolder(t, true) })
}

func testSimHandoffFloorSoleHolder(t *testing.T, join bool) {
	c := newTestCluster(t, 2, []string{"us"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(300*time.Millisecond))
	ctx := context.Background()
	x, u := c.Nodes[0], c.Nodes[1]
	tab := c.Table()
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(5, 6)), 1)
	type record struct {
		key string
		b   crdt.Bookmark
	}
	var recs []record
	for i := 0; len(recs) < 40 && i < 400; i++ {
		acc := w.MustRegister(t, 0, fmt.Sprintf("sole%d", i))
		k := crdt.UserKey(acc.ID)
		homes := crdt.KeyHomes(k)
		if _, two := homes.Second(); two || !tab.Owns(u.Peer().ID, homes.First()) {
			continue
		}
		m, ok, err := x.DB().Record(ctx, k)
		if err != nil || !ok {
			t.Fatalf("x lacks its own %s: %v", k, err)
		}
		var b crdt.Bookmark
		b.Add(m.Version())
		recs = append(recs, record{k, b})
	}
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		if err := x.Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		st, _ := clustersim.State(ctx, x.DB())
		for _, r := range recs {
			if _, ok := st[r.key]; ok {
				return false, "x still stores " + r.key
			}
		}
		return true, ""
	})
	holder := 1
	if join {
		holder = c.JoinNode("us")
	} else {
		c.Kill(1)
		c.Restart(1)
	}
	h := c.Nodes[holder]
	acc := w.MustRegister(t, 0, "sole-later")
	m, _, _ := x.DB().Record(ctx, crdt.UserKey(acc.ID))
	var later crdt.Bookmark
	later.Add(m.Version())
	checked := 0
	for _, r := range recs {
		p := crdt.KeyHomes(r.key).First()
		if !h.Rep().HoldsPartition(p) {
			continue
		}
		checked++
		for _, b := range []crdt.Bookmark{r.b, later} {
			clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
				_, err := h.Rep().Await(ctx, b, p, 0, time.Second)
				return err == nil, fmt.Sprintf("%s, the sole holder of %#x, does not meet x's write %v there: %v (%s)", h.Name, p, b, err, h.Rep().DebugFloors(p))
			})
		}
		if st, _ := clustersim.State(ctx, h.DB()); st[r.key] == nil {
			t.Errorf("%s met a bookmark of %s without holding it", h.Name, r.key)
		}
	}
	if checked == 0 {
		t.Fatalf("%s holds none of the records' partitions", h.Name)
	}
	t.Logf("%s met the bookmarks of %d records", h.Name, checked)
}
