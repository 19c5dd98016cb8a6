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

// TestSimGainedPartitionWaitsForItsData: a node that gains a partition (its holder
// failed) holds none of its data until a round brings it from a holder. An origin's
// Through cannot vouch for it there meanwhile: the origin may have written to the
// partition without holding it and dropped those writes once every holder of the time
// confirmed them — the new holder was not one of those, and the origin's rounds with it
// cannot bring what the origin no longer stores.
func TestSimGainedPartitionWaitsForItsData(t *testing.T) {
	// n0 and n2 in us, n1 and n3 in eu; one holder per partition and region.
	c := newTestCluster(t, 4, []string{"us", "eu"}, clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour))
	x := c.Nodes[0]
	ctx := context.Background()
	tab := c.Table()

	// Two users registered on x: one whose record u (n2) holds in us, and, of the other
	// eu node, one it holds already.
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(7, 8)), 1)
	var a, o *clustersim.Account
	e1, e2 := -1, -1
	for k := 0; (a == nil || o == nil) && k < 400; k++ {
		acc := w.MustRegister(t, 0, fmt.Sprintf("gained%d", k))
		q := crdt.KeyHomes(crdt.UserKey(acc.ID)).First()
		switch {
		case a == nil && c.OwnerIn(tab, "us", q) == 2:
			a, e1 = acc, c.OwnerIn(tab, "eu", q)
			e2 = 4 - e1 // 1 ↔ 3
		case a != nil && o == nil && c.OwnerIn(tab, "eu", q) == e2:
			o = acc
		}
	}
	if a == nil || o == nil {
		t.Fatal("no pair of users placed as the test needs")
	}
	key, other := crdt.UserKey(a.ID), crdt.UserKey(o.ID)
	p, q := crdt.KeyHomes(key).First(), crdt.KeyHomes(other).First()
	t.Logf("%s in %#x: n2 and n%d; %s in %#x: n%d in eu", key, p, e1, other, q, e2)

	// e2 cannot reach u, p's holder in us, nor u e2.
	c.CutOneWay(e2, 2)
	c.CutOneWay(2, e2)

	// x writes the record (it does not hold it), u and e1 get it, x hands it off and
	// drops it.
	first := "before"
	if _, err := x.API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{FirstName: &first}); err != nil {
		t.Fatal(err)
	}
	changes, err := x.DB().Changes(ctx, []string{key})
	if err != nil || len(changes) != 1 {
		t.Fatalf("changes of %s: %v, %d", key, err, len(changes))
	}
	var b crdt.Bookmark
	b.Add(changes[0].Map.Version())
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		for _, i := range []int{2, e1} {
			got, _ := c.Nodes[i].DB().Changes(ctx, []string{key})
			if len(got) != 1 || got[0].Map.Version() != changes[0].Map.Version() {
				return false, fmt.Sprintf("n%d lacks x's write", i)
			}
		}
		return true, ""
	})
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		if err := x.Rep().HandoffRound(ctx); err != nil {
			return false, err.Error()
		}
		got, _ := x.DB().Changes(ctx, []string{key})
		return len(got) == 0, "x still stores " + key
	})

	// e1 fails: e2 gains p. x writes the other record, which e2 held all along; once e2
	// vouches for that write (a Through of x's after the gain), it has been told one
	// that counts the first write too.
	c.Kill(e1)
	if !c.Nodes[e2].Rep().HoldsPartition(p) {
		t.Fatalf("n%d does not hold %#x once n%d is down", e2, p, e1)
	}
	second := "second"
	if _, err := x.API().Users.UpdateProfile(ctx, o.ID, functions.ProfilePatch{FirstName: &second}); err != nil {
		t.Fatal(err)
	}
	later, err := x.DB().Changes(ctx, []string{other})
	if err != nil || len(later) != 1 {
		t.Fatalf("changes of %s: %v, %d", other, err, len(later))
	}
	var b2 crdt.Bookmark
	b2.Add(later[0].Map.Version())
	e := c.Nodes[e2]
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		return e.Rep().Covers(b2, q), fmt.Sprintf("n%d does not vouch for %v in %#x", e2, b2, q)
	})
	if e.Rep().Covers(b, p) {
		got, err := e.DB().Changes(ctx, []string{key})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Map.Version().Less(changes[0].Map.Version()) {
			t.Fatalf("n%d vouches for %v in %#x, gained with no holder reachable, but lacks x's write of %s", e2, b, p, key)
		}
	}
}
