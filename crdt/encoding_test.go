package crdt_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// genAnyTS draws any timestamp with a non-negative wall (the range the byte order covers),
// often close to the edges of each component.
func genAnyTS() *rapid.Generator[crdt.Timestamp] {
	return rapid.Custom(func(t *rapid.T) crdt.Timestamp {
		return crdt.Timestamp{
			Wall:    rapid.OneOf(rapid.Int64Range(0, math.MaxInt64), rapid.SampledFrom([]int64{0, 1, epoch2026, math.MaxInt64})).Draw(t, "wall"),
			Logical: rapid.OneOf(rapid.Uint32(), rapid.SampledFrom([]uint32{0, 1, math.MaxUint32})).Draw(t, "logical"),
			Node:    crdt.NodeID(rapid.OneOf(rapid.Uint64(), rapid.SampledFrom([]uint64{0, 1, math.MaxUint64})).Draw(t, "node")),
		}
	})
}

// genNear draws a timestamp equal to or one step from ts in one component, so that order
// tests see equal prefixes.
func genNear(ts crdt.Timestamp) *rapid.Generator[crdt.Timestamp] {
	return rapid.Custom(func(t *rapid.T) crdt.Timestamp {
		d := rapid.SampledFrom([]int{-1, 0, 1}).Draw(t, "delta")
		switch rapid.IntRange(0, 2).Draw(t, "component") {
		case 0:
			if w := ts.Wall + int64(d); w >= 0 && (d <= 0 || w > ts.Wall) {
				ts.Wall = w
			}
		case 1:
			ts.Logical += uint32(d)
		case 2:
			ts.Node += crdt.NodeID(d)
		}
		return ts
	})
}

func sign(x int) int { return min(max(x, -1), 1) }

func TestTimestampEncoding(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a := genAnyTS().Draw(t, "a")
		b := rapid.OneOf(genAnyTS(), genNear(a)).Draw(t, "b")
		ea, eb := a.AppendBinary(nil), b.AppendBinary([]byte("prefix"))[len("prefix"):]
		if len(ea) != crdt.TimestampSize {
			t.Fatalf("len(AppendBinary)=%d, want %d", len(ea), crdt.TimestampSize)
		}
		if got, want := sign(bytes.Compare(ea, eb)), a.Compare(b); got != want {
			t.Fatalf("bytes.Compare(%v, %v)=%d, want Compare=%d", a, b, got, want)
		}
		if b.Compare(a) != -a.Compare(b) || a.Less(b) != (a.Compare(b) < 0) || (a.Compare(b) == 0) != (a == b) {
			t.Fatalf("Compare(%v, %v) is not a total order", a, b)
		}
		if got, err := crdt.DecodeTimestamp(ea); err != nil || got != a {
			t.Fatalf("DecodeTimestamp(%x)=%v, %v, want %v", ea, got, err, a)
		}
		if a.Time().UnixNano() != a.Wall || a.IsZero() != (a == crdt.Timestamp{}) || a.String() == "" {
			t.Fatalf("Time(), IsZero() or String() of %v disagree", a)
		}

		ia := crdt.EntryID{TS: a, Seq: rapid.Uint64().Draw(t, "seqA")}
		ib := crdt.EntryID{TS: b, Seq: rapid.OneOf(rapid.Uint64(), rapid.Just(ia.Seq), rapid.Just(ia.Seq+1)).Draw(t, "seqB")}
		ea, eb = ia.AppendBinary(nil), ib.AppendBinary(nil)
		if len(ea) != crdt.EntryIDSize {
			t.Fatalf("len(EntryID.AppendBinary)=%d, want %d", len(ea), crdt.EntryIDSize)
		}
		if got, want := sign(bytes.Compare(ea, eb)), ia.Compare(ib); got != want {
			t.Fatalf("bytes.Compare(%v, %v)=%d, want Compare=%d", ia, ib, got, want)
		}
		if ib.Compare(ia) != -ia.Compare(ib) || (ia.Compare(ib) == 0) != (ia == ib) {
			t.Fatalf("EntryID.Compare(%v, %v) is not a total order", ia, ib)
		}
		if got, err := crdt.DecodeEntryID(ea); err != nil || got != ia {
			t.Fatalf("DecodeEntryID(%x)=%v, %v, want %v", ea, got, err, ia)
		}
	})
}

