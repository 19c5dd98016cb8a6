package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// TestSimAwaitNotHeld: a bookmark awaited in a partition this node does not hold can
// never be met there (nothing vouches for it), so Await answers behind at once: no wait,
// and no pull that would copy the partition's keys here as leftovers to hand off again.
func TestSimAwaitNotHeld(t *testing.T) {
	c := newTestCluster(t, 4, []string{"eu", "us"}, clustersim.WithReplicas(1))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(7, 7)), 7)
	const e, h = 0, 2 // both eu
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) { return c.Nodes[e].Rep().Peers() == 3, "peers" })
	tab := c.Table()
	eid, hid := c.Nodes[e].Peer().ID, c.Nodes[h].Peer().ID
	name := ""
	for k := 0; name == ""; k++ {
		n := fmt.Sprintf("user%d", k)
		if p := crdt.NamePartition(n); p != crdt.ClusterPartition && !tab.Owns(eid, p) && tab.Owns(hid, p) {
			name = n
		}
	}
	q := crdt.NamePartition(name)
	w.MustRegister(t, h, name)
	c.CheckPlaced(t, 30*time.Second, false)
	var b crdt.Bookmark
	b.Add(c.Nodes[h].DB().Committed())
	ctx := context.Background()
	t0 := time.Now()
	got, err := c.Nodes[e].Rep().Await(ctx, b, q, 300*time.Millisecond, 2*time.Second)
	_, copied, _ := c.Nodes[e].DB().Record(ctx, crdt.ClaimKey(name))
	t.Logf("Await in partition %d (not held) of a write every holder has: %v %v after %s; the key copied here: %v",
		q, got, err, time.Since(t0).Round(time.Millisecond), copied)
}
