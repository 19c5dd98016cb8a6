package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/edge/cluster/placement"
)

// TestSimHandoffWaitsForJoiner: a joining node j catches up (pulls from every live
// peer), and only then takes its share. Meanwhile x writes a record it does not hold, in
// a partition j is about to hold, and u, its holder then, gets it and confirms it. If x
// dropped it then (a joining node was no confirmer), j would take the partition without
// it, and x's next Through would make j vouch for the write before u's own handoff brings
// it (here u → j is cut one way, so that the order is deterministic; SIM_NOCUT=1 runs it
// uncut). So x keeps it until j too confirms it. (Found by an outside review.)
func TestSimHandoffWaitsForJoiner(t *testing.T) {
	c := newTestCluster(t, 2, []string{"us"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	ctx := context.Background()
	x, u := c.Nodes[0], c.Nodes[1]
	ji := c.StartJoining("us")
	j := c.Nodes[ji]
	select {
	case <-j.Rep().CaughtUp():
	case <-time.After(30 * time.Second):
		t.Fatal("j did not catch up")
	}
	if os.Getenv("SIM_NOCUT") == "" {
		c.CutOneWay(1, ji)
	}

	// x writes records u holds now and j will hold once joined.
	now := c.Table()
	will := placement.New([]placement.Member{
		{Name: x.Name, ID: x.Peer().ID, Region: "us"},
		{Name: u.Name, ID: u.Peer().ID, Region: "us"},
		{Name: j.Name, ID: j.Peer().ID, Region: "us"},
	}, 1)
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(41, 42)), 1)
	var key string
	var b crdt.Bookmark
	for k := 0; key == "" && k < 400; k++ {
		acc := w.MustRegister(t, 0, fmt.Sprintf("jr%d", k))
		kk := crdt.UserKey(acc.ID)
		homes := crdt.KeyHomes(kk)
		p := homes.First()
		if _, two := homes.Second(); two || !now.Owns(u.Peer().ID, p) || !will.Owns(j.Peer().ID, p) {
			continue
		}
		ch, err := x.DB().Changes(ctx, []string{kk})
		if err != nil || len(ch) != 1 {
			t.Fatalf("changes of %s: %v, %d", kk, err, len(ch))
		}
		key = kk
		b.Add(ch[0].Map.Version())
	}
	if key == "" {
		t.Fatal("no key placed as the test needs")
	}
	p := crdt.KeyHomes(key).First()
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		st, _ := clustersim.State(ctx, u.DB())
		_, ok := st[key]
		return ok, "u lacks " + key
	})
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		if err := x.Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		st, _ := clustersim.State(ctx, x.DB())
		_, ok := st[key]
		return !ok, "x still stores " + key
	})

	c.MarkJoined(ji)
	if !j.Rep().HoldsPartition(p) {
		t.Fatalf("j does not hold %#x once joined", p)
	}
	w2 := clustersim.NewWorkload(c, rand.New(rand.NewPCG(99, 100)), 2)
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		w2.MustRegister(t, 0, fmt.Sprintf("later%d", w2.Next()))
		return j.Rep().Covers(b, p), fmt.Sprintf("j does not vouch for %v in %#x", b, p)
	})
	got, err := j.DB().Changes(ctx, []string{key})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Map.Version().Less(b.Mark(x.DB().NodeID())) {
		t.Fatalf("j vouches for %v in %#x but lacks x's write of %s (u has it; nobody is down)", b, p, key)
	}
}