// genMap draws a Map with schema-like names or arbitrary ones (empty, binary, long).
func genMap() *rapid.Generator[crdt.Map] {
	return rapid.Custom(func(t *rapid.T) crdt.Map {
		ops := genOps(true, 0, 30).Draw(t, "ops")
		for i := range ops {
			if rapid.IntRange(0, 3).Draw(t, "rename") == 0 {
				ops[i].Name = rapid.OneOf(rapid.Just(""), rapid.String(), rapid.StringN(100, 300, -1)).Draw(t, "name")
			}
			if rapid.IntRange(0, 5).Draw(t, "farTS") == 0 {
				ops[i].TS = genAnyTS().Draw(t, "ts")
			}
		}
		return mapFrom(ops)
	})
}

func TestMapEncoding(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := genMap().Draw(t, "map")
		b := m.AppendBinary(nil)
		if mb, err := m.MarshalBinary(); err != nil || !bytes.Equal(mb, b) {
			t.Fatalf("MarshalBinary()=%x, %v, want %x", mb, err, b)
		}
		if n := m.EncodedLen(); n != len(b) {
			t.Fatalf("EncodedLen()=%d, want len(AppendBinary())=%d", n, len(b))
		}
		got, err := crdt.DecodeMap(b)
		if err != nil {
			t.Fatalf("DecodeMap(%x): %v", b, err)
		}
		clear(b) // the result must not alias its input
		checkSameMap(t, "DecodeMap(AppendBinary(m)) vs m", got, m)
	})
}

func TestEntryEncoding(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := crdt.Entry{
			ID:   crdt.EntryID{TS: genAnyTS().Draw(t, "ts"), Seq: rapid.Uint64Min(1).Draw(t, "seq")},
			Data: rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "data"),
		}
		b := e.AppendBinary(nil)
		got, err := crdt.DecodeEntry(b)
		if err != nil {
			t.Fatalf("DecodeEntry(%x): %v", b, err)
		}
		clear(b)
		if got.ID != e.ID || !bytes.Equal(got.Data, e.Data) {
			t.Fatalf("DecodeEntry=%v %q, want %v %q", got.ID, got.Data, e.ID, e.Data)
		}
	})
}

func TestCursorEncoding(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := crdt.Cursor(rapid.MapOfN(
			rapid.Map(rapid.Uint64(), func(x uint64) crdt.NodeID { return crdt.NodeID(x) }),
			rapid.OneOf(rapid.Uint64(), rapid.Uint64Range(0, 3)), 0, 20).Draw(t, "cursor"))
		b := c.AppendBinary(nil)
		got, err := crdt.DecodeCursor(b)
		if err != nil {
			t.Fatalf("DecodeCursor(%x): %v", b, err)
		}
		want := maps.Clone(c)
		maps.DeleteFunc(want, func(_ crdt.NodeID, s uint64) bool { return s == 0 })
		if got == nil || !maps.Equal(got, want) {
			t.Fatalf("DecodeCursor=%v, want %v", got, want)
		}
		if again := got.AppendBinary(nil); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding=%x, want %x", again, b)
		}
	})
}

var genParticipant = rapid.StringMatching(`[a-z0-9_.:-]{1,40}|[^/]{1,10}`)

func TestMessageEncoding(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := crdt.Message{From: genParticipant.Draw(t, "from"), To: genParticipant.Draw(t, "to"), Body: rapid.String().Draw(t, "body")}
		if rapid.Bool().Draw(t, "marker") {
			m = crdt.ErasureMarker(m.From, m.To)
		}
		b := m.AppendBinary(nil)
		got, err := crdt.DecodeMessage(b)
		if err != nil || got != m {
			t.Fatalf("DecodeMessage(%x)=%+v, %v, want %+v", b, got, err, m)
		}
		// A marker and a message are told apart by their first byte alone (got == m
		// above: neither decodes as the other).
		if crdt.IsErasureMarker(b) != m.Erased {
			t.Fatalf("IsErasureMarker(%x)=%v, want %v", b, crdt.IsErasureMarker(b), m.Erased)
		}
	})
}

