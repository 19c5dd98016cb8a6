package storage

import (
	"context"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

func TestOvertaken(t *testing.T) {
	ctx := context.Background()
	t.Run("RemoteReplacesOwnField", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		merge(t, db, key, newUser(db, "alice"))
		var edit crdt.Map
		own := db.Clock().Next()
		edit.Set(crdt.FieldEmail, []byte("mine@example.com"), own)
		merge(t, db, key, edit)
		if _, ok := db.Overtaken(key); ok {
			t.Fatal("Overtaken before any remote write")
		}
		// A remote write of a field we never wrote replaces nothing of ours.
		var other crdt.Map
		other.Set("nickname", []byte("Al"), crdt.Timestamp{Wall: own.Wall + 1, Node: 99})
		if _, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: other}}); err != nil {
			t.Fatal(err)
		}
		if ts, ok := db.Overtaken(key); ok {
			t.Fatalf("Overtaken = %v after a remote write of another field", ts)
		}
		// One of the same field, later, does.
		var remote crdt.Map
		remote.Set(crdt.FieldEmail, []byte("theirs@example.com"), crdt.Timestamp{Wall: own.Wall + 2, Node: 99})
		if _, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: remote}}); err != nil {
			t.Fatal(err)
		}
		if ts, ok := db.Overtaken(key); !ok || ts != own {
			t.Errorf("Overtaken = %v, %v; want our replaced write %v", ts, ok, own)
		}
	})
	t.Run("ErasureStandsInForSessions", func(t *testing.T) {
		db := MustOpenDB(t)
		user, sess := crdt.UserKey("u1"), crdt.SessionKey("s1")
		merge(t, db, user, newUser(db, "alice"))
		ts := db.Clock().Next()
		merge(t, db, sess, crdt.NewSession("u1", ts.Time().Add(24*3600e9), 3600e9, ts))
		var data crdt.Map
		write := db.Clock().Next()
		data.Set(crdt.DataPrefix+"k", []byte(`1`), write)
		merge(t, db, sess, data)
		erase := crdt.EraseUser(crdt.Timestamp{Wall: write.Wall + 1, Node: 99})
		if _, err := db.ApplyRemote(ctx, []Change{{Key: user, Map: erase}}); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := db.Record(ctx, sess); ok {
			t.Fatal("session survived its user's erasure")
		}
		if got, ok := db.Overtaken(user); !ok || got != write {
			t.Errorf("Overtaken(user) = %v, %v; want the deleted session's latest write of ours %v", got, ok, write)
		}
	})
}

// TestFeedShowsPublished: the change feed, a read of the file, shows a batch only once
// it is published: while it is on the committer the feed lacks it, and once it is
// acknowledged, Committed covers it.
func TestFeedShowsPublished(t *testing.T) {
	ctx := context.Background()
	db := MustOpenDB(t)
	inFn, release := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	var ts crdt.Timestamp
	go func() {
		errc <- db.Update(ctx, func(tx *Tx) error {
			close(inFn)
			<-release
			m := newUser(db, "alice")
			ts = m.Version()
			_, err := tx.Merge(crdt.UserKey("u1"), m)
			return err
		})
	}()
	<-inFn
	cs, _, err := db.ChangesSince(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 0 {
		t.Fatalf("the feed shows %d changes of a batch still on the committer", len(cs))
	}
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if cs, _, err = db.ChangesSince(ctx, 0, 0); err != nil || len(cs) != 1 {
		t.Fatalf("after the acknowledgement the feed shows %d changes (%v), want 1", len(cs), err)
	}
	if c := db.Committed(); c.Less(ts) {
		t.Errorf("Committed = %v, below the write the feed shows (%v)", c, ts)
	}
}
