package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestAppend(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		db := MustOpenDB(t)
		conv := crdt.ConversationID("u2", "u1")
		var got []crdt.Entry
		update(t, db, func(tx *Tx) error {
			for i := range 3 {
				e, err := tx.Append(conv, crdt.Message{From: "u2", To: "u1", Body: fmt.Sprint(i)})
				if err != nil {
					return err
				}
				got = append(got, e)
			}
			return nil
		})
		for i, e := range got {
			if e.ID.Seq != uint64(i+1) || e.ID.Origin() != db.NodeID() {
				t.Errorf("entry %d ID = %+v, want seq %d from this node", i, e.ID, i+1)
			}
			if m, err := crdt.DecodeMessage(e.Data); err != nil || m.Body != fmt.Sprint(i) {
				t.Errorf("entry %d data = %+v, %v", i, m, err)
			}
		}
		// The counter survives a reopen.
		db2 := mustReopen(t, db, Options{})
		update(t, db2, func(tx *Tx) error {
			e, err := tx.Append(conv, crdt.Message{From: "u1", To: "u2", Body: "x"})
			if e.ID.Seq != 4 {
				t.Errorf("seq after reopen = %d, want 4", e.ID.Seq)
			}
			return err
		})
		checkInvariants(t, db2)
	})
	t.Run("FailedFunctionDoesNotConsumeSeq", func(t *testing.T) {
		db := MustOpenDB(t)
		_ = db.Update(context.Background(), func(tx *Tx) error {
			_, _ = tx.Append("a:b", crdt.Message{From: "a", To: "b"})
			return fmt.Errorf("no")
		})
		update(t, db, func(tx *Tx) error {
			e, err := tx.Append("a:b", crdt.Message{From: "a", To: "b"})
			if e.ID.Seq != 1 {
				t.Errorf("seq = %d, want 1", e.ID.Seq)
			}
			return err
		})
	})
	for _, tt := range []struct {
		name, conv string
		msg        crdt.Message
	}{
		{"ErrWrongConversation", "a:c", crdt.Message{From: "a", To: "b"}},
		{"ErrUnorderedConversation", "b:a", crdt.Message{From: "a", To: "b"}},
		{"ErrBadParticipant", "a/x:b", crdt.Message{From: "a/x", To: "b"}},
		{"ErrNoParticipant", ":b", crdt.Message{From: "", To: "b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := MustOpenDB(t)
			err := db.Update(context.Background(), func(tx *Tx) error {
				_, err := tx.Append(tt.conv, tt.msg)
				return err
			})
			if err == nil {
				t.Errorf("Append(%q, %+v) succeeded", tt.conv, tt.msg)
			}
		})
	}
}

// TestReadLogOracle delivers the entries of several origins in random order with
// duplicates, and after every delivery compares ReadLog with crdt.Log.Read, for a reader
// that pages through and for random cursors and limits.
func TestReadLogOracle(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	db := MustOpenDB(t)
	ctx := context.Background()
	const conv = "u1:u2"
	var all []crdt.Entry
	for o := range 4 {
		node := crdt.NodeID(o + 1)
		wall := int64(1000)
		for seq := uint64(1); seq <= 40; seq++ {
			wall += rng.Int64N(30) // clocks overlap across origins
			all = append(all, crdt.Entry{ID: crdt.EntryID{TS: ts(node, wall), Seq: seq}, Data: []byte(fmt.Sprintf("%d/%d", node, seq))})
		}
	}
	deliveries := append(slices.Clone(all), all[:len(all)/3]...)
	rng.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })

	var oracle crdt.Log
	var reader crdt.Cursor
	var readerGot []crdt.EntryID
	for len(deliveries) > 0 {
		n := min(len(deliveries), 1+rng.IntN(6))
		var cs []Change
		for _, e := range deliveries[:n] {
			cs = append(cs, Change{Key: LogKey(conv, e.ID), Conv: conv, Entry: e})
			oracle.Insert(e)
		}
		deliveries = deliveries[n:]
		if _, err := db.ApplyRemote(ctx, cs); err != nil {
			t.Fatal(err)
		}
		limit := rng.IntN(5)
		got, next, err := db.ReadLog(ctx, conv, reader, limit)
		if err != nil {
			t.Fatal(err)
		}
		want, wantNext := oracle.Read(reader, limit)
		if !sameEntries(got, want) || !equalCursor(next, wantNext) {
			t.Fatalf("ReadLog(%v, %d) = %v, %v; want %v, %v", reader, limit, ids(got), next, ids(want), wantNext)
		}
		for _, e := range got {
			readerGot = append(readerGot, e.ID)
		}
		reader = next
		// A random cursor.
		cur := crdt.Cursor{}
		for o := range 5 {
			if rng.IntN(2) == 0 {
				cur[crdt.NodeID(o+1)] = rng.Uint64N(45)
			}
		}
		got, next, _ = db.ReadLog(ctx, conv, cur, limit)
		want, wantNext = oracle.Read(cur, limit)
		if !sameEntries(got, want) || !equalCursor(next, wantNext) {
			t.Fatalf("ReadLog(%v, %d) = %v, %v; want %v, %v", cur, limit, ids(got), next, ids(want), wantNext)
		}
	}
	for {
		got, next, _ := db.ReadLog(ctx, conv, reader, 7)
		if len(got) == 0 {
			break
		}
		for _, e := range got {
			readerGot = append(readerGot, e.ID)
		}
		reader = next
	}
	// The reader saw every entry exactly once, however late it arrived.
	if len(readerGot) != len(all) {
		t.Errorf("reader got %d entries, want %d", len(readerGot), len(all))
	}
	seen := map[crdt.EntryID]bool{}
	for _, id := range readerGot {
		if seen[id] {
			t.Errorf("entry %+v read twice", id)
		}
		seen[id] = true
	}
	cs, _ := db.Conversations(ctx, "u1")
	if len(cs) != 1 || cs[0].Count != len(all) || cs[0].Last.ID != oracle.Entries()[oracle.Len()-1].ID {
		t.Errorf("Conversations = %+v", cs)
	}
}

