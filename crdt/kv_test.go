package crdt_test

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// kvOp is one write to a key-value record: a put, a patch, a delete, or (raw) any field
// at all, as a faulty or hostile peer might send.
type kvOp struct {
	Op      string // put, patch, delete, raw
	Set     map[string][]byte
	Del     []string
	Expires time.Time // zero: a patch that leaves the expiry
	TS      crdt.Timestamp
	Raw     mapOp
}

func (op kvOp) String() string {
	if op.Op == "raw" {
		return "raw " + op.Raw.String()
	}
	return fmt.Sprintf("%s(set=%q del=%q expires=%d, %v)", op.Op, op.Set, op.Del, op.Expires.Unix()-epoch2026s, op.TS)
}

const epoch2026s = epoch2026 / int64(time.Second)

func (op kvOp) update() crdt.Map {
	switch op.Op {
	case "put":
		return crdt.KVPut(op.Set, op.Expires, op.TS)
	case "patch":
		return crdt.KVPatch(op.Set, op.Del, op.Expires, op.TS)
	case "delete":
		return crdt.KVDelete(op.Expires, op.TS)
	}
	var m crdt.Map
	op.Raw.apply(&m)
	return m
}

var kvFieldNames = []string{"a", "b", "cart"}

// kvRawNames are the names a raw write uses: the schema's, value fields, and junk.
var kvRawNames = []string{"v/a", "v/b", "reset", "expires", "keep", "deleted", "user", "d/x"}

func genKVTime() *rapid.Generator[time.Time] {
	return rapid.Custom(func(t *rapid.T) time.Time {
		return time.Unix(epoch2026s+rapid.Int64Range(0, 4).Draw(t, "expires"), 0).UTC()
	})
}

func genKVOp(raw bool) *rapid.Generator[kvOp] {
	return rapid.Custom(func(t *rapid.T) kvOp {
		kinds := []string{"put", "patch", "delete"}
		if raw {
			kinds = append(kinds, "raw")
		}
		op := kvOp{Op: rapid.SampledFrom(kinds).Draw(t, "op"), TS: genTS().Draw(t, "ts")}
		switch op.Op {
		case "put", "patch":
			op.Set = make(map[string][]byte)
			for _, name := range rapid.SliceOfNDistinct(rapid.SampledFrom(kvFieldNames), 0, 3, rapid.ID).Draw(t, "set") {
				op.Set[name] = rapid.SampledFrom([][]byte{[]byte("1"), []byte(`"x"`), []byte(`{"n":2}`)}).Draw(t, "value")
			}
			if op.Op == "patch" {
				op.Del = rapid.SliceOfNDistinct(rapid.SampledFrom(kvFieldNames), 0, 2, rapid.ID).Draw(t, "del")
				op.Del = slices.DeleteFunc(op.Del, func(n string) bool { _, set := op.Set[n]; return set })
				if rapid.Bool().Draw(t, "expiry") {
					op.Expires = genKVTime().Draw(t, "expires")
				}
			} else {
				op.Expires = genKVTime().Draw(t, "expires")
			}
		case "delete":
			op.Expires = genKVTime().Draw(t, "keep")
		case "raw":
			op.Raw = genOp(true).Draw(t, "raw")
			op.Raw.Name = rapid.SampledFrom(kvRawNames).Draw(t, "name")
			op.Raw.TS = op.TS
		}
		return op
	})
}

// kvApply merges update into the stored state s as storage does: the update compacted
// first, then the merged state.
func kvApply(s *crdt.Map, update crdt.Map) {
	u := update.Clone()
	crdt.CompactKV(&u, 0)
	s.Merge(u)
	crdt.CompactKV(s, 0)
}

func kvFrom(ops []kvOp) crdt.Map {
	var m crdt.Map
	for _, op := range ops {
		kvApply(&m, op.update())
	}
	return m
}

// kvJoin is the merge of stored states: merge, then compact.
func kvJoin(a, b crdt.Map) crdt.Map {
	out := a.Clone()
	kvApply(&out, b)
	return out
}

// kvOracle computes the view of a record naively from the writes (not raw ones):
// deleted if any write deleted it; otherwise each field's latest write at or after the
// latest put, if that is not a delete; the expiry of the latest write that set one;
// kept until the largest expiry or deletion keep written.
func kvOracle(ops []kvOp) crdt.KV {
	var v crdt.KV
	var reset, expTS crdt.Timestamp
	type write struct {
		ts  crdt.Timestamp
		val []byte // nil: deleted
	}
	fields := make(map[string]write)
	var keep int64
	for _, op := range ops {
		switch op.Op {
		case "delete":
			v.Deleted = true
			keep = max(keep, op.Expires.UnixNano())
		case "put":
			if reset.Less(op.TS) {
				reset = op.TS
			}
		}
		if !op.Expires.IsZero() && op.Op != "delete" {
			keep = max(keep, op.Expires.UnixNano())
			// Equal stamps (only a faulty peer issues them) order by content, as Map does.
			if expTS.Less(op.TS) || expTS == op.TS && op.Expires.After(v.Expires) {
				expTS, v.Expires = op.TS, op.Expires
			}
		}
		for name, val := range op.Set {
			if w, ok := fields[name]; !ok || w.ts.Less(op.TS) || w.ts == op.TS && w.val != nil && bytes.Compare(val, w.val) > 0 {
				fields[name] = write{op.TS, val}
			}
		}
		for _, name := range op.Del {
			if w, ok := fields[name]; !ok || !op.TS.Less(w.ts) {
				fields[name] = write{op.TS, nil}
			}
		}
	}
	v.Keep = time.Unix(0, keep).UTC()
	if v.Deleted {
		return v
	}
	for name, w := range fields {
		if w.val != nil && !w.ts.Less(reset) {
			if v.Fields == nil {
				v.Fields = make(map[string][]byte)
			}
			v.Fields[name] = w.val
		}
	}
	return v
}

