package crdt_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// mapOp is one update to a Map, as a client or a peer would issue it.
type mapOp struct {
	Kind   crdt.Kind
	Delete bool // a KindLWW tombstone
	Name   string
	Value  []byte // KindLWW and KindFWW
	N      int64  // KindMax
	TS     crdt.Timestamp
}

func (op mapOp) String() string {
	switch {
	case op.Delete:
		return fmt.Sprintf("Delete(%q, %v)", op.Name, op.TS)
	case op.Kind == crdt.KindLWW:
		return fmt.Sprintf("Set(%q, %q, %v)", op.Name, op.Value, op.TS)
	case op.Kind == crdt.KindFWW:
		return fmt.Sprintf("Claim(%q, %q, %v)", op.Name, op.Value, op.TS)
	case op.Kind == crdt.KindMax:
		return fmt.Sprintf("Raise(%q, %d, %v)", op.Name, op.N, op.TS)
	default:
		return fmt.Sprintf("SetFlag(%q, %v)", op.Name, op.TS)
	}
}

// field returns the version op writes.
func (op mapOp) field() crdt.Field {
	switch {
	case op.Delete:
		return crdt.Field{Kind: crdt.KindLWW, TS: op.TS, Deleted: true}
	case op.Kind == crdt.KindMax:
		return crdt.Field{Kind: crdt.KindMax, TS: op.TS, Value: binary.BigEndian.AppendUint64(nil, uint64(op.N))}
	case op.Kind == crdt.KindFlag:
		return crdt.Field{Kind: crdt.KindFlag, TS: op.TS}
	}
	return crdt.Field{Kind: op.Kind, TS: op.TS, Value: bytes.Clone(op.Value)}
}

func (op mapOp) apply(m *crdt.Map) bool {
	switch {
	case op.Delete:
		return m.Delete(op.Name, op.TS)
	case op.Kind == crdt.KindLWW:
		return m.Set(op.Name, op.Value, op.TS)
	case op.Kind == crdt.KindFWW:
		return m.Claim(op.Name, op.Value, op.TS)
	case op.Kind == crdt.KindMax:
		return m.Raise(op.Name, op.N, op.TS)
	default:
		return m.SetFlag(op.Name, op.TS)
	}
}

// applyChecked applies op and checks what it reports: true iff the field now holds op's
// version, false iff the field is unchanged.
func applyChecked(t *rapid.T, m *crdt.Map, op mapOp) {
	before, _ := m.Field(op.Name)
	took := op.apply(m)
	after, ok := m.Field(op.Name)
	if !ok {
		t.Fatalf("%v: Field(%q) missing", op, op.Name)
	}
	if took && !sameField(after, op.field()) {
		t.Fatalf("%v=true, Field(%q)=%v, want %v", op, op.Name, after, op.field())
	}
	if !took && !sameField(after, before) {
		t.Fatalf("%v=false, Field(%q)=%v, want unchanged %v", op, op.Name, after, before)
	}
}

func sameField(a, b crdt.Field) bool {
	return a.Kind == b.Kind && a.TS == b.TS && a.Deleted == b.Deleted && bytes.Equal(a.Value, b.Value)
}

// fieldNames are the names ops write, per kind, shaped like the record schema.
var fieldNames = map[crdt.Kind][]string{
	crdt.KindLWW:  {"email", "d/theme", "d/cart"},
	crdt.KindFWW:  {"user", "c/alice", "c/bob"},
	crdt.KindMax:  {"last_used", "sessions_until"},
	crdt.KindFlag: {"revoked", "deleted"},
}

var allFieldNames = slices.Concat(fieldNames[crdt.KindLWW], fieldNames[crdt.KindFWW], fieldNames[crdt.KindMax], fieldNames[crdt.KindFlag])

// genTS draws timestamps from a small space (4 nodes, few walls and counters), so that
// equal walls, equal (wall, logical) pairs and fully equal timestamps all happen often.
// It never draws the zero Timestamp.
func genTS() *rapid.Generator[crdt.Timestamp] {
	return rapid.Custom(func(t *rapid.T) crdt.Timestamp {
		if rapid.IntRange(0, 3).Draw(t, "collide") == 0 {
			return rapid.SampledFrom(collidingTS).Draw(t, "ts")
		}
		return crdt.Timestamp{
			Wall:    epoch2026 + rapid.Int64Range(0, 5).Draw(t, "wall"),
			Logical: rapid.Uint32Range(0, 2).Draw(t, "logical"),
			Node:    crdt.NodeID(rapid.Uint64Range(1, 4).Draw(t, "node")),
		}
	})
}

