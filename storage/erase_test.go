package storage

import (
	"context"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

// seedErasure gives u1 two sessions and conversations with u2 and u3, and u2 one with
// u3 that erasing u1 must leave alone.
func seedErasure(t *testing.T, db *DB) {
	t.Helper()
	for _, u := range []string{"u1", "u2", "u3"} {
		merge(t, db, crdt.UserKey(u), newUser(db, "name-"+u))
	}
	merge(t, db, crdt.SessionKey("s1"), newSession(db, "u1", hour))
	merge(t, db, crdt.SessionKey("s2"), newSession(db, "u1", hour))
	merge(t, db, crdt.SessionKey("s3"), newSession(db, "u2", hour))
	update(t, db, func(tx *Tx) error {
		for _, m := range []crdt.Message{{From: "u1", To: "u2"}, {From: "u2", To: "u1"}, {From: "u3", To: "u1"}, {From: "u2", To: "u3"}} {
			if _, err := tx.Append(crdt.ConversationID(m.From, m.To), m); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkErased checks that u1 is gone from db and u2, u3 are not.
func checkErased(t *testing.T, db *DB) {
	t.Helper()
	ctx := context.Background()
	m, ok := mustRecord(t, db, crdt.UserKey("u1"))
	if !ok {
		t.Fatal("erased user's tombstone missing")
	}
	if u := crdt.ReadUser("u1", &m); !u.Deleted || u.PasswordHash != "" || u.Profile[crdt.FieldEmail] != "" {
		t.Errorf("tombstone = %+v, want deleted with profile erased", u)
	}
	for _, name := range m.Names() {
		if !erasedUserFields[name] {
			t.Errorf("tombstone keeps field %q", name)
		}
	}
	for _, s := range []string{"s1", "s2"} {
		if _, ok := mustRecord(t, db, crdt.SessionKey(s)); ok {
			t.Errorf("session %s of the erased user kept", s)
		}
	}
	if _, ok := mustRecord(t, db, crdt.SessionKey("s3")); !ok {
		t.Error("another user's session deleted")
	}
	if ss, _ := db.UserSessions(ctx, "u1"); len(ss) != 0 {
		t.Errorf("UserSessions(u1) = %d sessions", len(ss))
	}
	if cs, _ := db.Conversations(ctx, "u1"); len(cs) != 0 {
		t.Errorf("Conversations(u1) = %v", cs)
	}
	cs, _ := db.Conversations(ctx, "u2")
	if len(cs) != 1 || cs[0].With != "u3" {
		t.Errorf("Conversations(u2) = %+v, want only the one with u3", cs)
	}
	if es, _, _ := db.ReadLog(ctx, "u1:u2", nil, 0); len(es) != 0 {
		t.Errorf("ReadLog(u1:u2) = %d entries", len(es))
	}
	if st, _ := db.Stats(ctx); st != (Stats{Users: 2, Sessions: 1, Messages: 1}) {
		t.Errorf("Stats = %+v, want 2 users, 1 session, 1 message", st)
	}
	for _, conv := range []string{"u1:u2", "u1:u3"} {
		if len(markersOf(t, db, conv)) == 0 {
			t.Errorf("conversation %s deleted without an erasure marker", conv)
		}
	}
}

func TestErase(t *testing.T) {
	t.Run("Local", func(t *testing.T) {
		db := MustOpenDB(t)
		seedErasure(t, db)
		merge(t, db, crdt.UserKey("u1"), crdt.EraseUser(db.Clock().Next()))
		checkErased(t, db)
	})
	t.Run("Remote", func(t *testing.T) {
		a, b := MustOpenDB(t), MustOpenDB(t)
		seedErasure(t, a)
		ctx := context.Background()
		if _, err := b.ApplyRemote(ctx, allChanges(t, a)); err != nil {
			t.Fatal(err)
		}
		seq := a.FeedSeq()
		merge(t, a, crdt.UserKey("u1"), crdt.EraseUser(a.Clock().Next()))
		// What the erasure committed, as a push carries it: the user record and the
		// markers a left in u1's two conversations.
		cs, _, err := a.ChangesSince(ctx, seq, 0)
		if err != nil || len(cs) != 3 || len(markersOf(t, a, "u1:u2")) != 1 || len(markersOf(t, a, "u1:u3")) != 1 {
			t.Fatalf("ChangesSince = %d changes, %v; want the record and two markers", len(cs), err)
		}
		if _, err := b.ApplyRemote(ctx, cs); err != nil {
			t.Fatal(err)
		}
		checkErased(t, b)
		if a.Digest() != b.Digest() {
			t.Error("digests differ after both erased: b left markers of its own beside a's")
		}
	})
	t.Run("RemoteRecordAlone", func(t *testing.T) {
		// The record reaches b without a's markers: b deletes the conversations and
		// leaves markers of its own; once they exchange markers, they agree.
		a, b := MustOpenDB(t), MustOpenDB(t)
		seedErasure(t, a)
		ctx := context.Background()
		if _, err := b.ApplyRemote(ctx, allChanges(t, a)); err != nil {
			t.Fatal(err)
		}
		merge(t, a, crdt.UserKey("u1"), crdt.EraseUser(a.Clock().Next()))
		cs, err := a.Changes(ctx, []string{crdt.UserKey("u1")})
		if err != nil || len(cs) != 1 {
			t.Fatalf("Changes = %v, %v", cs, err)
		}
		if _, err := b.ApplyRemote(ctx, cs); err != nil {
			t.Fatal(err)
		}
		checkErased(t, b)
		for _, conv := range []string{"u1:u2", "u1:u3"} {
			if ms := markersOf(t, b, conv); len(ms) != 1 || ms[0].ID.Origin() != b.NodeID() {
				t.Errorf("b's markers of %s = %v, want one of its own", conv, ms)
			}
		}
		exchange(t, a, b)
		if a.Digest() != b.Digest() {
			t.Error("digests differ after the markers were exchanged")
		}
		if ms := markersOf(t, b, "u1:u2"); len(ms) != 2 {
			t.Errorf("markers of u1:u2 = %d, want both nodes' kept", len(ms))
		}
		checkErased(t, a)
		checkErased(t, b)
	})
	t.Run("DropsLaterArrivals", func(t *testing.T) {
		a, b := MustOpenDB(t), MustOpenDB(t)
		seedErasure(t, a)
		ctx := context.Background()
		old := allChanges(t, a) // u1's sessions and messages, before the erasure
		merge(t, b, crdt.UserKey("u1"), crdt.EraseUser(b.Clock().Next()))
		res, err := b.ApplyRemote(ctx, old)
		if err != nil {
			t.Fatal(err)
		}
		// Dropped: s1, s2 and the three u1 messages. The user record merges as unchanged
		// profile fields are stripped.
		if res.Dropped != 5 {
			t.Errorf("ApplyRemote = %+v, want 5 dropped", res)
		}
		checkErased(t, b)
		err = b.Update(ctx, func(tx *Tx) error {
			_, err := tx.Append("u1:u2", crdt.Message{From: "u2", To: "u1", Body: "late"})
			return err
		})
		if err == nil {
			t.Error("Append to an erased user's conversation succeeded")
		}
		merge(t, b, crdt.SessionKey("s9"), newSession(b, "u1", hour))
		if _, ok := mustRecord(t, b, crdt.SessionKey("s9")); ok {
			t.Error("new session of an erased user stored")
		}
	})
	t.Run("SameFunction", func(t *testing.T) {
		db := MustOpenDB(t)
		seedErasure(t, db)
		update(t, db, func(tx *Tx) error {
			if _, err := tx.Merge(crdt.UserKey("u1"), crdt.EraseUser(db.Clock().Next())); err != nil {
				return err
			}
			if _, err := tx.Merge(crdt.SessionKey("s9"), newSession(db, "u1", hour)); err != nil {
				return err
			}
			// s1 is stored: the cascade deletes it before this touch is applied.
			if _, err := tx.Merge(crdt.SessionKey("s1"), crdt.TouchSession(db.Clock().Next())); err != nil {
				return err
			}
			if _, ok, _ := tx.Record(crdt.SessionKey("s9")); ok {
				t.Error("Tx.Record sees a session of a user erased in the same function")
			}
			if _, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2"}); err == nil {
				t.Error("Append after erasing in the same function succeeded")
			}
			return nil
		})
		checkErased(t, db)
		checkInvariants(t, db)
	})
	t.Run("ConcurrentProfileEditConverges", func(t *testing.T) {
		a, b := MustOpenDB(t), MustOpenDB(t)
		u := crdt.NewUser("alice", "h", nil, ts(1, 100))
		erase := crdt.EraseUser(ts(1, 200))
		var edit crdt.Map // concurrent, and later than the erasure
		edit.Set(crdt.FieldEmail, []byte("new@example.com"), ts(2, 300))
		key := crdt.UserKey("u1")
		for _, m := range []crdt.Map{u, erase, edit} {
			merge(t, a, key, m)
		}
		for _, m := range []crdt.Map{edit, u, erase} {
			merge(t, b, key, m)
		}
		ma, _ := mustRecord(t, a, key)
		mb, _ := mustRecord(t, b, key)
		if !ma.Equal(mb) || a.Digest() != b.Digest() {
			t.Error("replicas differ")
		}
		if got := crdt.ReadUser("u1", &ma); got.Profile[crdt.FieldEmail] != "" || got.Username != "alice" {
			t.Errorf("erased user = %+v, want the username and nothing personal", got)
		}
	})
}
