package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestLogKey(t *testing.T) {
	id := crdt.EntryID{TS: crdt.Timestamp{Wall: 12345, Logical: 6, Node: 0xabc}, Seq: 7}
	key := LogKey("u1:u2", id)
	conv, got, ok := ParseLogKey(key)
	if !ok || conv != "u1:u2" || got != id {
		t.Fatalf("ParseLogKey(%q) = %q, %+v, %v", key, conv, got, ok)
	}
	for _, bad := range []string{
		"", "u/u1", "l/", "l/u1:u2/", strings.ToUpper(key[:len(key)-2]) + "00",
		"l/u1:u2/" + strings.Repeat("0", 55), "l/u1:u2/" + strings.Repeat("0", 56), // seq 0
		"l/u2:u1/" + key[len("l/u1:u2/"):], // participants out of order
		"l/u1u2/" + key[len("l/u1:u2/"):],
		key[:len(key)-1] + "G",
		strings.Replace(key, "a", "A", 1),
	} {
		if _, _, ok := ParseLogKey(bad); ok {
			t.Errorf("ParseLogKey(%q) ok", bad)
		}
	}
}

func sampleChanges() []Change {
	var m crdt.Map
	m.Set("first_name", []byte("Ann"), ts(1, 10))
	m.Delete("email", ts(1, 11))
	m.SetFlag(crdt.FieldDeleted, ts(2, 12))
	e := crdt.Entry{ID: crdt.EntryID{TS: ts(3, 13), Seq: 4}, Data: crdt.Message{From: "a", To: "b", Body: "hi"}.AppendBinary(nil)}
	return []Change{
		{Key: "u/ann", Map: m},
		{Key: "n/ann", Map: crdt.NewClaim("ann", ts(1, 1))},
		{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: e},
		{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: crdt.Entry{ID: e.ID}},
	}
}

func TestChangeEncoding(t *testing.T) {
	for _, c := range sampleChanges() {
		b := c.AppendBinary(nil)
		got, err := DecodeChange(b)
		if err != nil {
			t.Fatalf("DecodeChange(%q): %v", c.Key, err)
		}
		if got.Key != c.Key || got.Conv != c.Conv || !got.Map.Equal(c.Map) || got.Entry.ID != c.Entry.ID || !bytes.Equal(got.Entry.Data, c.Entry.Data) {
			t.Errorf("round trip of %q = %+v", c.Key, got)
		}
		if again := got.AppendBinary(nil); !bytes.Equal(again, b) {
			t.Errorf("re-encoding of %q differs", c.Key)
		}
		b[len(b)/2] ^= 0xff // corrupt: must fail or decode to something else, never panic
		_, _ = DecodeChange(b)
	}
	valid := sampleChanges()[0].AppendBinary(nil)
	entry := sampleChanges()[2].AppendBinary(nil)
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"Empty", nil},
		{"Truncated", valid[:len(valid)-1]},
		{"Trailing", append(bytes.Clone(valid), 0)},
		{"Version", append([]byte{2}, valid[1:]...)},
		{"Kind", append([]byte{1, 9}, valid[2:]...)},
		{"KeyLength", []byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"LogNamespaceRecord", Change{Key: "l/x", Map: crdt.NewClaim("x", ts(1, 1))}.AppendBinary(nil)},
		{"BadConversation", Change{Conv: "b:a", Entry: sampleChanges()[2].Entry}.AppendBinary(nil)},
		{"NonMinimalVarint", append(append([]byte{1, 2, 0x83, 0x00}, "a:b"...), entry[6:]...)},
	} {
		t.Run("Err"+tt.name, func(t *testing.T) {
			if c, err := DecodeChange(tt.b); err == nil {
				t.Errorf("DecodeChange(%x) = %+v, want an error", tt.b, c)
			}
		})
	}
}

func FuzzDecodeChange(f *testing.F) {
	for _, c := range sampleChanges() {
		f.Add(c.AppendBinary(nil))
	}
	f.Add([]byte{1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChange(b)
		if err != nil {
			return
		}
		if again := c.AppendBinary(nil); !bytes.Equal(again, b) {
			t.Fatalf("accepted a non-canonical encoding: %x re-encodes as %x", b, again)
		}
		if err := c.check(); err != nil {
			t.Fatalf("accepted a malformed change: %v", err)
		}
	})
}

