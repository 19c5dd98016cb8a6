package edge

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/storage"
)

// TestRemovedNodes: a removed-node record that commits (here written locally, as
// replication would apply it) adds its node ID to the set the membership and the sync
// server consult; one naming this node closes Removed; and a data directory whose node
// was removed is refused by Start, with the reason.
func TestRemovedNodes(t *testing.T) {
	cfg := testConfig(t, "n1")
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	record := func(id crdt.NodeID) {
		t.Helper()
		if err := n.db.Update(context.Background(), func(tx *storage.Tx) error {
			_, err := tx.Merge(crdt.RemovedKey(id), crdt.NewRemoved("x", n.db.Clock().Next()))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	other := n.db.NodeID() ^ 1
	record(other)
	if !n.removed.has(other) {
		t.Errorf("node %s recorded removed, not in the set", other)
	}
	select {
	case <-n.Removed():
		t.Fatal("Removed closed for another node's record")
	default:
	}
	record(n.db.NodeID())
	select {
	case <-n.Removed():
	case <-time.After(10 * time.Second):
		t.Fatal("Removed not closed after this node's own record committed")
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	again, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(context.Background()); !errors.Is(err, cluster.ErrRemoved) {
		_ = again.Close(context.Background())
		t.Fatalf("Start on the removed node's data: %v, want ErrRemoved", err)
	}
}

// TestRemovedNodeComesBack: b is lost (it stops without leaving), a removes it for good,
// and b starts again on its old data. a refuses its requests by its ID (counted), lists it
// removed and not as a peer; b learns it at once (Removed), records its own removal, and a
// third start on that data is refused.
func TestRemovedNodeComesBack(t *testing.T) {
	a := MustStartNode(t, testConfig(t, "a"))
	bcfg := testConfig(t, "b")
	bcfg.Join = []string{a.membership.Addr()}
	start := func() (*Node, error) {
		t.Helper()
		b, err := NewNode(bcfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return b, b.Start(ctx)
	}
	statusOnA := func() string {
		for _, m := range a.membership.Members() {
			if m.Name == "b" {
				return m.Status
			}
		}
		return ""
	}
	b, err := start()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "b ready", b.Ready)
	lost, cancel := context.WithCancel(context.Background())
	cancel()
	_ = b.Close(lost) // no leave
	waitFor(t, 30*time.Second, "a to see b failed", func() bool { return statusOnA() == "failed" })
	if err := a.membership.Remove("b", func(m cluster.Member) error { return a.recordRemoved(context.Background(), m) }); err != nil {
		t.Fatalf("remove b: %v", err)
	}

	b, err = start()
	if err != nil {
		t.Fatalf("b's second start (its store lacks the removal): %v", err)
	}
	select {
	case <-b.Removed():
	case <-time.After(30 * time.Second):
		t.Fatal("b, back on its data, did not learn it was removed")
	}
	if !b.removed.has(b.db.NodeID()) {
		t.Error("b learned it was removed without recording it")
	}
	if got := testutil.ToFloat64(a.syncMetrics.RemovedRefused); got == 0 {
		t.Error("a refused none of b's requests by its ID")
	}
	waitFor(t, 20*time.Second, "a to list b removed", func() bool { return statusOnA() == "removed" })
	// A build that sends no ID would be known by its name: a maps it to b's removed ID.
	if id, ok := a.memberID("b"); !ok || id != b.db.NodeID() || !a.removed.has(id) {
		t.Errorf("a maps the name b to %s (known %v), want b's removed ID %s", id, ok, b.db.NodeID())
	}
	if a.replicator.Peers() != 0 {
		t.Errorf("a has %d peers, want none (b is removed)", a.replicator.Peers())
	}
	if err := b.Close(context.Background()); err != nil {
		t.Errorf("close b: %v", err)
	}
	if _, err := start(); !errors.Is(err, cluster.ErrRemoved) {
		t.Fatalf("b's third start: %v, want ErrRemoved", err)
	}
}
