package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
)

// TestSimHandoffWaitsForEveryRegion: a node that accepted a write in a partition it does
// not hold (no holder answered) may drop it only once the holders of every region hold
// it. If it dropped it once its own region's holder confirmed, a holder in another
// region that its pushes had not reached would never get the write from it, and its next
// push there would tell a Through covering the write all the same: that holder would
// vouch for a client's bookmark without the write (a read-your-writes violation).
func TestSimHandoffWaitsForEveryRegion(t *testing.T) {
	// n0 and n2 in us, n1 in eu; one holder per partition and region.
	c := newTestCluster(t, 3, []string{"us", "eu"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	x, e, u := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	tab := c.Table()

	// x cannot reach e; e's rounds with x never compare what x does not hold.
	c.CutOneWay(0, 1)
	c.CutOneWay(1, 0)

	// A user registered on x: pick a key of one home, in a partition u holds in us.
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(3, 4)), 1)
	var key string
	for k := 0; key == "" && k < 200; k++ {
		before, err := clustersim.State(ctx, x.DB())
		if err != nil {
			t.Fatal(err)
		}
		w.MustRegister(t, 0, fmt.Sprintf("away%d", k))
		after, err := clustersim.State(ctx, x.DB())
		if err != nil {
			t.Fatal(err)
		}
		for k := range after {
			if _, old := before[k]; old {
				continue
			}
			homes := crdt.KeyHomes(k)
			if _, two := homes.Second(); !two && c.OwnerIn(tab, "us", homes.First()) == 2 {
				key = k
				break
			}
		}
	}
	if key == "" {
		t.Fatal("no key of x's writes is held by u")
	}
	p := crdt.KeyHomes(key).First()
	changes, err := x.DB().Changes(ctx, []string{key})
	if err != nil || len(changes) != 1 {
		t.Fatalf("changes of %s: %v, %d", key, err, len(changes))
	}
	var b crdt.Bookmark // the client's bookmark: x's write of key
	b.Add(changes[0].Map.Version())
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		st, _ := clustersim.State(ctx, u.DB())
		_, ok := st[key]
		return ok, "u lacks " + key
	})

	// x hands its strays to u, which confirms key; e, cut off, cannot.
	if err := x.Rep().HandoffRound(ctx); err != nil {
		t.Logf("HandoffRound while e is cut off: %v", err)
	}
	st, err := clustersim.State(ctx, x.DB())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st[key]; !ok {
		t.Errorf("x dropped %s (partition %#x) once u confirmed it, while e, its holder in eu, was cut off", key, p)
	}

	// Healed, x's pushes to e resume and tell it a Through. Whenever e vouches for the
	// bookmark in p, it must hold the write.
	c.Heal()
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		return e.Rep().Covers(b, p), fmt.Sprintf("e does not vouch for %v in %#x", b, p)
	})
	got, err := e.DB().Changes(ctx, []string{key})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Map.Version().Less(changes[0].Map.Version()) {
		t.Fatalf("e vouches for %v in partition %#x but lacks x's write of %s (%d changes)", b, p, key, len(got))
	}

	// Every region's holder holds it now: the next handoff round drops it.
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		if err := x.Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		st, err := clustersim.State(ctx, x.DB())
		if err != nil {
			return false, err.Error()
		}
		_, ok := st[key]
		return !ok, "x still stores " + key
	})
}

// TestSimHandoffWaitsForHoldersDown: the holders a stray key waits for include those
// membership sees failed. A holder cut off behind a partition is failed to the others,
// and its region's other node takes its partitions over; but it still holds them as it
// sees its region, and comes back holding them without what it missed. A node that
// dropped its own write there once the takeover confirmed it could not bring it to the
// holder back, and would tell it a Through counting it.
func TestSimHandoffWaitsForHoldersDown(t *testing.T) {
	// n0 and n2 in us, n1 and n3 in eu; one holder per partition and region.
	c := newTestCluster(t, 4, []string{"us", "eu"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	x := c.Nodes[0]
	ctx := context.Background()
	tab := c.Table()

	// A user registered on x whose record u (n2) holds in us.
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(5, 6)), 1)
	a := w.MustRegisterWhere(t, 0, "down", 200, func(a *clustersim.Account) bool {
		return c.OwnerIn(tab, "us", crdt.KeyHomes(crdt.UserKey(a.ID)).First()) == 2
	})
	key := crdt.UserKey(a.ID)
	p := crdt.KeyHomes(key).First()
	e1 := c.OwnerIn(tab, "eu", p)
	e := c.Nodes[e1]
	t.Logf("%s: partition %#x, held by n2 in us and n%d in eu", key, p, e1)

	// e1 is cut off, and failed to the others: its region peer takes p over. x writes
	// the record again.
	c.Partition([]int{e1})
	name := "after"
	if _, err := x.API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{FirstName: &name}); err != nil {
		t.Fatal(err)
	}
	changes, err := x.DB().Changes(ctx, []string{key})
	if err != nil || len(changes) != 1 {
		t.Fatalf("changes of %s: %v, %d", key, err, len(changes))
	}
	var b crdt.Bookmark
	b.Add(changes[0].Map.Version())
	// Every live holder gets it: u, and e1's region peer.
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		for i := 1; i < 4; i++ {
			if i == e1 {
				continue
			}
			got, _ := c.Nodes[i].DB().Changes(ctx, []string{key})
			if len(got) != 1 || got[0].Map.Version() != changes[0].Map.Version() {
				return false, fmt.Sprintf("n%d lacks x's write", i)
			}
		}
		return true, ""
	})
	if err := x.Rep().HandoffRound(ctx); err != nil {
		t.Logf("HandoffRound while n%d is down: %v", e1, err)
	}
	if got, _ := x.DB().Changes(ctx, []string{key}); len(got) != 1 {
		t.Errorf("x dropped %s while n%d, which holds it in eu once back, was down", key, e1)
	}

	// Healed: whenever e1 vouches for the bookmark, it holds the write.
	c.Heal()
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		return e.Rep().Covers(b, p), fmt.Sprintf("n%d does not vouch for %v in %#x", e1, b, p)
	})
	got, err := e.DB().Changes(ctx, []string{key})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Map.Version().Less(changes[0].Map.Version()) {
		t.Fatalf("n%d vouches for %v in %#x but lacks x's write of %s", e1, b, p, key)
	}
}