// TestMessageEncodingGolden pins the bytes of messages as every release so far has
// written them, and of erasure markers: stored logs and peers on older releases must read
// the same messages, and a marker must never read as a message.
func TestMessageEncodingGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    crdt.Message
		hex  string
	}{
		{"Message", crdt.Message{From: "u1", To: "u2", Body: "hi"}, "0102753102753202" + "6869"},
		{"MessageEmptyBody", crdt.Message{From: "a", To: "b"}, "010161016200"},
		{"MessageUTF8", crdt.Message{From: "0f8c1d3e", To: "x", Body: "é"}, "0108" + "3066386331643365" + "0178" + "02c3a9"},
		{"Marker", crdt.ErasureMarker("u1", "u2"), "02027531027532"},
		{"MarkerIgnoresBody", crdt.Message{From: "u1", To: "u2", Body: "hi", Erased: true}, "02027531027532"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.m.AppendBinary(nil)
			if got := hex.EncodeToString(b); got != tc.hex {
				t.Fatalf("AppendBinary(%+v)=%s, want %s", tc.m, got, tc.hex)
			}
			want := tc.m
			if want.Erased {
				want.Body = ""
			}
			if got, err := crdt.DecodeMessage(b); err != nil || got != want {
				t.Fatalf("DecodeMessage(%s)=%+v, %v, want %+v", tc.hex, got, err, want)
			}
		})
	}
}

// mapBytes hand-assembles a map encoding from raw fields, valid or not.
type rawField struct {
	name  string
	kind  byte
	flags byte
	value []byte
}

func mapBytes(fields ...rawField) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(fields)))
	for i, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f.name)))
		b = append(b, f.name...)
		b = append(b, f.kind)
		b = (crdt.Timestamp{Wall: epoch2026, Node: crdt.NodeID(i)}).AppendBinary(b)
		b = append(b, f.flags)
		b = binary.AppendUvarint(b, uint64(len(f.value)))
		b = append(b, f.value...)
	}
	return b
}

func entryBytes(seq uint64, data []byte) []byte {
	return crdt.Entry{ID: crdt.EntryID{TS: crdt.Timestamp{Wall: epoch2026, Node: 1}, Seq: seq}, Data: data}.AppendBinary(nil)
}

func cursorBytes(pairs ...uint64) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(pairs)/2))
	for i := 0; i < len(pairs); i += 2 {
		b = binary.BigEndian.AppendUint64(b, pairs[i])
		b = binary.AppendUvarint(b, pairs[i+1])
	}
	return b
}

// overlong is the encoding of 0 in two bytes, which binary.Uvarint accepts.
var overlong = []byte{0x80, 0x00}

// hugeLen is a length prefix of 2^63-1.
var hugeLen = binary.AppendUvarint(nil, math.MaxInt64)

