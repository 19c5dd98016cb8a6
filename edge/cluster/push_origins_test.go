package cluster

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// newPushTarget returns a replicator, over a store of its own, that only answers pushes.
func newPushTarget(t *testing.T) *Replicator {
	t.Helper()
	db, err := storage.Open(filepath.Join(t.TempDir(), "r.db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r := NewReplicator(Config{DB: db, Transport: &replyTransport{}, MoveRate: -1})
	r.Start()
	t.Cleanup(r.Close)
	return r
}

// TestHandlePushOrigins: a push names its origin itself (PushRequest.From), so a peer
// holding the cluster key can name any. Pushes from invented origins carrying a change
// stamped too far ahead each distrusted a new origin, kept until a round with it that
// never comes; their Throughs pushed real origins' marks out of what this node knows it
// holds (both found by an outside review). Now the distrusted origins are bounded, and
// only members' Throughs count.
func TestHandlePushOrigins(t *testing.T) {
	ctx := context.Background()
	t.Run("DistrustBounded", func(t *testing.T) {
		r := newPushTarget(t)
		ahead := time.Now().Add(2 * time.Hour).UnixNano()
		for i := range 2 * maxDistrusted {
			from := crdt.NodeID(1000 + i)
			var m crdt.Map
			m.Set("x", []byte("v"), crdt.Timestamp{Wall: ahead, Node: from})
			if _, err := r.HandlePush(ctx, PushRequest{From: from, Changes: []storage.Change{{Key: crdt.UserKey("victim"), Map: m}}}); err != nil {
				t.Fatal(err)
			}
		}
		r.have.mu.Lock()
		n, latest := len(r.have.distrusted), r.have.distrusted[crdt.NodeID(1000+2*maxDistrusted-1)]
		r.have.mu.Unlock()
		if n > maxDistrusted {
			t.Errorf("%d origins distrusted, over %d", n, maxDistrusted)
		}
		if latest.epoch == 0 {
			t.Errorf("the latest refused origin is not distrusted")
		}
	})
	t.Run("ThroughFromMembersOnly", func(t *testing.T) {
		r := newPushTarget(t)
		member := Peer{ID: 0x77, Name: "m", Addr: "m"}
		r.SetMembership([]Peer{member}, nil)
		through := crdt.Timestamp{Wall: time.Now().Add(-time.Second).UnixNano(), Node: member.ID}
		if _, err := r.HandlePush(ctx, PushRequest{From: member.ID, Through: through, Era: r.have.currentEra()}); err != nil {
			t.Fatal(err)
		}
		if !r.Have().Covers(through) {
			t.Fatalf("a member's Through does not count")
		}
		for i := range crdt.MaxBookmarkMarks {
			invented := crdt.Timestamp{Wall: time.Now().UnixNano(), Node: crdt.NodeID(5000 + i)}
			if _, err := r.HandlePush(ctx, PushRequest{From: invented.Node, Through: invented, Era: r.have.currentEra()}); err != nil {
				t.Fatal(err)
			}
			if r.Have().Covers(invented) {
				t.Fatalf("the Through of %v, no member, counts", invented.Node)
			}
		}
		if !r.Have().Covers(through) {
			t.Errorf("after Throughs of %d invented origins, the member's mark is gone", crdt.MaxBookmarkMarks)
		}
		// A node that stops leaves first and then drains its last writes to its peers,
		// which list it as left by then (neither live nor failed): its Through counts.
		r.SetMembership(nil, nil)
		later := crdt.Timestamp{Wall: time.Now().UnixNano(), Node: member.ID}
		if _, err := r.HandlePush(ctx, PushRequest{From: member.ID, Through: later, Era: r.have.currentEra()}); err != nil {
			t.Fatal(err)
		}
		if !r.Have().Covers(later) {
			t.Errorf("the Through of a member that has left does not count")
		}
	})
}