func ids(es []crdt.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%d/%d", e.ID.Origin(), e.ID.Seq))
	}
	return out
}

func sameEntries(a, b []crdt.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y crdt.Entry) bool { return x.ID == y.ID && string(x.Data) == string(y.Data) })
}

func equalCursor(a, b crdt.Cursor) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func TestReadLog(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	t.Run("UnknownConversation", func(t *testing.T) {
		cur := crdt.Cursor{7: 3}
		got, next, err := db.ReadLog(ctx, "x:y", cur, 10)
		if len(got) != 0 || err != nil || !equalCursor(next, cur) {
			t.Errorf("ReadLog = %v, %v, %v", got, next, err)
		}
	})
	t.Run("HoldsBackGap", func(t *testing.T) {
		e := func(seq uint64) Change {
			en := crdt.Entry{ID: crdt.EntryID{TS: ts(9, int64(seq)), Seq: seq}, Data: crdt.Message{From: "a", To: "b", Body: fmt.Sprint(seq)}.AppendBinary(nil)}
			return Change{Key: LogKey("a:b", en.ID), Conv: "a:b", Entry: en}
		}
		if _, err := db.ApplyRemote(ctx, []Change{e(1), e(3)}); err != nil {
			t.Fatal(err)
		}
		got, next, _ := db.ReadLog(ctx, "a:b", nil, 0)
		if len(got) != 1 || next[9] != 1 {
			t.Fatalf("ReadLog with a gap = %v, %v; want entry 1 only", ids(got), next)
		}
		if _, err := db.ApplyRemote(ctx, []Change{e(2)}); err != nil {
			t.Fatal(err)
		}
		got, next, _ = db.ReadLog(ctx, "a:b", next, 0)
		if len(got) != 2 || next[9] != 3 {
			t.Errorf("ReadLog after the gap filled = %v, %v; want 2 and 3", ids(got), next)
		}
	})
}

func TestConversations(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	send := func(from, to string) {
		update(t, db, func(tx *Tx) error {
			_, err := tx.Append(crdt.ConversationID(from, to), crdt.Message{From: from, To: to, Body: from + ">" + to})
			return err
		})
		clk.Add(time.Second)
	}
	send("u1", "u2")
	send("u3", "u1")
	send("u2", "u1")
	send("u1", "u4")
	send("u2", "u3")
	got, err := db.Conversations(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	var with []string
	for _, c := range got {
		with = append(with, c.With)
	}
	if want := []string{"u4", "u2", "u3"}; !equalStrings(with, want) {
		t.Errorf("Conversations(u1) with %q, want %q (newest first)", with, want)
	}
	if c := got[1]; c.ID != "u1:u2" || c.Count != 2 {
		t.Errorf("conversation with u2 = %+v, want 2 entries", c)
	}
	if m, _ := crdt.DecodeMessage(got[1].Last.Data); m.Body != "u2>u1" {
		t.Errorf("last message with u2 = %q", m.Body)
	}
	if got, _ := db.Conversations(ctx, "nobody"); len(got) != 0 {
		t.Errorf("Conversations(nobody) = %v", got)
	}
}

// TestConflictingEntries covers two entries with one origin and seq (a node restored
// from an old copy of its file): every replica keeps the one with the lower ID.
func TestConflictingEntries(t *testing.T) {
	ctx := context.Background()
	lo := crdt.Entry{ID: crdt.EntryID{TS: ts(5, 100), Seq: 1}, Data: []byte("lo")}
	hi := crdt.Entry{ID: crdt.EntryID{TS: ts(5, 200), Seq: 1}, Data: []byte("hi")}
	ch := func(e crdt.Entry) Change { return Change{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: e} }
	a, b := MustOpenDB(t), MustOpenDB(t)
	if _, err := a.ApplyRemote(ctx, []Change{ch(lo)}); err != nil {
		t.Fatal(err)
	}
	res, _ := a.ApplyRemote(ctx, []Change{ch(hi)})
	if res.Unchanged != 1 {
		t.Errorf("losing entry: %+v, want unchanged", res)
	}
	if _, err := b.ApplyRemote(ctx, []Change{ch(hi)}); err != nil {
		t.Fatal(err)
	}
	if res, _ := b.ApplyRemote(ctx, []Change{ch(lo)}); res.Applied != 1 {
		t.Errorf("winning entry: %+v, want applied", res)
	}
	for _, db := range []*DB{a, b} {
		got, _, _ := db.ReadLog(ctx, "a:b", nil, 0)
		if len(got) != 1 || string(got[0].Data) != "lo" {
			t.Errorf("log = %v, want only the lower entry", ids(got))
		}
	}
	if a.Digest() != b.Digest() {
		t.Error("digests differ")
	}
}
