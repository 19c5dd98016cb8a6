package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// replacedOf returns db.Replaced of one key.
func replacedOf(t *testing.T, db *DB, key string) (crdt.Timestamp, bool) {
	t.Helper()
	got, err := db.Replaced(context.Background(), []string{key})
	if err != nil {
		t.Fatalf("Replaced(%s): %v", key, err)
	}
	ts, ok := got[key]
	return ts, ok
}

// TestReplacedRecord: a write of ours that a remote write replaced is remembered in the
// file (across reopening, and beyond the in-memory Overtaken's reach), until the record
// is dropped; a later replaced write moves the mark forward, an earlier one does not.
func TestReplacedRecord(t *testing.T) {
	ctx := context.Background()
	db := MustOpenDB(t)
	key := crdt.UserKey("u1")
	merge(t, db, key, newUser(db, "alice"))
	if _, ok := replacedOf(t, db, key); ok {
		t.Fatal("Replaced before any remote write")
	}
	var edit crdt.Map
	own := db.Clock().Next()
	edit.Set(crdt.FieldEmail, []byte("mine@example.com"), own)
	merge(t, db, key, edit)
	var other crdt.Map // a field we never wrote: replaces nothing of ours
	other.Set("nickname", []byte("Al"), crdt.Timestamp{Wall: own.Wall + 1, Node: 99})
	mustApply(t, db, Change{Key: key, Map: other})
	if ts, ok := replacedOf(t, db, key); ok {
		t.Fatalf("Replaced = %v after a remote write of another field", ts)
	}
	var remote crdt.Map
	remote.Set(crdt.FieldEmail, []byte("theirs@example.com"), crdt.Timestamp{Wall: own.Wall + 2, Node: 99})
	mustApply(t, db, Change{Key: key, Map: remote})
	if ts, ok := replacedOf(t, db, key); !ok || ts != own {
		t.Fatalf("Replaced = %v, %v; want our replaced write %v", ts, ok, own)
	}

	db = mustReopen(t, db, Options{})
	if _, ok := db.Overtaken(key); ok {
		t.Error("Overtaken remembered across a restart: the test no longer tells the two apart")
	}
	if ts, ok := replacedOf(t, db, key); !ok || ts != own {
		t.Fatalf("after reopening, Replaced = %v, %v; want %v", ts, ok, own)
	}

	// The first name: written by us, then replaced. The mark moves to the later write.
	var first crdt.Map
	later := db.Clock().Next()
	first.Set(crdt.FieldFirstName, []byte("Al"), later)
	merge(t, db, key, first)
	var over crdt.Map
	over.Set(crdt.FieldFirstName, []byte("Alice"), crdt.Timestamp{Wall: later.Wall + 1, Node: 99})
	mustApply(t, db, Change{Key: key, Map: over})
	if ts, ok := replacedOf(t, db, key); !ok || ts != later {
		t.Fatalf("Replaced = %v, %v; want the later replaced write %v", ts, ok, later)
	}
	checkInvariants(t, db)

	n, err := db.Drop(ctx, []KeyHash{{Key: key, Hash: pairsOf(t, db)[key]}})
	if err != nil || n != 1 {
		t.Fatalf("Drop = %d, %v", n, err)
	}
	if ts, ok := replacedOf(t, db, key); ok {
		t.Errorf("Replaced = %v after the record was dropped", ts)
	}
	db = mustReopen(t, db, Options{})
	if ts, ok := replacedOf(t, db, key); ok {
		t.Errorf("Replaced = %v after the drop and a reopening", ts)
	}
}

