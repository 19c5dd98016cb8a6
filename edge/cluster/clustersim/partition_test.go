package clustersim_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
)

// TestPartitionHeal is the Example as a test: a write on each side of a partition
// between regions reaches every node once it heals, and nothing else does.
func TestPartitionHeal(t *testing.T) {
	t.Parallel()
	c := clustersim.New(t, 3, []string{"eu", "us"}, clustersim.WithSeed(7))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(7, 1)), 7)
	alice := w.MustRegister(t, 0, "alice")
	c.CheckConverged(t, time.Minute)

	c.PartitionRegions(true, []string{"eu"})
	if got := c.Group(0); got == c.Group(1) || got != c.Group(2) {
		t.Fatalf("groups n0 %d, n1 %d, n2 %d; want eu (n0, n2) apart from us (n1)", c.Group(0), c.Group(1), c.Group(2))
	}
	ctx := context.Background()
	first, last := "Alicia", "Liddell"
	_, err := c.Nodes[0].API().Users.UpdateProfile(ctx, alice.ID, functions.ProfilePatch{FirstName: &first})
	if err != nil {
		t.Fatalf("update in eu: %v", err)
	}
	_, err = c.Nodes[1].API().Users.UpdateProfile(ctx, alice.ID, functions.ProfilePatch{LastName: &last})
	if err != nil {
		t.Fatalf("update in us: %v", err)
	}
	bob := w.MustRegister(t, 1, "bob")
	if _, ok, _ := c.Nodes[0].DB().Record(ctx, crdt.UserKey(bob.ID)); ok {
		t.Errorf("n0 has a record written in us during the partition")
	}
	c.Heal()
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
	if n := c.Model.Count(); n == 0 {
		t.Errorf("the model recorded no acknowledged write")
	}
	if ev := c.Events(); ev.Partitions != 1 {
		t.Errorf("Events().Partitions = %d, want 1", ev.Partitions)
	}
}