// collidingTS are drawn often, so that distinct writes share a timestamp, as only a
// hostile or broken peer would make them.
var collidingTS = []crdt.Timestamp{{Wall: epoch2026 + 2, Node: 1}, {Wall: epoch2026 + 2, Logical: 1, Node: 1}}

var genValue = rapid.OneOf(
	rapid.SampledFrom([][]byte{nil, {}, []byte("x"), []byte("y"), {0}, []byte(`{"k":[1,2]}`)}),
	rapid.SliceOfN(rapid.Byte(), 0, 16),
)

var genN = rapid.OneOf(rapid.Int64Range(-3, 3), rapid.SampledFrom([]int64{math.MinInt64, math.MaxInt64, epoch2026}))

// genOp draws an update. With mixed, a name may be written with different kinds, which
// the schema never does but a corrupt or hostile peer might.
func genOp(mixed bool) *rapid.Generator[mapOp] {
	return rapid.Custom(func(t *rapid.T) mapOp {
		op := mapOp{Kind: rapid.SampledFrom([]crdt.Kind{crdt.KindLWW, crdt.KindFWW, crdt.KindMax, crdt.KindFlag}).Draw(t, "kind")}
		if mixed {
			op.Name = rapid.SampledFrom(allFieldNames).Draw(t, "name")
		} else {
			op.Name = rapid.SampledFrom(fieldNames[op.Kind]).Draw(t, "name")
		}
		op.TS = genTS().Draw(t, "ts")
		switch op.Kind {
		case crdt.KindLWW:
			op.Delete = rapid.IntRange(0, 3).Draw(t, "delete") == 0
			if !op.Delete {
				op.Value = genValue.Draw(t, "value")
			}
		case crdt.KindFWW:
			op.Value = genValue.Draw(t, "value")
		case crdt.KindMax:
			op.N = genN.Draw(t, "n")
		}
		return op
	})
}

func genOps(mixed bool, minLen, maxLen int) *rapid.Generator[[]mapOp] {
	return rapid.SliceOfN(genOp(mixed), minLen, maxLen)
}

func mapFrom(ops []mapOp) crdt.Map {
	var m crdt.Map
	for _, op := range ops {
		op.apply(&m)
	}
	return m
}

// oracle computes the merged state of ops naively: per name, the highest kind written
// wins (a deterministic answer to a corrupt schema); within a kind, LWW keeps the write
// with the greatest timestamp, FWW the smallest, Max the greatest value, and a flag is set
// iff any write set it, since its earliest setting. Writes with equal timestamps (only a
// hostile peer issues them) are ordered by content: a tombstone, then the greater value.
func oracle(ops []mapOp) map[string]crdt.Field {
	byName := make(map[string][]crdt.Field)
	for _, op := range ops {
		byName[op.Name] = append(byName[op.Name], op.field())
	}
	out := make(map[string]crdt.Field, len(byName))
	for name, fs := range byName {
		top := slices.MaxFunc(fs, func(a, b crdt.Field) int { return int(a.Kind) - int(b.Kind) }).Kind
		fs = slices.DeleteFunc(fs, func(f crdt.Field) bool { return f.Kind != top })
		contentOrder := func(a, b crdt.Field) int {
			if a.Deleted != b.Deleted {
				if a.Deleted {
					return 1
				}
				return -1
			}
			return bytes.Compare(a.Value, b.Value)
		}
		var best crdt.Field
		switch top {
		case crdt.KindLWW:
			best = slices.MaxFunc(fs, func(a, b crdt.Field) int {
				if c := a.TS.Compare(b.TS); c != 0 {
					return c
				}
				return contentOrder(a, b)
			})
		case crdt.KindFWW, crdt.KindFlag:
			best = slices.MaxFunc(fs, func(a, b crdt.Field) int {
				if c := a.TS.Compare(b.TS); c != 0 {
					return -c
				}
				return contentOrder(a, b)
			})
		case crdt.KindMax:
			val := func(f crdt.Field) int64 { return int64(binary.BigEndian.Uint64(f.Value)) }
			best = slices.MaxFunc(fs, func(a, b crdt.Field) int {
				if a, b := val(a), val(b); a != b {
					if a < b {
						return -1
					}
					return 1
				}
				return a.TS.Compare(b.TS)
			})
		}
		out[name] = best
	}
	return out
}

