package cluster_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// TestSimDistrustEndsWherePeerDoesNotHold: x (us) pushes e (eu) a write in a partition
// B that e holds and x does not, stamped too far ahead (refused), so e distrusts x's
// Throughs there. x's clock is then fixed, the write reaches e, and x keeps writing in a
// partition both hold. e's rounds with x never compare B (syncMask: only what x holds), so
// the distrust in B must end with a clean round with x all the same, else x's Throughs
// stay out of e's base for good, what e tells peers of x freezes, and requests naming
// x's later writes wait in vain. (Found by an outside review of 221164f, which kept such a
// distrust for good.)
func TestSimDistrustEndsWherePeerDoesNotHold(t *testing.T) {
	c := newTestCluster(t, 4, []string{"eu", "us"}, clustersim.WithReplicas(1), clustersim.WithMaxSkew(time.Second))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(5, 5)), 5)
	const e, x = 0, 1 // n0 eu, n1 us
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		return c.Nodes[e].Rep().Peers() == 3 && c.Nodes[x].Rep().Peers() == 3, "peers"
	})
	tab := c.Table()
	eid, xid := c.Nodes[e].Peer().ID, c.Nodes[x].Peer().ID
	var inB string
	var inA []string
	for k := 0; inB == "" || len(inA) < 40; k++ {
		name := fmt.Sprintf("user%d", k)
		p := crdt.NamePartition(name)
		if p == crdt.ClusterPartition {
			continue
		}
		switch {
		case tab.Owns(eid, p) && !tab.Owns(xid, p) && inB == "":
			inB = name
		case tab.Owns(eid, p) && tab.Owns(xid, p):
			inA = append(inA, name)
		}
	}
	w.MustRegister(t, x, inA[0])
	c.CheckPlaced(t, 30*time.Second, false)
	mark := func() crdt.Timestamp { return c.Nodes[e].Rep().Have().Mark(xid) }
	t.Logf("e's base for x before: %v", mark())

	c.SetOffset(x, 3*time.Second)
	before := c.Nodes[e].Rejected()
	w.MustRegister(t, x, inB) // x does not hold B: pushed (and handed off) to e, refused
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		return c.Nodes[e].Rejected() > before, "no rejection on e"
	})
	c.SetOffset(x, 0)
	c.CheckPlaced(t, 30*time.Second, false) // B's write is on e, once real time has caught up with it
	// x keeps writing, as a live origin does: a Through told while the distrust lasts
	// (the handoff of B's write to e is refused until real time catches up with it)
	// counts beside the base only, and the next one after the distrust ends raises it.
	next := 1
	for ; next < len(inA)/2; next++ {
		w.MustRegister(t, x, inA[next]) // pushed to e with Throughs
	}
	last := c.Nodes[x].DB().Committed()
	t.Logf("x's commit mark after its first writes: %v", last)
	polls := 0
	clustersim.WaitFor(t, 15*time.Second, func() (bool, string) { // 50 anti-entropy periods
		if !mark().Less(last) {
			return true, ""
		}
		if polls++; polls%25 == 0 && next < len(inA) { // every half second
			w.MustRegister(t, x, inA[next])
			next++
			last = c.Nodes[x].DB().Committed()
		}
		return false, fmt.Sprintf("e's base knowledge of x never rose to x's writes after B's refused write reached e and x's clock was fixed: %v < %v", mark(), last)
	})
	t.Logf("e's base for x after: %v (rejected on e: %d)", mark(), c.Nodes[e].Rejected()-before)
}