// TestReplacedConversation: an erasure marker that purges messages of ours leaves a mark
// for the conversation, which every key of it (its marker) answers to, until Drop
// removes the conversation; one that purges only other origins' messages leaves none.
func TestReplacedConversation(t *testing.T) {
	ctx := context.Background()
	now := newTestClock()
	wall := now.Now().UnixNano()
	db := MustOpenDB(t, Options{Now: now.Now})
	merge(t, db, crdt.UserKey("b"), newUser(db, "bob"))
	var mine crdt.Entry
	update(t, db, func(tx *Tx) error {
		var err error
		mine, err = tx.Append("a:b", crdt.Message{From: "b", To: "a", Body: "ours"})
		return err
	})
	mustApply(t, db,
		entryChange("a:b", 7, wall, 1, crdt.Message{From: "a", To: "b", Body: "theirs"}),
		entryChange("b:c", 8, wall, 1, crdt.Message{From: "c", To: "b", Body: "not ours"}))

	markAB := entryChange("a:b", 9, mine.ID.TS.Wall+10, 1, crdt.ErasureMarker("a", "b"))
	markBC := entryChange("b:c", 9, wall+10, 2, crdt.ErasureMarker("c", "b"))
	mustApply(t, db, markAB, markBC)
	if es := storedEntries(t, db, "a:b"); len(es) != 1 {
		t.Fatalf("a:b holds %d entries, want the marker alone", len(es))
	}
	if ts, ok := replacedOf(t, db, markAB.Key); !ok || ts != mine.ID.TS {
		t.Errorf("Replaced(a:b's marker) = %v, %v; want our purged message %v", ts, ok, mine.ID.TS)
	}
	if ts, ok := replacedOf(t, db, markBC.Key); ok {
		t.Errorf("Replaced(b:c's marker) = %v: the marker purged none of ours", ts)
	}
	db = mustReopen(t, db, Options{Now: now.Now})
	if _, ok := replacedOf(t, db, markAB.Key); !ok {
		t.Error("the conversation's mark did not survive reopening")
	}
	checkInvariants(t, db)

	n, err := db.Drop(ctx, []KeyHash{{Key: markAB.Key, Hash: pairsOf(t, db)[markAB.Key]}})
	if err != nil || n != 1 {
		t.Fatalf("Drop = %d, %v", n, err)
	}
	if ts, ok := replacedOf(t, db, markAB.Key); ok {
		t.Errorf("Replaced = %v after the conversation was dropped", ts)
	}
}

// TestReplacedReidentify: a restored copy speaks for a new node ID, so it starts with no
// replaced writes: the old ID's are not its own.
func TestReplacedReidentify(t *testing.T) {
	db := MustOpenDB(t)
	key := crdt.UserKey("u1")
	merge(t, db, key, newUser(db, "alice"))
	var edit, remote crdt.Map
	own := db.Clock().Next()
	edit.Set(crdt.FieldEmail, []byte("mine@example.com"), own)
	merge(t, db, key, edit)
	remote.Set(crdt.FieldEmail, []byte("theirs@example.com"), crdt.Timestamp{Wall: own.Wall + 1, Node: 99})
	mustApply(t, db, Change{Key: key, Map: remote})

	path := filepath.Join(t.TempDir(), "copy.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Backup(f, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(path); err != nil {
		t.Fatalf("Check of the copy: %v", err)
	}
	if _, _, err := Reidentify(path); err != nil {
		t.Fatal(err)
	}
	copied, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer copied.Close()
	if ts, ok := replacedOf(t, copied, key); ok {
		t.Errorf("the reidentified copy remembers %v as its own replaced write", ts)
	}
	if _, ok := replacedOf(t, db, key); !ok {
		t.Error("the original lost its mark")
	}
}

// TestCheckWithoutReplaced: a file that an older build of format 3 wrote lacks the
// replaced bucket; Check accepts it, and Open creates the bucket without a migration.
func TestCheckWithoutReplaced(t *testing.T) {
	db := MustOpenDB(t)
	merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
	path := db.Path()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Close checkpointed: the log is empty, and its header would restore the file's meta.
	if err := os.Remove(path + "-wal"); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(btx *bolt.Tx) error { return btx.DeleteBucket(bucketReplaced) })
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(path); err != nil {
		t.Fatalf("Check(a file without the replaced bucket) = %v", err)
	}
	var steps []uint64
	db2, err := Open(path, Options{Logger: testLogger(t), OnMigrate: func(from, _ uint64) { steps = append(steps, from) }})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if len(steps) != 0 {
		t.Errorf("migration steps from %v, want none", steps)
	}
	if _, err := db2.Replaced(context.Background(), []string{crdt.UserKey("u1")}); err != nil {
		t.Errorf("Replaced after reopening: %v", err)
	}
	checkInvariants(t, db2)
}