func sameKV(a, b crdt.KV) bool {
	return a.Deleted == b.Deleted && a.Expires.Equal(b.Expires) && a.Keep.Equal(b.Keep) &&
		maps.EqualFunc(a.Fields, b.Fields, bytes.Equal)
}

func checkSameKV(t *rapid.T, what string, got, want crdt.KV) {
	if !sameKV(got, want) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

// TestKVMergeLaws: merging compacted records and compacting is commutative, associative
// and idempotent, hostile fields included, and a record's view is the same whether it was
// built write by write, merged from replicas, or compacted at all.
func TestKVMergeLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		raw := rapid.IntRange(0, 3).Draw(t, "raw") == 0
		a := kvFrom(rapid.SliceOfN(genKVOp(raw), 0, 12).Draw(t, "a"))
		b := kvFrom(rapid.SliceOfN(genKVOp(raw), 0, 12).Draw(t, "b"))
		c := kvFrom(rapid.SliceOfN(genKVOp(raw), 0, 12).Draw(t, "c"))

		checkSameMap(t, "a⊔b vs b⊔a", kvJoin(a, b), kvJoin(b, a))
		checkSameMap(t, "(a⊔b)⊔c vs a⊔(b⊔c)", kvJoin(kvJoin(a, b), c), kvJoin(a, kvJoin(b, c)))
		checkSameMap(t, "a⊔a vs a", kvJoin(a, a), a)
		ab := kvJoin(a, b)
		checkSameMap(t, "(a⊔b)⊔b vs a⊔b", kvJoin(ab, b), ab)
		compacted := ab.Clone()
		if crdt.CompactKV(&compacted, 0); !compacted.Equal(ab) {
			t.Fatal("a stored state is not compacted")
		}
	})
}

// TestKVOracle: every replica that receives the same writes, in any order and any
// grouping, shows what the naive oracle says; without raw writes, so does the plain
// merge of the writes with no compaction at all.
func TestKVOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ops := rapid.SliceOfN(genKVOp(false), 1, 20).Draw(t, "ops")
		want := kvOracle(ops)
		checkSameKV(t, "in order", crdt.ReadKV(ptr(kvFrom(ops))), want)

		var plain crdt.Map
		for _, op := range ops {
			plain.Merge(op.update())
		}
		checkSameKV(t, "uncompacted", crdt.ReadKV(&plain), want)

		// Two replicas, each with some of the writes in a shuffled order, then merged.
		perm := rapid.Permutation(ops).Draw(t, "order")
		cut := rapid.IntRange(0, len(perm)).Draw(t, "cut")
		x, y := kvFrom(perm[:cut]), kvFrom(perm[cut:])
		checkSameKV(t, "merged replicas", crdt.ReadKV(ptr(kvJoin(x, y))), want)
		checkSameMap(t, "merged replicas vs in order", kvJoin(x, y), kvFrom(ops))
	})
}

func ptr(m crdt.Map) *crdt.Map { return &m }

// TestKVDeleteSticky: once a record holds a delete, no write merged into it — stamped
// later, put or patch, raw, in any number — brings a value back.
func TestKVDeleteSticky(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		before := rapid.SliceOfN(genKVOp(true), 0, 8).Draw(t, "before")
		del := kvOp{Op: "delete", Expires: genKVTime().Draw(t, "keep"), TS: genTS().Draw(t, "ts")}
		after := rapid.SliceOfN(genKVOp(true), 1, 12).Draw(t, "after")
		m := kvFrom(append(slices.Clone(before), del))
		for _, op := range after {
			if op.Op != "raw" || !rapid.Bool().Draw(t, "any stamp") {
				op.TS.Wall = del.TS.Wall + 1 + int64(op.TS.Logical) // later than the delete
			}
			kvApply(&m, op.update())
			v := crdt.ReadKV(&m)
			if !v.Deleted || v.Fields != nil || v.LiveAt(time.Unix(0, 0)) {
				t.Fatalf("after %v: %+v, want deleted with no fields", op, v)
			}
			if _, _, names := crdt.KVSize(&m); names != 0 {
				t.Fatalf("after %v: %d value fields stored, want 0", op, names)
			}
		}
		if keep := crdt.ReadKV(&m).Keep; keep.Before(del.Expires) {
			t.Fatalf("Keep=%v, want at least the delete's %v", keep, del.Expires)
		}
	})
}

