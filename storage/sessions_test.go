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

	got, err := db.UserSessions(ctx, "u1")
	if err != nil {
		t.Fatalf("UserSessions: %v", err)
	}
	var ids []string
	for _, s := range got {
		ids = append(ids, s.ID)
		if s.UserID != "u1" {
			t.Errorf("session %s of %q", s.ID, s.UserID)
		}
	}
	if want := []string{"s4", "s3", "s2", "s1"}; !equalStrings(ids, want) {
		t.Errorf("UserSessions = %q, want %q (newest first)", ids, want)
	}
	if !got[2].Revoked || got[0].ActiveAt(clk.Now()) {
		t.Errorf("states: s2 revoked = %v, s4 active = %v", got[2].Revoked, got[0].ActiveAt(clk.Now()))
	}
	for _, user := range []string{"nobody", "", "u1\x00"} {
		if got, err := db.UserSessions(ctx, user); len(got) != 0 || err != nil {
			t.Errorf("UserSessions(%q) = %v, %v; want none", user, got, err)
		}
	}
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
