package storage

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// markersOf returns the erasure markers of conv stored in db, in log order (ReadLog
// never returns them).
func markersOf(tb testing.TB, db *DB, conv string) []crdt.Entry {
	tb.Helper()
	es := storedEntries(tb, db, conv)
	return slices.DeleteFunc(es, func(e crdt.Entry) bool { return !crdt.IsErasureMarker(e.Data) })
}

// storedEntries returns every entry of conv stored in db, markers included, in log order.
func storedEntries(tb testing.TB, db *DB, conv string) []crdt.Entry {
	tb.Helper()
	settled(tb, db)
	var out []crdt.Entry
	err := db.bolt.View(func(btx *bolt.Tx) error {
		prefix := convPrefix(conv)
		c := btx.Bucket(bucketLog).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeStoredEntry(prefix, k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("read log %q: %v", conv, err)
	}
	return out
}

// entryChange returns the change of a remote entry of conv: msg appended by origin at
// wall time w with sequence number seq.
func entryChange(conv string, origin crdt.NodeID, w int64, seq uint64, msg crdt.Message) Change {
	e := crdt.Entry{ID: crdt.EntryID{TS: ts(origin, w), Seq: seq}, Data: msg.AppendBinary(nil)}
	return Change{Key: LogKey(conv, e.ID), Conv: conv, Entry: e}
}

func mustApply(tb testing.TB, db *DB, cs ...Change) ApplyResult {
	tb.Helper()
	res, err := db.ApplyRemote(context.Background(), cs)
	if err != nil {
		tb.Fatalf("ApplyRemote: %v", err)
	}
	return res
}

func isErased(tb testing.TB, db *DB, user string) bool {
	tb.Helper()
	settled(tb, db)
	var v []byte
	_ = db.bolt.View(func(btx *bolt.Tx) error {
		v = bytes.Clone(btx.Bucket(bucketErased).Get([]byte(user)))
		return nil
	})
	return v != nil
}

// A replica that holds a conversation but not the erased user's record (it holds only
// the other participant's partition) learns of the erasure from the marker alone.
func TestMarkerRemote(t *testing.T) {
	ctx := context.Background()
	now := newTestClock()
	wall := now.Now().UnixNano()
	db := MustOpenDB(t, Options{Now: now.Now})
	// b's partition only: b's record, conversations a:b and b:c. a's record is elsewhere.
	merge(t, db, crdt.UserKey("b"), newUser(db, "bob"))
	var cs []Change
	for i := range uint64(3) {
		cs = append(cs, entryChange("a:b", 7, wall+int64(i), i+1, crdt.Message{From: "a", To: "b", Body: fmt.Sprint(i)}))
		cs = append(cs, entryChange("b:c", 8, wall+int64(i), i+1, crdt.Message{From: "c", To: "b", Body: fmt.Sprint(i)}))
	}
	mustApply(t, db, cs...)
	marker := entryChange("a:b", 9, wall+10, 1, crdt.ErasureMarker("a", "b"))

	t.Run("DeletesTheConversation", func(t *testing.T) {
		if res := mustApply(t, db, marker); res.Applied != 1 {
			t.Fatalf("ApplyRemote(marker) = %+v, want applied", res)
		}
		if es := storedEntries(t, db, "a:b"); len(es) != 1 || es[0].ID != marker.Entry.ID {
			t.Errorf("a:b holds %d entries, want the marker alone", len(es))
		}
		if !isErased(t, db, "a") {
			t.Error("a not marked erased")
		}
		if es, _, _ := db.ReadLog(ctx, "a:b", nil, 0); len(es) != 0 {
			t.Errorf("ReadLog(a:b) = %d entries, want none", len(es))
		}
		for _, u := range []string{"a", "b"} {
			convs, _ := db.Conversations(ctx, u)
			for _, c := range convs {
				if c.ID == "a:b" {
					t.Errorf("Conversations(%s) lists a:b", u)
				}
			}
		}
		if es, _, _ := db.ReadLog(ctx, "b:c", nil, 0); len(es) != 3 {
			t.Errorf("ReadLog(b:c) = %d entries, want 3: another conversation", len(es))
		}
		if st, _ := db.Stats(ctx); st.Messages != 3 {
			t.Errorf("Stats.Messages = %d, want 3 (b:c; a marker is no message)", st.Messages)
		}
		// The marker is replicated state: listed, hashed and in the digest.
		if got, _ := db.Changes(ctx, []string{marker.Key}); len(got) != 1 {
			t.Error("Changes does not return the marker")
		}
		checkInvariants(t, db)
	})
	t.Run("DropsLaterEntries", func(t *testing.T) {
		late := entryChange("a:b", 7, wall+20, 4, crdt.Message{From: "b", To: "a", Body: "late"})
		if res := mustApply(t, db, late); res.Dropped != 1 {
			t.Errorf("ApplyRemote(late entry) = %+v, want dropped", res)
		}
		// It holds a marker: it leaves none of its own.
		if es := storedEntries(t, db, "a:b"); len(es) != 1 {
			t.Errorf("a:b holds %d entries, want the marker alone", len(es))
		}
		err := db.Update(ctx, func(tx *Tx) error {
			_, err := tx.Append("a:b", crdt.Message{From: "b", To: "a", Body: "late"})
			return err
		})
		if err == nil {
			t.Error("Append to a conversation with a marker succeeded")
		}
	})
	t.Run("MarkersCoexist", func(t *testing.T) {
		other := entryChange("a:b", 10, wall+5, 1, crdt.ErasureMarker("a", "b"))
		if res := mustApply(t, db, other, marker); res.Applied != 1 || res.Unchanged != 1 {
			t.Errorf("ApplyRemote(second marker, first again) = %+v, want 1 applied, 1 unchanged", res)
		}
		if ms := markersOf(t, db, "a:b"); len(ms) != 2 {
			t.Errorf("a:b holds %d markers, want both", len(ms))
		}
		checkInvariants(t, db)
	})
	t.Run("SameBatchAsMessages", func(t *testing.T) {
		// Markers apply before messages, whatever the order in the batch: a:d's message,
		// listed first, is dropped and leaves no marker beside the one that came with it.
		msg := entryChange("a:d", 7, wall+30, 1, crdt.Message{From: "d", To: "a", Body: "hi"})
		m := entryChange("a:d", 9, wall+31, 1, crdt.ErasureMarker("a", "d"))
		if res := mustApply(t, db, msg, m); res.Applied != 1 || res.Dropped != 1 {
			t.Errorf("ApplyRemote(message, marker) = %+v, want 1 applied, 1 dropped", res)
		}
		if es := storedEntries(t, db, "a:d"); len(es) != 1 || es[0].ID != m.Entry.ID {
			t.Errorf("a:d holds %d entries, want the marker alone", len(es))
		}
	})
	t.Run("RecordArrivesLater", func(t *testing.T) {
		// The erased record itself: the cascade keeps the markers and leaves none.
		u := crdt.NewUser("alice", "h", nil, ts(7, wall))
		u.Merge(crdt.EraseUser(ts(7, wall+1)))
		mustApply(t, db, Change{Key: crdt.UserKey("a"), Map: u})
		if ms := markersOf(t, db, "a:b"); len(ms) != 2 {
			t.Errorf("a:b holds %d markers after the cascade, want 2", len(ms))
		}
		checkInvariants(t, db)
	})
}

// Applying the same entries and markers in any order and batching gives every replica
// the same stored state: the markers and the conversations without an erased
// participant. (Replicas that hold no erased record and receive no message after its
// conversation's marker leave no marker of their own, so nothing is left to chance.)
// rapid prints the seed of a failing case; replay it with -rapid.seed.
func TestMarkerConverges(t *testing.T) {
	now := newTestClock()
	wall := now.Now().UnixNano()
	var fixed []Change
	for i := range uint64(4) {
		fixed = append(fixed,
			entryChange("a:b", 1, wall+int64(i), i+1, crdt.Message{From: "a", To: "b", Body: fmt.Sprint(i)}),
			entryChange("a:b", 2, wall+int64(2*i), i+1, crdt.Message{From: "b", To: "a", Body: fmt.Sprint(i)}),
			entryChange("b:c", 3, wall+int64(i), i+1, crdt.Message{From: "b", To: "c", Body: fmt.Sprint(i)}))
	}
	// Markers from three nodes, one of them an origin of a:b's messages (a later seq).
	markers := []Change{
		entryChange("a:b", 1, wall+3, 5, crdt.ErasureMarker("a", "b")),
		entryChange("a:b", 4, wall+1, 1, crdt.ErasureMarker("a", "b")),
		entryChange("a:b", 5, wall+9, 1, crdt.ErasureMarker("a", "b")),
	}
	open := func() *DB {
		db, err := Open(t.TempDir()+"/data.db", Options{Now: now.Now, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, len(markers)).Draw(rt, "markers")
		all := append(slices.Clone(fixed), markers[:n]...)
		var first []string
		var digest crdt.Digest
		for r := range 3 {
			cs := rapid.Permutation(all).Draw(rt, fmt.Sprintf("order%d", r))
			db := open()
			for len(cs) > 0 {
				k := rapid.IntRange(1, len(cs)).Draw(rt, "batch")
				if _, err := db.ApplyRemote(context.Background(), cs[:k]); err != nil {
					rt.Fatalf("ApplyRemote: %v", err)
				}
				cs = cs[k:]
			}
			checkInvariants(t, db)
			got := contents(t, db, nil)
			d := db.Digest()
			if err := db.Close(); err != nil {
				rt.Fatal(err)
			}
			if r == 0 {
				first, digest = got, d
				want := len(fixed)/3 + n // b:c's messages and the markers
				if len(got) != want {
					rt.Fatalf("replica holds %d keys, want %d: b:c's messages and %d markers", len(got), want, n)
				}
				continue
			}
			if !slices.Equal(got, first) || d != digest {
				rt.Fatalf("replica %d differs from replica 0 (%d and %d keys)", r, len(got), len(first))
			}
		}
	})
}

// A node that knows the user is erased and receives a message of a conversation it never
// had (one started concurrently with the erasure) leaves a marker of its own in it, once,
// so that the holders of the other participant's partition learn of the erasure.
func TestMarkerDerived(t *testing.T) {
	ctx := context.Background()
	now := newTestClock()
	wall := now.Now().UnixNano()
	var committed []Change
	n := MustOpenDB(t, Options{Now: now.Now, OnCommit: func(cs []Change) { committed = append(committed, cs...) }})
	merge(t, n, crdt.UserKey("a"), newUser(n, "alice"))
	merge(t, n, crdt.UserKey("a"), crdt.EraseUser(n.Clock().Next()))
	// Replica r holds c's partition: it received the conversation before anyone erased.
	r := MustOpenDB(t, Options{Now: now.Now})
	var conv []Change
	for i := range uint64(3) {
		conv = append(conv, entryChange("a:c", 7, wall+int64(i), i+1, crdt.Message{From: "c", To: "a", Body: fmt.Sprint(i)}))
	}
	mustApply(t, r, conv...)

	committed = nil
	if res := mustApply(t, n, conv...); res.Dropped != 3 {
		t.Fatalf("ApplyRemote = %+v, want 3 dropped", res)
	}
	ms := markersOf(t, n, "a:c")
	if len(ms) != 1 {
		t.Fatalf("n holds %d markers of a:c, want one for the batch", len(ms))
	}
	m, _ := crdt.DecodeMessage(ms[0].Data)
	if m != crdt.ErasureMarker("a", "c") || ms[0].ID.Origin() != n.NodeID() {
		t.Errorf("marker = %+v from %v, want a's from n (%v)", m, ms[0].ID.Origin(), n.NodeID())
	}
	if len(committed) != 1 || committed[0].Key != LogKey("a:c", ms[0].ID) {
		t.Errorf("OnCommit reported %d changes, want the marker (it is replicated like any entry)", len(committed))
	}
	if st, _ := n.Stats(ctx); st.Messages != 0 {
		t.Errorf("n holds %d messages, want none", st.Messages)
	}
	// Another late message: n holds a marker now, and leaves no second one.
	mustApply(t, n, entryChange("a:c", 7, wall+9, 4, crdt.Message{From: "c", To: "a", Body: "more"}))
	if ms := markersOf(t, n, "a:c"); len(ms) != 1 {
		t.Errorf("n holds %d markers of a:c after another message, want 1", len(ms))
	}

	// r learns of the erasure from n's marker and deletes its copy.
	cs, err := n.Changes(ctx, []string{LogKey("a:c", ms[0].ID)})
	if err != nil || len(cs) != 1 {
		t.Fatalf("Changes = %v, %v", cs, err)
	}
	mustApply(t, r, cs...)
	if es := storedEntries(t, r, "a:c"); len(es) != 1 || !crdt.IsErasureMarker(es[0].Data) {
		t.Errorf("r holds %d entries of a:c, want n's marker alone", len(es))
	}
	if convs, _ := r.Conversations(ctx, "c"); len(convs) != 0 {
		t.Errorf("Conversations(c) on r = %+v, want none", convs)
	}
	// Both now hold the conversation's key space alike.
	exchange(t, n, r)
	if markersOf(t, n, "a:c")[0].ID != markersOf(t, r, "a:c")[0].ID {
		t.Error("n and r hold different markers")
	}
	checkInvariants(t, n)
	checkInvariants(t, r)
}

// The handlers' erasure: markers appended in the function that erases the user stay,
// and the cascade leaves no marker of its own where the function left one. A message of
// the user's appended in the same function is dropped.
func TestMarkerSameFunctionAsErasure(t *testing.T) {
	db := MustOpenDB(t)
	seedErasure(t, db)
	update(t, db, func(tx *Tx) error {
		if _, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2", Body: "last words"}); err != nil {
			return err
		}
		for _, with := range []string{"u2", "u3"} {
			if _, err := tx.Append(crdt.ConversationID("u1", with), crdt.ErasureMarker("u1", with)); err != nil {
				return err
			}
		}
		_, err := tx.Merge(crdt.UserKey("u1"), crdt.EraseUser(db.Clock().Next()))
		return err
	})
	checkErased(t, db)
	for _, conv := range []string{"u1:u2", "u1:u3"} {
		ms := markersOf(t, db, conv)
		if len(ms) != 1 {
			t.Errorf("%s holds %d markers, want the function's one", conv, len(ms))
		}
		if es := storedEntries(t, db, conv); len(es) != len(ms) {
			t.Errorf("%s holds %d entries besides its markers", conv, len(es)-len(ms))
		}
	}
	// A marker's sequence number follows the node's messages in the conversation, so it
	// never collides with one still held elsewhere.
	if ms := markersOf(t, db, "u1:u2"); ms[0].ID.Seq != 4 {
		t.Errorf("marker of u1:u2 has seq %d, want 4 (after the two messages and the one this function appended)", ms[0].ID.Seq)
	}
	err := db.Update(context.Background(), func(tx *Tx) error {
		_, err := tx.Append("u1:u2", crdt.Message{From: "u2", To: "u1", Body: "x", Erased: true})
		return err
	})
	if err == nil {
		t.Error("Append of a marker with a body succeeded")
	}
}

func TestMarkerMalformed(t *testing.T) {
	db := MustOpenDB(t)
	e := crdt.Entry{ID: crdt.EntryID{TS: ts(1, 1), Seq: 1}, Data: crdt.ErasureMarker("a", "c").AppendBinary(nil)}
	for _, c := range []Change{
		{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: e}, // of another conversation
		{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: crdt.Entry{ID: e.ID, Data: []byte{2, 1, 'a'}}},
	} {
		if _, err := db.ApplyRemote(context.Background(), []Change{c}); err == nil {
			t.Errorf("ApplyRemote(%x) succeeded, want a malformed change", c.Entry.Data)
		}
		if _, err := DecodeChange(c.AppendBinary(nil)); err == nil {
			t.Errorf("DecodeChange(%x) succeeded, want a malformed change", c.Entry.Data)
		}
	}
}

// Drop stops storing a conversation's markers like any entries (their holders keep
// them), and a marker the node leaves there later still takes a fresh sequence number.
func TestMarkerDrop(t *testing.T) {
	ctx := context.Background()
	now := newTestClock()
	wall := now.Now().UnixNano()
	db := MustOpenDB(t, Options{Now: now.Now})
	merge(t, db, crdt.UserKey("a"), newUser(db, "alice"))
	merge(t, db, crdt.UserKey("a"), crdt.EraseUser(db.Clock().Next()))
	mustApply(t, db, entryChange("a:c", 7, wall, 1, crdt.Message{From: "c", To: "a", Body: "hi"}))
	ms := markersOf(t, db, "a:c")
	if len(ms) != 1 || ms[0].ID.Seq != 1 {
		t.Fatalf("markers of a:c = %v, want one of seq 1", ms)
	}
	key := LogKey("a:c", ms[0].ID)
	n, err := db.Drop(ctx, []KeyHash{{Key: key, Hash: pairsOf(t, db)[key]}})
	if err != nil || n != 1 {
		t.Fatalf("Drop = %d, %v; want the marker dropped", n, err)
	}
	if es := storedEntries(t, db, "a:c"); len(es) != 0 {
		t.Errorf("a:c holds %d entries after the drop", len(es))
	}
	checkInvariants(t, db)
	mustApply(t, db, entryChange("a:c", 7, wall+1, 2, crdt.Message{From: "c", To: "a", Body: "again"}))
	if ms := markersOf(t, db, "a:c"); len(ms) != 1 || ms[0].ID.Seq != 2 {
		t.Errorf("markers of a:c = %v, want a new one of seq 2: seq 1 lives on at the holders", ms)
	}
}
