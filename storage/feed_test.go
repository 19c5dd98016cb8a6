package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

func TestChangesSince(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	for _, u := range []string{"a", "b", "c"} {
		merge(t, db, crdt.UserKey(u), newUser(db, u))
	}
	mid := db.FeedSeq()
	var e crdt.Entry
	update(t, db, func(tx *Tx) error {
		var err error
		e, err = tx.Append("a:b", crdt.Message{From: "a", To: "b", Body: "hi"})
		return err
	})
	merge(t, db, crdt.UserKey("a"), crdt.RevokeSessionsUntil(db.Clock().Next(), time.Minute)) // a moves to the end

	keysOf := func(cs []Change) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Key)
		}
		return out
	}
	tests := []struct {
		name     string
		seq      uint64
		limit    int
		want     []string
		wantNext uint64
	}{
		{"All", 0, 0, []string{"u/b", "u/c", LogKey("a:b", e.ID), "u/a"}, db.FeedSeq()},
		{"Limit", 0, 2, []string{"u/b", "u/c"}, 3},
		{"After", mid, 0, []string{LogKey("a:b", e.ID), "u/a"}, db.FeedSeq()},
		{"AtHead", db.FeedSeq(), 0, nil, db.FeedSeq()},
		{"BeyondHead", db.FeedSeq() + 10, 0, nil, db.FeedSeq() + 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, next, err := db.ChangesSince(ctx, tt.seq, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := keysOf(cs); !equalStrings(got, tt.want) || next != tt.wantNext {
				t.Errorf("ChangesSince(%d, %d) = %q, %d; want %q, %d", tt.seq, tt.limit, got, next, tt.want, tt.wantNext)
			}
		})
	}
	t.Run("CurrentState", func(t *testing.T) {
		cs, _, _ := db.ChangesSince(ctx, 0, 0)
		stored, _ := mustRecord(t, db, "u/a")
		if last := cs[len(cs)-1]; !last.Map.Equal(stored) {
			t.Error("change of u/a is not its current state")
		}
		if c := cs[2]; c.Conv != "a:b" || string(c.Entry.Data) != string(e.Data) {
			t.Errorf("log change = %+v", c)
		}
	})
	t.Run("Paging", func(t *testing.T) {
		var got []string
		seq := uint64(0)
		for range 10 {
			cs, next, _ := db.ChangesSince(ctx, seq, 1)
			if len(cs) == 0 {
				break
			}
			got = append(got, keysOf(cs)...)
			seq = next
		}
		if len(got) != 4 {
			t.Errorf("paging one at a time got %q", got)
		}
	})
}

// TestFeedBounded checks that rewriting a few keys many times leaves the feed holding
// about one position per key, not one per write.
func TestFeedBounded(t *testing.T) {
	db := MustOpenDB(t)
	const keys, rounds = 10, 300
	for r := range rounds {
		update(t, db, func(tx *Tx) error {
			var m crdt.Map
			m.Set("n", []byte(fmt.Sprint(r)), db.Clock().Next())
			_, err := tx.Merge(crdt.UserKey(fmt.Sprint(r%keys)), m)
			return err
		})
	}
	settled(t, db)
	var n int
	_ = db.bolt.View(func(btx *bolt.Tx) error {
		n = btx.Bucket(bucketFeed).Stats().KeyN
		return nil
	})
	if n > 2*keys+20 {
		t.Errorf("feed holds %d positions for %d keys after %d writes", n, keys, rounds)
	}
	if cs := allChanges(t, db); len(cs) != keys {
		t.Errorf("ChangesSince(0) = %d changes, want %d", len(cs), keys)
	}
}

func TestChanges(t *testing.T) {
	db := MustOpenDB(t)
	merge(t, db, crdt.UserKey("a"), newUser(db, "a"))
	var e crdt.Entry
	update(t, db, func(tx *Tx) error {
		var err error
		e, err = tx.Append("a:b", crdt.Message{From: "a", To: "b"})
		return err
	})
	keys := []string{LogKey("a:b", e.ID), "u/missing", crdt.UserKey("a"), LogKey("a:b", crdt.EntryID{TS: e.ID.TS, Seq: 99}), "junk"}
	cs, err := db.Changes(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Key != keys[0] || cs[0].Entry.ID != e.ID || cs[1].Key != "u/a" || cs[1].Map.Len() == 0 {
		t.Errorf("Changes = %+v", cs)
	}
}
