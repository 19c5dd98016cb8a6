package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	// Close removed the log: bbolt alone may open the file.
	if _, err := os.Stat(path + walSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a log after Close: %v", err)
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

// ownFields reports whether m holds a field stamped by node.
func ownFields(m crdt.Map, node crdt.NodeID) bool {
	for _, name := range m.Names() {
		if f, _ := m.Field(name); f.TS.Node == node {
			return true
		}
	}
	return false
}

// TestReplacedLostWrites: every way a stored record loses a write of ours without a
// later write of ours leaves a mark (found by an outside review): the erased record a
// peer replicates carries none of the profile, so merging it prunes our field with no
// later write to it; the erasure cascade deletes a session whose write of ours a remote
// write had replaced (its mark passes to the user record); a larger remote value
// replaces our max register (a revocation).
func TestReplacedLostWrites(t *testing.T) {
	const other crdt.NodeID = 99
	t.Run("ErasureFiltersOurField", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		base := db.Clock().Next()
		theirs := crdt.NewUser("alice", "hash", map[string]string{crdt.FieldEmail: "a@example.com"}, ts(other, base.Wall))
		mustApply(t, db, Change{Key: key, Map: theirs})
		var edit crdt.Map
		own := db.Clock().Next()
		edit.Set(crdt.FieldFirstName, []byte("by-us"), own)
		merge(t, db, key, edit)
		erased := theirs.Clone() // what the eraser stores, and replicates
		erased.Merge(crdt.EraseUser(ts(other, own.Wall+1)))
		drop := filtered(crdt.UserPrefix, &erased)
		erased.Prune(func(name string, _ crdt.Field) bool { return drop(name) })
		mustApply(t, db, Change{Key: key, Map: erased})
		m, ok := mustRecord(t, db, key)
		if !ok || ownFields(m, db.NodeID()) {
			t.Fatalf("record %v (stored %v): want the erased record, without our field", m.Names(), ok)
		}
		if got, ok := replacedOf(t, db, key); !ok || got != own {
			t.Errorf("Replaced = %v, %v; want our pruned write %v", got, ok, own)
		}
	})
	t.Run("CascadeKeepsSessionMark", func(t *testing.T) {
		db := MustOpenDB(t)
		user, sess := crdt.UserKey("u1"), crdt.SessionKey("s1")
		base := db.Clock().Next()
		mustApply(t, db, Change{Key: user, Map: crdt.NewUser("alice", "hash", nil, ts(other, base.Wall))})
		created := ts(other, base.Wall+1)
		mustApply(t, db, Change{Key: sess, Map: crdt.NewSession("u1", created.Time().Add(24*time.Hour), time.Hour, created)})
		var data, over crdt.Map
		own := db.Clock().Next()
		data.Set(crdt.DataPrefix+"k", []byte(`1`), own)
		merge(t, db, sess, data)
		over.Set(crdt.DataPrefix+"k", []byte(`2`), ts(other, own.Wall+1))
		mustApply(t, db, Change{Key: sess, Map: over})
		mustApply(t, db, Change{Key: user, Map: crdt.EraseUser(ts(other, own.Wall+2))})
		if _, ok := mustRecord(t, db, sess); ok {
			t.Fatal("the session survived the erasure")
		}
		if got, ok := replacedOf(t, db, sess); ok {
			t.Errorf("Replaced(session) = %v after the session was deleted", got)
		}
		if got, ok := replacedOf(t, db, user); !ok || got != own {
			t.Errorf("Replaced(user) = %v, %v; want the deleted session's lost write of ours %v", got, ok, own)
		}
	})
	t.Run("LargerRevocation", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		base := db.Clock().Next()
		mustApply(t, db, Change{Key: key, Map: crdt.NewUser("alice", "hash", nil, ts(other, base.Wall))})
		own := db.Clock().Next()
		merge(t, db, key, crdt.RevokeSessionsUntil(own, time.Second))
		mustApply(t, db, Change{Key: key, Map: crdt.RevokeSessionsUntil(ts(other, own.Wall+10), time.Second)})
		if m, _ := mustRecord(t, db, key); ownFields(m, db.NodeID()) {
			t.Fatalf("record %v still shows our revocation: the test no longer replaces it", m.Names())
		}
		if got, ok := replacedOf(t, db, key); !ok || got != own {
			t.Errorf("Replaced = %v, %v; want our replaced revocation %v", got, ok, own)
		}
	})
}

// TestReplacedUndecodable: Check reports a mark that does not decode, and Replaced counts
// it as a mark (of no known time) rather than failing every handoff round that reads it.
func TestReplacedUndecodable(t *testing.T) {
	db := MustOpenDB(t)
	key := crdt.UserKey("u1")
	merge(t, db, key, newUser(db, "alice"))
	path := db.Path()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(btx *bolt.Tx) error { return btx.Bucket(bucketReplaced).Put([]byte(key), []byte{1, 2, 3}) })
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(path); err == nil {
		t.Error("Check passed a file with an undecodable replaced write")
	}
	db2, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	got, err := db2.Replaced(context.Background(), []string{key})
	if err != nil {
		t.Fatalf("Replaced = %v", err)
	}
	if ts, ok := got[key]; !ok || !ts.IsZero() {
		t.Errorf("Replaced = %v, %v; want a mark of no known time", ts, ok)
	}
}