// TestDecodeRejects lists malformed and non-canonical inputs that every decoder must
// refuse: accepting two encodings of one value would break digests, which hash encodings.
func TestDecodeRejects(t *testing.T) {
	lww := func(name string) rawField { return rawField{name: name, kind: byte(crdt.KindLWW), value: []byte("v")} }
	valid := mapBytes(lww("a"), lww("b"))
	decodeMap := func(b []byte) error { _, err := crdt.DecodeMap(b); return err }
	decodeEntry := func(b []byte) error { _, err := crdt.DecodeEntry(b); return err }
	decodeCursor := func(b []byte) error { _, err := crdt.DecodeCursor(b); return err }
	decodeMessage := func(b []byte) error { _, err := crdt.DecodeMessage(b); return err }
	msg := func(from, to string) []byte { return crdt.Message{From: from, To: to, Body: "hi"}.AppendBinary(nil) }

	for _, tc := range []struct {
		name   string
		decode func([]byte) error
		in     []byte
	}{
		{"Map/ErrEmpty", decodeMap, nil},
		{"Map/ErrVersion", decodeMap, append([]byte{2}, valid[1:]...)},
		{"Map/ErrTrailing", decodeMap, append(slices.Clone(valid), 0)},
		{"Map/ErrTruncated", decodeMap, valid[:len(valid)-1]},
		{"Map/ErrOverlongCount", decodeMap, append([]byte{1}, overlong...)},
		{"Map/ErrOverlongNameLen", decodeMap, slices.Concat([]byte{1, 1, 0x81, 0x00, 'a', 1}, make([]byte, 21), []byte{0})},
		{"Map/ErrOutOfOrder", decodeMap, mapBytes(lww("b"), lww("a"))},
		{"Map/ErrDuplicate", decodeMap, mapBytes(lww("a"), lww("a"))},
		{"Map/ErrKindZero", decodeMap, mapBytes(rawField{name: "a", kind: 0})},
		{"Map/ErrKindUnknown", decodeMap, mapBytes(rawField{name: "a", kind: 5})},
		{"Map/ErrFlags", decodeMap, mapBytes(rawField{name: "a", kind: 1, flags: 2})},
		{"Map/ErrTombstoneValue", decodeMap, mapBytes(rawField{name: "a", kind: 1, flags: 1, value: []byte("v")})},
		{"Map/ErrTombstoneFWW", decodeMap, mapBytes(rawField{name: "a", kind: 2, flags: 1})},
		{"Map/ErrFlagValue", decodeMap, mapBytes(rawField{name: "a", kind: 4, value: []byte{0}})},
		{"Map/ErrMaxShort", decodeMap, mapBytes(rawField{name: "a", kind: 3, value: make([]byte, 7)})},
		{"Map/ErrMaxLong", decodeMap, mapBytes(rawField{name: "a", kind: 3, value: make([]byte, 9)})},
		{"Entry/ErrEmpty", decodeEntry, nil},
		{"Entry/ErrVersion", decodeEntry, append([]byte{0}, entryBytes(1, nil)[1:]...)},
		{"Entry/ErrZeroSeq", decodeEntry, entryBytes(0, []byte("x"))},
		{"Entry/ErrTrailing", decodeEntry, append(entryBytes(1, nil), 0)},
		{"Entry/ErrTruncated", decodeEntry, entryBytes(1, []byte("xyz"))[:1+crdt.EntryIDSize+2]},
		{"Entry/ErrOverlongLen", decodeEntry, append(entryBytes(1, nil)[:1+crdt.EntryIDSize], overlong...)},
		{"Cursor/ErrEmpty", decodeCursor, nil},
		{"Cursor/ErrVersion", decodeCursor, []byte{2, 0}},
		{"Cursor/ErrZeroMark", decodeCursor, cursorBytes(1, 0)},
		{"Cursor/ErrUnsorted", decodeCursor, cursorBytes(2, 1, 1, 1)},
		{"Cursor/ErrDuplicate", decodeCursor, cursorBytes(1, 1, 1, 2)},
		{"Cursor/ErrTrailing", decodeCursor, append(cursorBytes(1, 1), 0)},
		{"Cursor/ErrOverlongMark", decodeCursor, slices.Concat([]byte{1, 1}, make([]byte, 8), []byte{0x81, 0x00})},
		{"Cursor/ErrOverlongCount", decodeCursor, append([]byte{1}, overlong...)},
		{"Cursor/ErrOverflowMark", decodeCursor, slices.Concat([]byte{1, 1}, make([]byte, 8), bytes.Repeat([]byte{0xff}, 10), []byte{1})},
		{"Message/ErrEmpty", decodeMessage, nil},
		{"Message/ErrVersion", decodeMessage, append([]byte{9}, msg("a", "b")[1:]...)},
		{"Message/ErrNoFrom", decodeMessage, msg("", "b")},
		{"Message/ErrNoTo", decodeMessage, msg("a", "")},
		{"Message/ErrSlash", decodeMessage, msg("a", "b/c")},
		{"Message/ErrTrailing", decodeMessage, append(msg("a", "b"), 0)},
		{"Message/ErrOverlongLen", decodeMessage, []byte{1, 0x81, 0x00, 'a', 1, 'b', 0}},
		{"Marker/ErrNoFrom", decodeMessage, crdt.ErasureMarker("", "b").AppendBinary(nil)},
		{"Marker/ErrNoTo", decodeMessage, crdt.ErasureMarker("a", "").AppendBinary(nil)},
		{"Marker/ErrSlash", decodeMessage, crdt.ErasureMarker("a/b", "c").AppendBinary(nil)},
		{"Marker/ErrBody", decodeMessage, append(crdt.ErasureMarker("a", "b").AppendBinary(nil), 2, 'h', 'i')},
		{"Marker/ErrEmptyBody", decodeMessage, append(crdt.ErasureMarker("a", "b").AppendBinary(nil), 0)},
		{"Marker/ErrTruncated", decodeMessage, []byte{2, 1, 'a'}},
		{"Marker/ErrOverlongLen", decodeMessage, []byte{2, 0x81, 0x00, 'a', 1, 'b'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.decode(tc.in); err == nil {
				t.Fatalf("decode(%x) succeeded, want an error", tc.in)
			}
		})
	}
	t.Run("ShortFixed", func(t *testing.T) {
		if _, err := crdt.DecodeTimestamp(make([]byte, crdt.TimestampSize-1)); err == nil {
			t.Fatal("DecodeTimestamp(19 bytes) succeeded, want an error")
		}
		if _, err := crdt.DecodeEntryID(make([]byte, crdt.EntryIDSize-1)); err == nil {
			t.Fatal("DecodeEntryID(27 bytes) succeeded, want an error")
		}
	})
}