// checkOracle checks m against the naive oracle, field by field and through the typed
// accessors.
func checkOracle(t *rapid.T, m *crdt.Map, ops []mapOp) {
	want := oracle(ops)
	if m.Len() != len(want) {
		t.Fatalf("Len()=%d, want %d (names %q)", m.Len(), len(want), m.Names())
	}
	for name, w := range want {
		got, ok := m.Field(name)
		if !ok || !sameField(got, w) {
			t.Fatalf("Field(%q)=%+v, %v, want %+v", name, got, ok, w)
		}
		v, ok := m.Get(name)
		if wantOK := !w.Deleted && (w.Kind == crdt.KindLWW || w.Kind == crdt.KindFWW); ok != wantOK || (ok && !bytes.Equal(v, w.Value)) {
			t.Fatalf("Get(%q)=%q, %v, want %q, %v", name, v, ok, w.Value, wantOK)
		}
		if w.Kind == crdt.KindMax {
			if got, want := m.MaxOf(name), int64(binary.BigEndian.Uint64(w.Value)); got != want {
				t.Fatalf("MaxOf(%q)=%d, want %d", name, got, want)
			}
		}
		if ts, ok := m.Flag(name); ok != (w.Kind == crdt.KindFlag) || (ok && ts != w.TS) {
			t.Fatalf("Flag(%q)=%v, %v, want %v, %v", name, ts, ok, w.TS, w.Kind == crdt.KindFlag)
		}
	}
}

// checkSameMap fails unless a and b are Equal and have byte-identical canonical encodings.
func checkSameMap(t *rapid.T, what string, a, b crdt.Map) {
	if !a.Equal(b) || !b.Equal(a) {
		t.Fatalf("%s: Equal=false\n got  %x\n want %x", what, a.AppendBinary(nil), b.AppendBinary(nil))
	}
	if ab, bb := a.AppendBinary(nil), b.AppendBinary(nil); !bytes.Equal(ab, bb) {
		t.Fatalf("%s: encodings differ\n got  %x\n want %x", what, ab, bb)
	}
}

func merged(ms ...crdt.Map) crdt.Map {
	var out crdt.Map
	for _, m := range ms {
		out.Merge(m)
	}
	return out
}

func TestMapMergeLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		mixed := rapid.Bool().Draw(t, "mixed")
		a := mapFrom(genOps(mixed, 0, 20).Draw(t, "a"))
		b := mapFrom(genOps(mixed, 0, 20).Draw(t, "b"))
		c := mapFrom(genOps(mixed, 0, 20).Draw(t, "c"))
		aBytes, bBytes := a.AppendBinary(nil), b.AppendBinary(nil)

		ab := a.Clone()
		changed := ab.Merge(b)
		if changed == ab.Equal(a) {
			t.Fatalf("Merge()=%v, but Equal(before)=%v", changed, ab.Equal(a))
		}
		if !bytes.Equal(a.AppendBinary(nil), aBytes) || !bytes.Equal(b.AppendBinary(nil), bBytes) {
			t.Fatal("Merge modified its argument or the Clone's source")
		}
		ba := b.Clone()
		ba.Merge(a)
		checkSameMap(t, "a⊔b vs b⊔a", ab, ba)

		left := ab.Clone()
		left.Merge(c)
		bc := b.Clone()
		bc.Merge(c)
		right := a.Clone()
		right.Merge(bc)
		checkSameMap(t, "(a⊔b)⊔c vs a⊔(b⊔c)", left, right)

		aa := a.Clone()
		if aa.Merge(a) {
			t.Fatal("a.Merge(a)=true, want false")
		}
		checkSameMap(t, "a⊔a vs a", aa, a)
		abb := ab.Clone()
		if abb.Merge(b) {
			t.Fatal("(a⊔b).Merge(b)=true, want false")
		}
		checkSameMap(t, "(a⊔b)⊔b vs a⊔b", abb, ab)
	})
}