// TestRevokedSessionShedsData: a revoked session keeps none of its data, whichever order
// the revocation and data writes arrive in, so that signing in and out in a loop leaves
// small records behind (found by an outside review); a remote revocation that sheds a
// write of ours marks it replaced.
func TestRevokedSessionShedsData(t *testing.T) {
	const other crdt.NodeID = 99
	big := []byte(`"` + strings.Repeat("x", 60<<10) + `"`)
	a, b := MustOpenDB(t), MustOpenDB(t)
	sess := crdt.SessionKey("s1")
	base := a.Clock().Next()
	created := crdt.NewSession("u1", base.Time().Add(24*time.Hour), time.Hour, base)
	var data crdt.Map
	data.Set(crdt.DataPrefix+"k", big, a.Clock().Next())
	revoke := crdt.RevokeSession(ts(other, a.Clock().Next().Wall+1))

	merge(t, a, sess, created)
	merge(t, a, sess, data) // a write of a's own
	mustApply(t, a, Change{Key: sess, Map: revoke})
	mustApply(t, b, Change{Key: sess, Map: revoke}, Change{Key: sess, Map: created})
	mustApply(t, b, Change{Key: sess, Map: data}) // after the revocation: dropped

	for name, db := range map[string]*DB{"data first": a, "revocation first": b} {
		m, ok := mustRecord(t, db, sess)
		if !ok {
			t.Fatalf("%s: session not stored", name)
		}
		if _, revoked := m.Flag(crdt.FieldRevoked); !revoked {
			t.Fatalf("%s: session not revoked", name)
		}
		for _, f := range m.Names() {
			if strings.HasPrefix(f, crdt.DataPrefix) {
				t.Errorf("%s: the revoked session keeps data field %q", name, f)
			}
		}
		if n := m.EncodedLen(); n > 1024 {
			t.Errorf("%s: the revoked session is %d bytes", name, n)
		}
		checkInvariants(t, db)
	}
	ma, _ := mustRecord(t, a, sess)
	mb, _ := mustRecord(t, b, sess)
	if !ma.Equal(mb) {
		t.Errorf("the two orders disagree: %v and %v", ma.Names(), mb.Names())
	}
	if got, ok := replacedOf(t, a, sess); !ok || got.Node != a.NodeID() {
		t.Errorf("Replaced = %v, %v; want a's shed data write", got, ok)
	}
}

// TestRevokeNearMaxRecord: a revocation of a session near MaxRecord is applied, local or
// remote: the record is filtered before it is measured (found by an outside review: the
// revocation was refused as too large, so one replica kept the session usable).
func TestRevokeNearMaxRecord(t *testing.T) {
	for _, remote := range []bool{false, true} {
		db := MustOpenDB(t)
		sess := crdt.SessionKey("s1")
		base := db.Clock().Next()
		merge(t, db, sess, crdt.NewSession("u1", base.Time().Add(24*time.Hour), time.Hour, base))
		var data crdt.Map
		ts := db.Clock().Next()
		for i := 0; ; i++ {
			var one crdt.Map
			one.Set(fmt.Sprintf("%sk%04d", crdt.DataPrefix, i), []byte(`"`+strings.Repeat("x", 16<<10)+`"`), ts)
			cur, _ := mustRecord(t, db, sess)
			if cur.EncodedLen()+data.EncodedLen()+one.EncodedLen() > MaxRecord-8 {
				break
			}
			data.Merge(one)
		}
		merge(t, db, sess, data)
		cur, _ := mustRecord(t, db, sess)
		var last crdt.Map // fill what is left but a few bytes
		last.Set(crdt.DataPrefix+"last", []byte(`"`+strings.Repeat("y", MaxRecord-cur.EncodedLen()-40)+`"`), ts)
		merge(t, db, sess, last)
		if cur, _ = mustRecord(t, db, sess); cur.EncodedLen() < MaxRecord-32 {
			t.Fatalf("the session is %d bytes, not near MaxRecord %d", cur.EncodedLen(), MaxRecord)
		}
		revoke := crdt.RevokeSession(db.Clock().Next())
		if remote {
			if res := mustApply(t, db, Change{Key: sess, Map: revoke}); res.Applied != 1 {
				t.Fatalf("remote revocation near MaxRecord: %+v, want applied", res)
			}
		} else {
			merge(t, db, sess, revoke)
		}
		m, _ := mustRecord(t, db, sess)
		if _, revoked := m.Flag(crdt.FieldRevoked); !revoked || m.EncodedLen() > 1024 {
			t.Errorf("remote=%v: revoked %v, %d bytes; want revoked and small", remote, revoked, m.EncodedLen())
		}
	}
}
