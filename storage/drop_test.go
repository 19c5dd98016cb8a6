package storage

import (
	"context"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

// pairsOf returns the stored keys with their pair hashes, as LeafPairs reports them.
func pairsOf(t *testing.T, db *DB) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for leaf := range crdt.Partitions {
		pairs, err := db.LeafPairs(context.Background(), leaf)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pairs {
			out[p.Key] = p.Hash
		}
	}
	return out
}

func TestDrop(t *testing.T) {
	ctx := context.Background()
	db := MustOpenDB(t)
	update(t, db, func(tx *Tx) error {
		for _, u := range []string{"a", "b"} {
			if _, err := tx.Merge(crdt.UserKey(u), newUser(db, u)); err != nil {
				return err
			}
		}
		for range 3 {
			if _, err := tx.Append("a:b", crdt.Message{From: "a", To: "b"}); err != nil {
				return err
			}
		}
		return nil
	})
	before := pairsOf(t, db)
	var entries []KeyHash
	for k, h := range before {
		if _, _, ok := ParseLogKey(k); ok {
			entries = append(entries, KeyHash{Key: k, Hash: h})
		}
	}
	t.Run("ErrChangedSince", func(t *testing.T) {
		hash := before[crdt.UserKey("a")]
		merge(t, db, crdt.UserKey("a"), newUser(db, "a2")) // a write after the confirmation
		n, err := db.Drop(ctx, []KeyHash{{Key: crdt.UserKey("a"), Hash: hash}})
		if err != nil || n != 0 {
			t.Fatalf("Drop = %d, %v; want 0: the record changed since", n, err)
		}
		if _, ok := mustRecord(t, db, crdt.UserKey("a")); !ok {
			t.Errorf("a record that changed since its confirmation was dropped")
		}
	})
	t.Run("ErrConversationPartlyConfirmed", func(t *testing.T) {
		n, err := db.Drop(ctx, entries[:2])
		if err != nil || n != 0 {
			t.Fatalf("Drop = %d, %v; want 0: one entry is not confirmed", n, err)
		}
		checkInvariants(t, db)
	})
	t.Run("OK", func(t *testing.T) {
		now := pairsOf(t, db)
		n, err := db.Drop(ctx, append([]KeyHash{{Key: crdt.UserKey("b"), Hash: now[crdt.UserKey("b")]}}, entries...))
		if err != nil || n != 4 {
			t.Fatalf("Drop = %d, %v; want 4 (a record and three entries)", n, err)
		}
		after := pairsOf(t, db)
		if _, ok := after[crdt.UserKey("b")]; ok {
			t.Errorf("user b still stored")
		}
		for _, e := range entries {
			if _, ok := after[e.Key]; ok {
				t.Errorf("entry %s still stored", e.Key)
			}
		}
		if _, ok := after[crdt.UserKey("a")]; !ok {
			t.Errorf("user a, not listed, was dropped")
		}
		checkInvariants(t, db)
		if st, _ := db.Stats(ctx); st.Messages != 0 || st.Users != 1 {
			t.Errorf("Stats = %+v, want 1 user and no messages", st)
		}
	})
	t.Run("OKSequenceNotReused", func(t *testing.T) {
		var e crdt.Entry
		update(t, db, func(tx *Tx) error {
			var err error
			e, err = tx.Append("a:b", crdt.Message{From: "a", To: "b"})
			return err
		})
		if e.ID.Seq != 4 {
			t.Errorf("an entry appended after the drop has seq %d, want 4: our three earlier ones live on elsewhere", e.ID.Seq)
		}
		db = mustReopen(t, db, Options{})
		checkInvariants(t, db)
	})
}
