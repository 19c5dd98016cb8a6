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

// TestWaitPublished: a reader of the file may see a commit before the committer has
// published it; WaitPublished returns only after that.
func TestWaitPublished(t *testing.T) {
	ctx := context.Background()
	db := MustOpenDB(t)
	if err := db.WaitPublished(ctx); err != nil { // nothing in flight
		t.Fatal(err)
	}
	// Hold a batch on the committer: its function blocks until released.
	inFn, release := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- db.Update(ctx, func(tx *Tx) error {
			close(inFn)
			<-release
			_, err := tx.Merge(crdt.UserKey("u1"), newUser(db, "alice"))
			return err
		})
	}()
	<-inFn
	waited := make(chan error, 1)
	go func() { waited <- db.WaitPublished(ctx) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitPublished returned (%v) while a batch was in flight", err)
	default:
	}
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := db.Record(ctx, crdt.UserKey("u1")); !ok {
		t.Error("the batch WaitPublished waited for is not visible")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := db.WaitPublished(cctx); err != nil {
		t.Errorf("WaitPublished with nothing in flight and a done context = %v, want nil", err)
	}
}
