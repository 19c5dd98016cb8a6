package edge

import (
	"context"
	"errors"
	"testing"
	"time"

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