// TestMapShare changes a Map and the copies Share returned of it, several generations
// deep, by merges, single writes and pruning, in any order: each must end as the oracle
// of the ops applied to it alone, so no change leaks into another through the fields they
// shared.
func TestMapShare(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		base := genOps(true, 0, 12).Draw(t, "base")
		maps := []crdt.Map{mapFrom(base)}
		applied := [][]mapOp{base}
		for range rapid.IntRange(1, 30).Draw(t, "steps") {
			i := rapid.IntRange(0, len(maps)-1).Draw(t, "which")
			switch rapid.IntRange(0, 4).Draw(t, "step") {
			case 0: // share
				maps = append(maps, maps[i].Share())
				applied = append(applied, slices.Clone(applied[i]))
			case 1: // a single write
				op := genOp(true).Draw(t, "op")
				applyChecked(t, &maps[i], op)
				applied[i] = append(applied[i], op)
			case 2: // a merge
				ops := genOps(true, 1, 5).Draw(t, "merged")
				maps[i].Merge(mapFrom(ops))
				applied[i] = append(applied[i], ops...)
			case 3: // prune every tombstone, from the map and its oracle's ops alike
				maps[i].Prune(func(_ string, f crdt.Field) bool { return f.Deleted })
				want := oracle(applied[i])
				applied[i] = slices.DeleteFunc(applied[i], func(op mapOp) bool { return want[op.Name].Deleted })
			case 4: // read the views, which memoizes them in a shared Map
				checkViews(t, &maps[i])
			}
		}
		for i := range maps {
			checkOracle(t, &maps[i], applied[i])
			checkViews(t, &maps[i])
		}
	})
}

// checkViews fails unless the typed views of m, which may be memoized (Share), and the
// bookmark of its writes are those of a fresh copy of its fields.
func checkViews(t *rapid.T, m *crdt.Map) {
	fresh := m.Clone()
	for range 2 { // computed, then memoized
		if got, want := crdt.ReadSessionMeta("s", m), crdt.ReadSessionMeta("s", &fresh); !reflect.DeepEqual(got, want) {
			t.Fatalf("ReadSessionMeta=%+v, want %+v", got, want)
		}
		if got, want := crdt.ReadSessionOrigin(m), crdt.ReadSessionOrigin(&fresh); got != want {
			t.Fatalf("ReadSessionOrigin=%+v, want %+v", got, want)
		}
		if got, want := crdt.ReadUserMeta("u", m), crdt.ReadUserMeta("u", &fresh); !reflect.DeepEqual(got, want) {
			t.Fatalf("ReadUserMeta=%+v, want %+v", got, want)
		}
		var got, want crdt.Bookmark // from the writers' latest timestamps, which Share keeps
		got.AddMap(m)
		want.AddMap(&fresh)
		if !slices.Equal(got.Marks(), want.Marks()) {
			t.Fatalf("AddMap=%v, want %v", got.Marks(), want.Marks())
		}
	}
}

// TestMapConvergence delivers the same updates to 3–6 replicas, each in its own order,
// with duplicates, some as single writes and some inside merged maps or deltas from other
// replicas. Every replica must end byte-identical and equal to the naive oracle.
func TestMapConvergence(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		mixed := rapid.IntRange(0, 4).Draw(t, "mixed") == 0
		ops := genOps(mixed, 1, 40).Draw(t, "ops")
		n := rapid.IntRange(3, 6).Draw(t, "replicas")
		replicas := make([]crdt.Map, n)
		for i := range replicas {
			// A schedule: every op at least once, some twice or more, in a random order.
			idx := make([]int, 0, 2*len(ops))
			for j := range ops {
				idx = append(idx, j)
			}
			idx = append(idx, rapid.SliceOfN(rapid.IntRange(0, len(ops)-1), 0, len(ops)).Draw(t, "dups")...)
			idx = rapid.Permutation(idx).Draw(t, "order")
			for _, j := range idx {
				switch rapid.IntRange(0, 5).Draw(t, "delivery") {
				case 0: // as a one-write map, the way a delta travels
					var d crdt.Map
					ops[j].apply(&d)
					replicas[i].Merge(d)
				case 1: // gossip with an earlier replica: its full state or a delta
					if i > 0 {
						k := rapid.IntRange(0, i-1).Draw(t, "peer")
						since := genTS().Draw(t, "since")
						if rapid.Bool().Draw(t, "full") {
							replicas[i].Merge(replicas[k])
						} else {
							replicas[i].Merge(replicas[k].Delta(since))
						}
					}
					applyChecked(t, &replicas[i], ops[j])
				default:
					applyChecked(t, &replicas[i], ops[j])
				}
			}
		}
		for i := range replicas {
			checkSameMap(t, fmt.Sprintf("replica %d vs replica 0", i), replicas[i], replicas[0])
		}
		checkOracle(t, &replicas[0], ops)
	})
}