// TestDecodeHostileLengths feeds decoders small inputs that claim huge counts or lengths:
// they must fail without allocating in proportion to the claim.
func TestDecodeHostileLengths(t *testing.T) {
	ts := make([]byte, crdt.TimestampSize)
	lww := func(name string) rawField { return rawField{name: name, kind: byte(crdt.KindLWW)} }
	fields := mapBytes(lww("a"), lww("b"), lww("c")) // version, count 3, three 25-byte fields
	for _, tc := range []struct {
		name   string
		decode func([]byte) error
		in     []byte
	}{
		// Counts followed by valid fields, so that only the count check stops them.
		{"MapFieldCount", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1}, hugeLen, fields[2:])},
		{"MapFieldCount2e40", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1}, binary.AppendUvarint(nil, 1<<40), fields[2:])},
		{"MapFieldCount10000", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1}, binary.AppendUvarint(nil, 10000), fields[2:])},
		{"MapFieldCountJustTooMany", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1}, binary.AppendUvarint(nil, 5), fields[2:], make([]byte, 23))},
		{"MapNameLen", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1, 1}, hugeLen, make([]byte, 30))},
		{"MapValueLen", func(b []byte) error { _, err := crdt.DecodeMap(b); return err }, slices.Concat([]byte{1, 1, 1, 'a', 1}, ts, []byte{0}, hugeLen, make([]byte, 30))},
		{"EntryDataLen", func(b []byte) error { _, err := crdt.DecodeEntry(b); return err }, slices.Concat(entryBytes(1, nil)[:1+crdt.EntryIDSize], hugeLen, []byte("x"))},
		{"CursorCount", func(b []byte) error { _, err := crdt.DecodeCursor(b); return err }, slices.Concat([]byte{1}, hugeLen, make([]byte, 17))},
		{"MessageFromLen", func(b []byte) error { _, err := crdt.DecodeMessage(b); return err }, slices.Concat([]byte{1}, hugeLen, []byte("abc"))},
		{"MessageBodyLen", func(b []byte) error { _, err := crdt.DecodeMessage(b); return err }, slices.Concat([]byte{1, 1, 'a', 1, 'b'}, hugeLen, []byte("abc"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.decode(tc.in); err == nil {
				t.Fatalf("decode(%x) succeeded, want an error", tc.in)
			}
			const runs = 100
			allocs := testing.AllocsPerRun(runs, func() { tc.decode(tc.in) })
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range runs {
				tc.decode(tc.in)
			}
			runtime.ReadMemStats(&after)
			perRun := (after.TotalAlloc - before.TotalAlloc) / runs
			if allocs > 4 || perRun > 1024 {
				t.Fatalf("decode allocated %.0f times, %d bytes per run, want at most 4 small allocations", allocs, perRun)
			}
		})
	}
}

// checkSaneMap checks the invariants a decoded Map must satisfy.
func checkSaneMap(t *testing.T, m *crdt.Map) {
	names := m.Names()
	if len(names) != m.Len() || !slices.IsSorted(names) {
		t.Fatalf("Names()=%q, Len()=%d, want %d sorted names", names, m.Len(), len(names))
	}
	for _, name := range names {
		f, ok := m.Field(name)
		switch {
		case !ok:
			t.Fatalf("Field(%q) missing", name)
		case f.Kind < crdt.KindLWW || f.Kind > crdt.KindFlag:
			t.Fatalf("Field(%q).Kind=%d, want a known kind", name, f.Kind)
		case f.Deleted && (f.Kind != crdt.KindLWW || len(f.Value) != 0):
			t.Fatalf("Field(%q)=%+v, want a tombstone to be an empty LWW", name, f)
		case f.Kind == crdt.KindFlag && len(f.Value) != 0:
			t.Fatalf("Field(%q)=%+v, want a flag without value", name, f)
		case f.Kind == crdt.KindMax && len(f.Value) != 8:
			t.Fatalf("Field(%q)=%+v, want an 8-byte max register", name, f)
		}
		m.Get(name)
		m.MaxOf(name)
		m.Flag(name)
	}
	c := m.Clone()
	if c.Merge(*m) || !c.Equal(*m) {
		t.Fatal("a decoded map changes when merged with itself")
	}
	var e crdt.Map
	e.Merge(*m)
	if !e.Equal(*m) {
		t.Fatal("merging a decoded map into an empty one does not reproduce it")
	}
}

