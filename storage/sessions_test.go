package storage

import (
	"context"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestUserSessions(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	for _, id := range []string{"s1", "s2", "s3"} {
		merge(t, db, crdt.SessionKey(id), newSession(db, "u1", 24*hour))
		clk.Add(time.Minute)
	}
	merge(t, db, crdt.SessionKey("other"), newSession(db, "u2", 24*hour))
	merge(t, db, crdt.SessionKey("s2"), crdt.RevokeSession(db.Clock().Next()))
	idle := crdt.NewSession("u1", clk.Now().Add(24*hour), time.Minute, db.Clock().Next())
	merge(t, db, crdt.SessionKey("s4"), idle)
	clk.Add(time.Hour) // s4 is idle-expired but kept

	got := userSessions(t, db, "u1")
	var ids []string
	for _, s := range got {
		ids = append(ids, s.ID)
	}
	if want := []string{"s4", "s3", "s1"}; !equalStrings(ids, want) {
		t.Errorf("UserSessions = %q, want %q (newest first, revoked s2 left out)", ids, want)
	}
	if got[0].ActiveAt(clk.Now()) {
		t.Errorf("s4 active, want idle-expired")
	}
	checkInvariants(t, db)
	for _, user := range []string{"nobody", "", "u1\x00"} {
		if got, err := db.UserSessions(ctx, user); len(got) != 0 || err != nil {
			t.Errorf("UserSessions(%q) = %v, %v; want none", user, got, err)
		}
	}
}

// userSessions returns db's UserSessions of user, failing the test on an error or a
// session of another user.
func userSessions(t *testing.T, db *DB, user string) []crdt.Session {
	t.Helper()
	got, err := db.UserSessions(context.Background(), user)
	if err != nil {
		t.Fatalf("UserSessions(%s): %v", user, err)
	}
	for _, s := range got {
		if s.UserID != user {
			t.Errorf("UserSessions(%s) holds session %s of %q", user, s.ID, s.UserID)
		}
	}
	return got
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestUserSessionsRevokedIndex: a session revoked by its own flag is passed over by the
// owner index's value, whichever way the revocation came (a local revocation, or a
// record that arrives revoked), and an entry written before the value was kept (present
// for a revoked session) is still left out, by reading the record.
func TestUserSessionsRevokedIndex(t *testing.T) {
	db := MustOpenDB(t, Options{})
	ctx := context.Background()
	merge(t, db, crdt.SessionKey("live"), newSession(db, "u1", 24*hour))
	merge(t, db, crdt.SessionKey("later"), newSession(db, "u1", 24*hour))
	merge(t, db, crdt.SessionKey("later"), crdt.RevokeSession(db.Clock().Next()))
	arrived := newSession(db, "u1", 24*hour)
	arrived.Merge(crdt.RevokeSession(db.Clock().Next()))
	merge(t, db, crdt.SessionKey("arrived"), arrived)
	merge(t, db, crdt.SessionKey("old"), newSession(db, "u1", 24*hour))
	merge(t, db, crdt.SessionKey("old"), crdt.RevokeSession(db.Clock().Next()))
	checkInvariants(t, db) // each revoked session's entry says so

	setEntry := func(id string, val []byte) {
		t.Helper()
		err := db.Update(ctx, func(tx *Tx) error {
			m, _, err := tx.Record(crdt.SessionKey(id))
			if err != nil {
				return err
			}
			return tx.b.userSessions.get().Put(indexFields(crdt.SessionKey(id), &m).byUser(), val)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ids := func() []string {
		t.Helper()
		var ids []string
		for _, s := range userSessions(t, db, "u1") {
			ids = append(ids, s.ID)
		}
		return ids
	}
	// "old" as a file of an earlier release holds it: revoked, its entry present.
	setEntry("old", present)
	defer setEntry("old", revokedSession) // as this release writes it, for the checks at Close
	if got, want := ids(), []string{"live"}; !equalStrings(got, want) {
		t.Errorf("UserSessions = %q, want %q", got, want)
	}
	// The value alone decides: an entry that says revoked is not read (here, wrongly, of
	// a live session).
	setEntry("live", revokedSession)
	if got := ids(); len(got) != 0 {
		t.Errorf("UserSessions with every entry saying revoked or revoked = %q, want none", got)
	}
	setEntry("live", present)
}