// TestMapDelta checks that Delta(since) holds exactly what a replica that has every write
// up to since is missing.
func TestMapDelta(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ops := genOps(rapid.Bool().Draw(t, "mixed"), 0, 40).Draw(t, "ops")
		full := mapFrom(ops)
		var since crdt.Timestamp
		if len(ops) > 0 && rapid.Bool().Draw(t, "sinceAnOp") {
			since = rapid.SampledFrom(ops).Draw(t, "sinceOp").TS
		} else {
			since = genTS().Draw(t, "since")
		}
		var partial crdt.Map
		for _, op := range rapid.Permutation(ops).Draw(t, "order") {
			if !since.Less(op.TS) {
				op.apply(&partial)
			}
		}
		d := full.Delta(since)
		for _, name := range d.Names() {
			f, _ := d.Field(name)
			g, _ := full.Field(name)
			if !since.Less(f.TS) || !sameField(f, g) {
				t.Fatalf("Delta(%v).Field(%q)=%+v, want %+v written after %v", since, name, f, g, since)
			}
		}
		partial.Merge(d)
		checkSameMap(t, fmt.Sprintf("partial⊔Delta(%v) vs full", since), partial, full)

		checkSameMap(t, "Delta(zero) vs full", full.Delta(crdt.Timestamp{}), full)
		var maxTS crdt.Timestamp
		for _, name := range full.Names() {
			f, _ := full.Field(name)
			if maxTS.Less(f.TS) {
				maxTS = f.TS
			}
		}
		if got := full.Version(); got != maxTS {
			t.Fatalf("Version()=%v, want %v", got, maxTS)
		}
		if v := full.Delta(full.Version()); v.Len() != 0 {
			t.Fatalf("Delta(Version()).Names()=%q, want none", v.Names())
		}
	})
}

