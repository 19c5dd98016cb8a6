package cluster_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// TestSimHandoffGathersConfirmations: a stray key that waits for several holders gathers
// their confirmations over several handoff rounds. x's own write, in a partition held by
// u (us) and e (eu), is confirmed by u in a round in which e is cut off, and by e in a
// round in which u is: x drops it then, as both hold it. Needing every confirmation in
// the same round, a key with fifteen holders (five regions at --replicas 3) could wait
// for good over a lossy network.
func TestSimHandoffGathersConfirmations(t *testing.T) {
	// n0 (x) and n2 (u) in us, n1 (e) in eu; one holder per partition and region.
	c := newTestCluster(t, 3, []string{"us", "eu"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	x, e, u := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	tab := c.Table()

	// A user registered on x whose record u holds in us (x holds neither home).
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(11, 12)), 1)
	a := w.MustRegisterWhere(t, 0, "gather", 200, func(a *clustersim.Account) bool {
		p := crdt.KeyHomes(crdt.UserKey(a.ID)).First()
		return c.OwnerIn(tab, "us", p) == 2 && c.OwnerIn(tab, "eu", p) == 1
	})
	key := crdt.UserKey(a.ID)
	stored := func(n *clustersim.Node) bool {
		got, _ := n.DB().Changes(ctx, []string{key})
		return len(got) == 1
	}
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return stored(u) && stored(e), "u or e lacks " + key
	})

	// e cut off: u confirms, the key waits for e.
	c.CutOneWay(0, 1)
	c.CutOneWay(1, 0)
	if err := x.Rep().HandoffRound(ctx); err == nil {
		t.Fatal("a handoff round reached e through the cut")
	}
	if !stored(x) {
		t.Fatalf("x dropped %s, its own write, while e had not confirmed it", key)
	}

	// u cut off, e reachable: e confirms, and with u's earlier confirmation the key goes.
	c.Heal()
	c.CutOneWay(0, 2)
	c.CutOneWay(2, 0)
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		if err := x.Rep().HandoffRound(ctx); err != nil {
			t.Logf("HandoffRound while u is cut off: %v", err)
		}
		return !stored(x), "x still stores " + key + ", confirmed by u and by e in different rounds"
	})
}