func seedMaps() []crdt.Map {
	ts := crdt.Timestamp{Wall: epoch2026, Logical: 3, Node: 0xabcdef}
	var all crdt.Map
	all.Set("a", []byte("x"), ts)
	all.Delete("b", ts)
	all.Claim("c/alice", nil, ts)
	all.Raise("last_used", -5, ts)
	all.SetFlag("revoked", ts)
	all.Set("", nil, ts)
	return []crdt.Map{
		{},
		all,
		crdt.NewUser("alice", "$argon2id$v=19$m=65536,t=3,p=2$c2FsdA$aGFzaA", map[string]string{"email": "a@example.com"}, ts),
		crdt.NewClaim("user-1", ts),
		crdt.EraseUser(ts),
		crdt.RevokeSessionsUntil(ts, time.Minute),
		sessionMap(5, 1, 2),
	}
}

func FuzzDecodeMap(f *testing.F) {
	for _, m := range seedMaps() {
		f.Add(m.AppendBinary(nil))
	}
	f.Add(mapBytes(rawField{name: "a", kind: 3, value: make([]byte, 8)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := slices.Clone(b) // the engine's b must not be modified
		m, err := crdt.DecodeMap(in)
		if err != nil {
			return
		}
		clear(in) // the result must not alias its input
		if got := m.AppendBinary(nil); !bytes.Equal(got, b) {
			t.Fatalf("AppendBinary(DecodeMap(%x))=%x, want the input (canonical)", b, got)
		}
		checkSaneMap(t, &m)
	})
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(entryBytes(1, nil))
	f.Add(entryBytes(math.MaxUint64, []byte("hello")))
	f.Add(crdt.Entry{ID: crdt.EntryID{TS: crdt.Timestamp{Wall: epoch2026, Logical: 9, Node: 4}, Seq: 300},
		Data: crdt.Message{From: "u1", To: "u2", Body: "hi"}.AppendBinary(nil)}.AppendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := slices.Clone(b)
		e, err := crdt.DecodeEntry(in)
		if err != nil {
			return
		}
		clear(in)
		if got := e.AppendBinary(nil); !bytes.Equal(got, b) {
			t.Fatalf("AppendBinary(DecodeEntry(%x))=%x, want the input (canonical)", b, got)
		}
		var l crdt.Log
		if e.ID.Seq == 0 || !l.Insert(e) {
			t.Fatalf("DecodeEntry(%x)=%v, which a Log refuses", b, e.ID)
		}
	})
}

func FuzzDecodeCursor(f *testing.F) {
	f.Add(crdt.Cursor(nil).AppendBinary(nil))
	f.Add(crdt.Cursor{1: 1, 2: 300, math.MaxUint64: math.MaxUint64}.AppendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := crdt.DecodeCursor(b)
		if err != nil {
			return
		}
		if got := c.AppendBinary(nil); !bytes.Equal(got, b) {
			t.Fatalf("AppendBinary(DecodeCursor(%x))=%x, want the input (canonical)", b, got)
		}
		for o, s := range c {
			if s == 0 {
				t.Fatalf("DecodeCursor(%x)[%v]=0, want no zero marks", b, o)
			}
		}
	})
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add(crdt.Message{From: "u1", To: "u2", Body: "hello"}.AppendBinary(nil))
	f.Add(crdt.Message{From: "0f8c1d3e-6a55-4bc0", To: "x", Body: strings.Repeat("é", 100)}.AppendBinary(nil))
	f.Add(crdt.ErasureMarker("u1", "u2").AppendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := crdt.DecodeMessage(b)
		if err != nil {
			return
		}
		if got := m.AppendBinary(nil); !bytes.Equal(got, b) {
			t.Fatalf("AppendBinary(DecodeMessage(%x))=%x, want the input (canonical)", b, got)
		}
		if m.From == "" || m.To == "" || strings.Contains(m.From, "/") || strings.Contains(m.To, "/") {
			t.Fatalf("DecodeMessage(%x)=%+v, want two participants without '/'", b, m)
		}
		if m.Erased != crdt.IsErasureMarker(b) || (m.Erased && m.Body != "") {
			t.Fatalf("DecodeMessage(%x)=%+v, but IsErasureMarker=%v", b, m, crdt.IsErasureMarker(b))
		}
	})
}

