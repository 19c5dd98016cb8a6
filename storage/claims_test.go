package storage

import (
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

// TestContested: a name becomes contested when its claim record names a second account,
// locally or by replication, and stays so across a restart.
func TestContested(t *testing.T) {
	db := MustOpenDB(t)
	merge(t, db, crdt.ClaimKey("alice"), crdt.NewClaim("a1", ts(1, 10)))
	merge(t, db, crdt.ClaimKey("bob"), crdt.NewClaim("b1", ts(1, 11)))
	if db.Contested("alice") || db.Contested("bob") {
		t.Fatal("a name with one claim is contested")
	}
	res, err := db.ApplyRemote(t.Context(), []Change{{Key: crdt.ClaimKey("alice"), Map: crdt.NewClaim("a2", ts(2, 9))}})
	if err != nil || res.Applied != 1 {
		t.Fatalf("ApplyRemote = %+v, %v", res, err)
	}
	if !db.Contested("alice") || db.Contested("bob") {
		t.Fatalf("Contested(alice)=%v, Contested(bob)=%v, want true, false", db.Contested("alice"), db.Contested("bob"))
	}
	db = mustReopen(t, db, Options{})
	if !db.Contested("alice") || db.Contested("bob") {
		t.Fatalf("after reopening: Contested(alice)=%v, Contested(bob)=%v, want true, false", db.Contested("alice"), db.Contested("bob"))
	}
}