func TestMapRegisters(t *testing.T) {
	ts := func(wall int64, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: epoch2026 + wall, Node: node}
	}
	t.Run("LWW", func(t *testing.T) {
		var m crdt.Map
		v := []byte("one")
		if !m.Set("f", v, ts(2, 1)) {
			t.Fatal("Set(f, one, 2)=false, want true")
		}
		v[0] = 'X' // the Map must not retain the caller's slice
		if m.Set("f", []byte("old"), ts(1, 1)) {
			t.Fatal("Set(f, old, 1)=true, want false")
		}
		if got, ok := m.Get("f"); !ok || string(got) != "one" {
			t.Fatalf("Get(f)=%q, %v, want %q", got, ok, "one")
		}
		if !m.Set("f", []byte("two"), ts(2, 2)) { // same wall, higher node wins
			t.Fatal("Set(f, two, 2@2)=false, want true")
		}
		if !m.Delete("f", ts(3, 1)) {
			t.Fatal("Delete(f, 3)=false, want true")
		}
		if got, ok := m.Get("f"); ok {
			t.Fatalf("Get(f) after Delete=%q, want none", got)
		}
		if f, ok := m.Field("f"); !ok || !f.Deleted || m.Len() != 1 || !slices.Equal(m.Names(), []string{"f"}) {
			t.Fatalf("Field(f)=%+v, %v, want a tombstone", f, ok)
		}
		if !m.Set("f", nil, ts(4, 1)) {
			t.Fatal("Set(f, nil, 4)=false, want true")
		}
		if got, ok := m.Get("f"); !ok || got == nil || len(got) != 0 {
			t.Fatalf("Get(f)=%q, %v, want an empty, non-nil value", got, ok)
		}
	})
	t.Run("FWW", func(t *testing.T) {
		var m crdt.Map
		if !m.Claim("n", []byte("late"), ts(5, 1)) {
			t.Fatal("Claim(n, late, 5)=false, want true")
		}
		if !m.Claim("n", []byte("early"), ts(1, 2)) {
			t.Fatal("Claim(n, early, 1)=false, want true")
		}
		if m.Claim("n", []byte("later"), ts(9, 1)) {
			t.Fatal("Claim(n, later, 9)=true, want false")
		}
		if got, _ := m.Get("n"); string(got) != "early" {
			t.Fatalf("Get(n)=%q, want %q", got, "early")
		}
	})
	t.Run("Max", func(t *testing.T) {
		var m crdt.Map
		if got := m.MaxOf("m"); got != 0 {
			t.Fatalf("MaxOf(m)=%d, want 0", got)
		}
		m.Raise("m", 10, ts(1, 1))
		if m.Raise("m", 5, ts(9, 1)) {
			t.Fatal("Raise(m, 5, 9)=true, want false")
		}
		m.Raise("m", -1, ts(10, 1))
		if got := m.MaxOf("m"); got != 10 {
			t.Fatalf("MaxOf(m)=%d, want 10", got)
		}
		if _, ok := m.Get("m"); ok {
			t.Fatal("Get(m) of a max register succeeded, want none")
		}
	})
	t.Run("Flag", func(t *testing.T) {
		var m crdt.Map
		if _, ok := m.Flag("r"); ok {
			t.Fatal("Flag(r) of an empty map is set")
		}
		m.SetFlag("r", ts(5, 1))
		m.SetFlag("r", ts(7, 1))
		m.Set("other", []byte("x"), ts(9, 1))
		if at, ok := m.Flag("r"); !ok || at != ts(5, 1) {
			t.Fatalf("Flag(r)=%v, %v, want %v, true", at, ok, ts(5, 1))
		}
		if _, ok := m.Flag("other"); ok {
			t.Fatal("Flag(other) of an LWW field is set")
		}
	})
	t.Run("Clone", func(t *testing.T) {
		var m crdt.Map
		m.Set("a", []byte("1"), ts(1, 1))
		c := m.Clone()
		c.Set("a", []byte("2"), ts(2, 1))
		c.Set("b", []byte("3"), ts(2, 1))
		if got, _ := m.Get("a"); string(got) != "1" || m.Len() != 1 {
			t.Fatalf("Get(a)=%q, Len()=%d after changing a Clone, want %q, 1", got, m.Len(), "1")
		}
	})
	t.Run("Prune", func(t *testing.T) {
		var m crdt.Map
		m.Set("a", []byte("1"), ts(1, 1))
		m.Delete("b", ts(1, 1))
		m.Prune(func(_ string, f crdt.Field) bool { return f.Deleted })
		if got := m.Names(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("Names()=%q, want [a]", got)
		}
	})
}

// sessionMap builds a session record with n data keys, as storage holds it.
func sessionMap(n int, wall int64, node crdt.NodeID) crdt.Map {
	ts := crdt.Timestamp{Wall: epoch2026 + wall, Node: node}
	m := crdt.NewSession("user-"+strconv.Itoa(int(node)), time.Unix(0, epoch2026).Add(24*time.Hour), time.Hour, ts)
	for i := range n {
		ts.Logical++
		m.Set(crdt.DataPrefix+"key"+strconv.Itoa(i), []byte(`{"value":"`+strconv.Itoa(i*int(node))+`"}`), ts)
	}
	return m
}