func FuzzDecodeTimestamp(f *testing.F) {
	f.Add((crdt.Timestamp{Wall: epoch2026, Logical: 1, Node: 2}).AppendBinary(nil))
	f.Add(make([]byte, crdt.TimestampSize-1))
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, err := crdt.DecodeTimestamp(b)
		if (err == nil) != (len(b) >= crdt.TimestampSize) {
			t.Fatalf("DecodeTimestamp(%d bytes): err=%v", len(b), err)
		}
		if err != nil {
			return
		}
		if got := ts.AppendBinary(nil); !bytes.Equal(got, b[:crdt.TimestampSize]) {
			t.Fatalf("AppendBinary(DecodeTimestamp(%x))=%x, want its first %d bytes", b, got, crdt.TimestampSize)
		}
	})
}

func FuzzDecodeEntryID(f *testing.F) {
	f.Add(crdt.EntryID{TS: crdt.Timestamp{Wall: epoch2026, Logical: 1, Node: 2}, Seq: 3}.AppendBinary(nil))
	f.Add(make([]byte, crdt.EntryIDSize-1))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := crdt.DecodeEntryID(b)
		if (err == nil) != (len(b) >= crdt.EntryIDSize) {
			t.Fatalf("DecodeEntryID(%d bytes): err=%v", len(b), err)
		}
		if err != nil {
			return
		}
		if got := id.AppendBinary(nil); !bytes.Equal(got, b[:crdt.EntryIDSize]) {
			t.Fatalf("AppendBinary(DecodeEntryID(%x))=%x, want its first %d bytes", b, got, crdt.EntryIDSize)
		}
		if id.Origin() != id.TS.Node {
			t.Fatalf("Origin()=%v, want %v", id.Origin(), id.TS.Node)
		}
	})
}

func BenchmarkMapEncode(b *testing.B) {
	for _, tc := range []struct {
		name string
		keys int
	}{{"Small10", 6}, {"Session200", 200}} {
		m := sessionMap(tc.keys, 1, 1)
		enc := m.AppendBinary(nil)
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 0, len(enc))
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for b.Loop() {
				buf = m.AppendBinary(buf[:0])
			}
		})
	}
}

func BenchmarkMapDecode(b *testing.B) {
	for _, tc := range []struct {
		name string
		keys int
	}{{"Small10", 6}, {"Session200", 200}} {
		m := sessionMap(tc.keys, 1, 1)
		enc := m.AppendBinary(nil)
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := crdt.DecodeMap(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPeekValue: PeekValue finds what DecodeMap would, for every field of random Maps,
// reads nothing past the field, and refuses what is not there or cut short.
func TestPeekValue(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var m crdt.Map
		names := rapid.SliceOfDistinct(rapid.StringMatching(`[a-z/_]{1,8}`), func(s string) string { return s }).Draw(t, "names")
		for i, name := range names {
			ts := crdt.Timestamp{Wall: int64(i + 1), Node: 1}
			switch rapid.IntRange(0, 2).Draw(t, "kind") {
			case 0:
				m.Set(name, rapid.SliceOf(rapid.Byte()).Draw(t, "value"), ts)
			case 1:
				m.Claim(name, rapid.SliceOf(rapid.Byte()).Draw(t, "value"), ts)
			default:
				m.Delete(name, ts)
			}
		}
		enc := m.AppendBinary(nil)
		for _, name := range append(names, "absent", "") {
			want, wantOK := m.Get(name)
			got, ok := crdt.PeekValue(enc, name)
			if ok != wantOK || !bytes.Equal(got, want) {
				t.Fatalf("PeekValue(%q) = %q, %v; Get gives %q, %v", name, got, ok, want, wantOK)
			}
		}
		if len(enc) > 2 {
			cut := rapid.IntRange(0, len(enc)-1).Draw(t, "cut")
			for _, name := range names {
				if v, ok := crdt.PeekValue(enc[:cut], name); ok && !bytes.Equal(v, func() []byte { w, _ := m.Get(name); return w }()) {
					t.Fatalf("a cut encoding gave %q a wrong value %q", name, v)
				}
			}
		}
	})
}