func TestApplyRemote(t *testing.T) {
	ctx := context.Background()
	t.Run("Idempotent", func(t *testing.T) {
		src, dst := MustOpenDB(t), MustOpenDB(t)
		merge(t, src, crdt.UserKey("u1"), newUser(src, "alice"))
		update(t, src, func(tx *Tx) error {
			_, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2", Body: "hi"})
			return err
		})
		cs := allChanges(t, src)
		res, err := dst.ApplyRemote(ctx, cs)
		if err != nil || counts(res) != (applyCounts{Applied: 2}) {
			t.Fatalf("first ApplyRemote = %+v, %v", res, err)
		}
		seq := dst.FeedSeq()
		res, err = dst.ApplyRemote(ctx, append(cs, cs...))
		if err != nil || counts(res) != (applyCounts{Unchanged: 4}) || dst.FeedSeq() != seq {
			t.Errorf("repeated ApplyRemote = %+v, %v, feed %d → %d", res, err, seq, dst.FeedSeq())
		}
		if src.Digest() != dst.Digest() {
			t.Error("digests differ")
		}
	})
	t.Run("Skew", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now, MaxSkew: time.Minute})
		at := func(d time.Duration) Change {
			return Change{Key: crdt.UserKey(d.String()), Map: crdt.NewUser("x", "", nil, ts(7, clk.Now().Add(d).UnixNano()))}
		}
		e := crdt.Entry{ID: crdt.EntryID{TS: ts(7, clk.Now().Add(time.Hour).UnixNano()), Seq: 1}}
		future := Change{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: e}
		res, err := db.ApplyRemote(ctx, []Change{at(0), at(59 * time.Second), at(2 * time.Minute), future})
		if err != nil || counts(res) != (applyCounts{Applied: 2, Rejected: 2}) {
			t.Errorf("ApplyRemote = %+v, %v; want 2 applied, 2 rejected", res, err)
		}
		if want := []string{at(2 * time.Minute).Key, future.Key}; !slices.Equal(res.Refused, want) {
			t.Errorf("Refused = %q, want %q", res.Refused, want)
		}
		if _, ok := mustRecord(t, db, crdt.UserKey((2 * time.Minute).String())); ok {
			t.Error("rejected change stored")
		}
		if last := db.Clock().Last(); last.Wall > clk.Now().Add(time.Minute).UnixNano() {
			t.Errorf("clock advanced to a rejected timestamp: %s", last)
		}
		res, err = db.ApplyRemote(ctx, []Change{at(time.Hour)})
		if err != nil || counts(res) != (applyCounts{Rejected: 1}) {
			t.Errorf("ApplyRemote of only skewed changes = %+v, %v", res, err)
		}
	})
	// A fast node relays another node's revocation inside a record that also carries its
	// own field stamped beyond the bound: the relayed field applies now, the fast one not.
	t.Run("SkewPerField", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now, MaxSkew: time.Minute})
		key := crdt.SessionKey("s1")
		rec := crdt.NewSession("u1", clk.Now().Add(time.Hour), time.Hour, ts(7, clk.Now().UnixNano()))
		rec.Merge(crdt.RevokeSession(ts(8, clk.Now().Add(time.Second).UnixNano())))
		rec.Raise(crdt.FieldLastUsed, clk.Now().Add(2*time.Minute).UnixNano(), ts(9, clk.Now().Add(2*time.Minute).UnixNano()))
		res, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: rec}})
		if err != nil || counts(res) != (applyCounts{Applied: 1, Rejected: 1}) {
			t.Fatalf("ApplyRemote = %+v, %v; want 1 applied and counted rejected", res, err)
		}
		got, ok := mustRecord(t, db, key)
		if !ok || !crdt.ReadSession("s1", &got).Revoked {
			t.Fatalf("stored=%v revoked=%v, want the relayed revocation applied", ok, crdt.ReadSession("s1", &got).Revoked)
		}
		if f, ok := got.Field(crdt.FieldLastUsed); ok && f.TS.Node == 9 {
			t.Errorf("field stamped 2m ahead stored: %+v", f)
		}
		if last := db.Clock().Last(); last.Wall > clk.Now().Add(time.Minute).UnixNano() {
			t.Errorf("clock advanced to a rejected timestamp: %s", last)
		}
		// Once local time catches up, the same change applies whole.
		clk.Add(2 * time.Minute)
		if res, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: rec}}); err != nil || counts(res) != (applyCounts{Applied: 1}) {
			t.Fatalf("ApplyRemote later = %+v, %v; want applied", res, err)
		}
	})
	// No record grows beyond MaxRecord, from a local write or a remote one, and a remote
	// change refused for size leaves the rest of its push applied.
	t.Run("MaxRecord", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("big")
		big := func(node crdt.NodeID, n int) crdt.Map {
			var m crdt.Map
			for i := range n {
				m.Set(fmt.Sprintf("f%d-%d", node, i), bytes.Repeat([]byte{'x'}, 1000), ts(node, 1))
			}
			return m
		}
		merge(t, db, key, big(1, 600)) // about 620 KB
		before, _ := mustRecord(t, db, key)
		err := db.Update(ctx, func(tx *Tx) error {
			_, err := tx.Merge(key, big(2, 600))
			return err
		})
		if !errors.Is(err, ErrRecordTooLarge) {
			t.Fatalf("local Merge beyond MaxRecord: %v, want ErrRecordTooLarge", err)
		}
		other := Change{Key: crdt.UserKey("small"), Map: crdt.NewUser("small", "", nil, ts(3, 5))}
		res, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: big(3, 600)}, other})
		if err != nil || counts(res) != (applyCounts{Applied: 1, TooLarge: 1}) {
			t.Fatalf("ApplyRemote = %+v, %v; want the small change applied, the big one refused", res, err)
		}
		if after, _ := mustRecord(t, db, key); !after.Equal(before) || after.EncodedLen() > MaxRecord {
			t.Errorf("record changed by refused writes (%d bytes)", after.EncodedLen())
		}
		// A merge that fits after all (fields it already holds) is applied.
		res, err = db.ApplyRemote(ctx, []Change{{Key: key, Map: big(1, 600)}})
		if err != nil || counts(res) != (applyCounts{Unchanged: 1}) {
			t.Errorf("ApplyRemote of known fields = %+v, %v", res, err)
		}
	})
	t.Run("ErrMalformed", func(t *testing.T) {
		db := MustOpenDB(t)
		good := sampleChanges()[1]
		for _, bad := range []Change{
			{Key: "", Map: good.Map},
			{Key: "l/zz", Map: good.Map},
			{Key: "wrong", Conv: "a:b", Entry: sampleChanges()[2].Entry},
			{Key: LogKey("a:b", crdt.EntryID{}), Conv: "a:b"},
			bigEntry(),
		} {
			if _, err := db.ApplyRemote(ctx, []Change{good, bad}); err == nil {
				t.Errorf("ApplyRemote(%+v) succeeded", bad)
			}
		}
		if _, ok := mustRecord(t, db, good.Key); ok {
			t.Error("a call with a malformed change applied the good one")
		}
	})
	t.Run("CanceledContext", func(t *testing.T) {
		db := MustOpenDB(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := db.ApplyRemote(cctx, sampleChanges()[1:2]); !errors.Is(err, context.Canceled) {
			t.Errorf("ApplyRemote = %v, want context.Canceled", err)
		}
	})
}

// bigEntry is a log entry change with data over MaxEntry.
func bigEntry() Change {
	e := crdt.Entry{ID: crdt.EntryID{TS: ts(7, 1), Seq: 1}, Data: make([]byte, MaxEntry+1)}
	return Change{Key: LogKey("a:b", e.ID), Conv: "a:b", Entry: e}
}

// applyCounts is an ApplyResult's counts, which tests compare.
type applyCounts struct{ Applied, Unchanged, Dropped, Rejected, TooLarge int }

// counts returns res's counts.
func counts(res ApplyResult) applyCounts {
	return applyCounts{res.Applied, res.Unchanged, res.Dropped, res.Rejected, res.TooLarge}
}