func BenchmarkMapMerge(b *testing.B) {
	for _, tc := range []struct {
		name string
		keys int
	}{{"Small10", 6}, {"Session200", 200}} { // 6 data keys + 4 session fields = 10
		b.Run(tc.name, func(b *testing.B) {
			x, y := sessionMap(tc.keys, 1, 1), sessionMap(tc.keys, 2, 2)
			b.ReportAllocs()
			for b.Loop() {
				m := x.Clone()
				m.Merge(y)
			}
		})
		b.Run(tc.name+"/NoChange", func(b *testing.B) {
			x := sessionMap(tc.keys, 1, 1)
			y := x.Clone()
			b.ReportAllocs()
			for b.Loop() {
				x.Merge(y)
			}
		})
	}
}

func TestMergeOvertaking(t *testing.T) {
	const me, other crdt.NodeID = 1, 2
	ts := func(wall int64, n crdt.NodeID) crdt.Timestamp { return crdt.Timestamp{Wall: wall, Node: n} }
	var m crdt.Map
	m.Set("a", []byte("mine"), ts(10, me))
	m.Set("b", []byte("mine"), ts(12, me))
	m.Raise("used", 5, ts(11, me))
	m.SetFlag("revoked", ts(20, me))
	m.Set("c", []byte("theirs"), ts(9, other))

	for _, tc := range []struct {
		name  string
		build func(*crdt.Map)
		want  crdt.Timestamp
	}{
		{"NothingReplaced", func(o *crdt.Map) { o.Set("a", []byte("old"), ts(5, other)) }, crdt.Timestamp{}},
		{"LaterWriteReplacesOurs", func(o *crdt.Map) { o.Set("a", []byte("new"), ts(15, other)) }, ts(10, me)},
		{"LatestOfSeveral", func(o *crdt.Map) {
			o.Set("a", []byte("new"), ts(15, other))
			o.Set("b", []byte("new"), ts(16, other))
		}, ts(12, me)},
		{"EarlierFlagReplacesOurs", func(o *crdt.Map) { o.SetFlag("revoked", ts(18, other)) }, ts(20, me)},
		{"LargerMaxReplacesOurs", func(o *crdt.Map) { o.Raise("used", 9, ts(30, other)) }, ts(11, me)},
		{"SmallerMaxReplacesNothing", func(o *crdt.Map) { o.Raise("used", 3, ts(30, other)) }, crdt.Timestamp{}},
		{"OthersFieldsNotOurs", func(o *crdt.Map) { o.Set("c", []byte("new"), ts(30, other)) }, crdt.Timestamp{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o crdt.Map
			tc.build(&o)
			got, plain := m.Clone(), m.Clone()
			changed, overtaken := got.MergeOvertaking(o, me)
			if want := plain.Merge(o); changed != want || !got.Equal(plain) {
				t.Errorf("MergeOvertaking changed=%v state %v; Merge changed=%v state %v", changed, got, want, plain)
			}
			if overtaken != tc.want {
				t.Errorf("overtaken = %v, want %v", overtaken, tc.want)
			}
		})
	}
}

// TestMapMemo: a value kept with a shared Map's state is found through every copy of that
// state, under its key only, and by no copy once that copy changes; an unshared Map keeps
// nothing.
func TestMapMemo(t *testing.T) {
	ts := crdt.Timestamp{Wall: epoch2026, Node: 1}
	type key struct{}
	var m crdt.Map
	m.Set("a", []byte("1"), ts)
	m.SetMemo(key{}, "unshared")
	if v, ok := m.Memo(key{}); ok {
		t.Fatalf("Memo of an unshared Map = %v, want none", v)
	}
	a := m.Share()
	b := a
	a.SetMemo(key{}, "kept")
	for name, c := range map[string]*crdt.Map{"original": &m, "a": &a, "b": &b} {
		if v, ok := c.Memo(key{}); !ok || v != "kept" {
			t.Fatalf("%s: Memo = %v, %v, want kept", name, v, ok)
		}
		if v, ok := c.Memo("other"); ok {
			t.Fatalf("%s: Memo(other key) = %v, want none", name, v)
		}
	}
	b.Set("a", []byte("2"), crdt.Timestamp{Wall: epoch2026 + 1, Node: 1})
	if v, ok := b.Memo(key{}); ok {
		t.Fatalf("Memo after a change = %v, want none", v)
	}
	if v, ok := a.Memo(key{}); !ok || v != "kept" {
		t.Fatalf("Memo of an unchanged copy after another changed = %v, %v, want kept", v, ok)
	}
}