func TestKVKey(t *testing.T) {
	for _, tc := range []struct {
		key, app, k string
		ok          bool
	}{
		{crdt.KVKey("shop", "tok/en"), "shop", "tok/en", true},
		{"k/shop/x", "shop", "x", true},
		{"k//x", "", "", false},
		{"k/shop/", "", "", false},
		{"k/shop", "", "", false},
		{"s/shop/x", "", "", false},
	} {
		app, k, ok := crdt.ParseKVKey(tc.key)
		if ok != tc.ok || (ok && (app != tc.app || k != tc.k)) {
			t.Errorf("ParseKVKey(%q)=%q, %q, %v, want %q, %q, %v", tc.key, app, k, ok, tc.app, tc.k, tc.ok)
		}
	}
	if h, want := crdt.KeyHomes(crdt.KVKey("shop", "a")), crdt.KeyHomes("k/shop/a"); h != want {
		t.Errorf("KeyHomes=%v, want %v", h, want)
	}
}

func TestKVView(t *testing.T) {
	ts := func(w int64) crdt.Timestamp { return crdt.Timestamp{Wall: epoch2026 + w, Node: 1} }
	exp := time.Unix(epoch2026s+100, 0).UTC()
	m := crdt.KVPut(map[string][]byte{"a": []byte("1"), "b": []byte("2")}, exp, ts(1))
	kvApply(&m, crdt.KVPatch(map[string][]byte{"c": []byte("3")}, []string{"a"}, time.Time{}, ts(2)))
	v := crdt.ReadKV(&m)
	if want := map[string][]byte{"b": []byte("2"), "c": []byte("3")}; !maps.EqualFunc(v.Fields, want, bytes.Equal) {
		t.Errorf("Fields=%q, want %q", v.Fields, want)
	}
	if !v.Expires.Equal(exp) || !v.Keep.Equal(exp) || v.Version != ts(2) {
		t.Errorf("Expires=%v Keep=%v Version=%v, want %v %v %v", v.Expires, v.Keep, v.Version, exp, exp, ts(2))
	}
	if !v.LiveAt(exp.Add(-time.Nanosecond)) || v.LiveAt(exp) {
		t.Error("LiveAt: want live until the expiry, not at it")
	}
	if !crdt.KVFieldLive(&m, "b") || crdt.KVFieldLive(&m, "a") {
		t.Error("KVFieldLive(b)=false or KVFieldLive(a)=true")
	}
	if fields, size, names := crdt.KVSize(&m); fields != 2 || size != 4 || names != 3 {
		t.Errorf("KVSize=%d, %d, %d, want 2, 4, 3", fields, size, names)
	}
	// A put stamped before the patch does not hide it; one after does.
	kvApply(&m, crdt.KVPut(map[string][]byte{"d": []byte("4")}, exp, ts(1)))
	if v := crdt.ReadKV(&m); len(v.Fields) != 3 {
		t.Errorf("after an earlier put: Fields=%q, want b, c, d", v.Fields)
	}
	kvApply(&m, crdt.KVPut(map[string][]byte{"e": []byte("5")}, exp.Add(time.Hour), ts(3)))
	if v := crdt.ReadKV(&m); len(v.Fields) != 1 || v.Fields["e"] == nil || !v.Keep.Equal(exp.Add(time.Hour)) {
		t.Errorf("after a later put: %+v, want only e, kept an hour more", v)
	}
	if _, _, names := crdt.KVSize(&m); names != 1 {
		t.Errorf("after a later put: %d value fields stored, want the one", names)
	}
	// Moving the expiry back keeps the record as long as the latest expiry written.
	kvApply(&m, crdt.KVPatch(nil, nil, exp.Add(-time.Hour), ts(4)))
	if v := crdt.ReadKV(&m); !v.Expires.Equal(exp.Add(-time.Hour)) || !v.Keep.Equal(exp.Add(time.Hour)) {
		t.Errorf("after an earlier expiry: Expires=%v Keep=%v", v.Expires, v.Keep)
	}
	// A record without an expiry is never live.
	var bare crdt.Map
	kvApply(&bare, crdt.KVPatch(map[string][]byte{"a": []byte("1")}, nil, time.Time{}, ts(1)))
	if crdt.ReadKV(&bare).LiveAt(time.Unix(0, 0)) {
		t.Error("a record without an expiry is live")
	}
}

func TestCompactKVOvertaken(t *testing.T) {
	mine := crdt.Timestamp{Wall: epoch2026 + 1, Node: 7}
	m := crdt.KVPatch(map[string][]byte{"a": []byte("1")}, nil, time.Time{}, mine)
	m.Merge(crdt.KVPut(nil, time.Unix(epoch2026s+100, 0), crdt.Timestamp{Wall: epoch2026 + 2, Node: 8}))
	if got := crdt.CompactKV(&m, 7); got != mine {
		t.Errorf("CompactKV=%v, want %v (node 7's field removed)", got, mine)
	}
	if got := crdt.CompactKV(&m, 7); !got.IsZero() {
		t.Errorf("CompactKV again=%v, want zero", got)
	}
}
