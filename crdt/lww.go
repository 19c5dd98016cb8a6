package crdt

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"maps"
	"slices"
)

// Kind says how a Field merges with a concurrent version of itself.
type Kind uint8

const (
	// KindLWW is a last-writer-wins register: the version with the greater timestamp wins.
	// A delete is a tombstone with its own timestamp.
	KindLWW Kind = 1
	// KindFWW is a first-writer-wins register: the version with the smaller timestamp wins.
	// Username claims use it, so the first registration of a name wins on every replica.
	KindFWW Kind = 2
	// KindMax is a max-register over an int64 (Value holds 8 big-endian bytes): the larger
	// value wins, ties by timestamp. Last use of a session, for sliding idle expiry.
	KindMax Kind = 3
	// KindFlag is a monotonic flag: once set it stays set whatever arrives later. Merged
	// timestamps keep the earliest setting. Revocation and account deletion use it.
	KindFlag Kind = 4
)

func (k Kind) valid() bool { return k >= KindLWW && k <= KindFlag }

// Field is one register of a Map.
type Field struct {
	Kind    Kind
	TS      Timestamp
	Deleted bool   // a tombstone (KindLWW only)
	Value   []byte // nil for tombstones and flags
}

// wins reports whether a should replace b when the two versions of a field merge. It is a
// strict total order on distinct versions, so merging is commutative and associative.
func wins(a, b Field) bool {
	if a.Kind != b.Kind { // only under corruption or a schema bug; stay deterministic
		return a.Kind > b.Kind
	}
	switch a.Kind {
	case KindFWW, KindFlag:
		if c := a.TS.Compare(b.TS); c != 0 {
			return c < 0
		}
	case KindMax:
		av, bv := maxValue(a), maxValue(b)
		if av != bv {
			return av > bv
		}
		if c := a.TS.Compare(b.TS); c != 0 {
			return c > 0
		}
	default:
		if c := a.TS.Compare(b.TS); c != 0 {
			return c > 0
		}
	}
	// Same timestamp: the same write seen twice, unless the input is hostile. Order by
	// content so that even then every replica picks the same version.
	if a.Deleted != b.Deleted {
		return a.Deleted
	}
	return bytes.Compare(a.Value, b.Value) > 0
}

func maxValue(f Field) int64 {
	if len(f.Value) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(f.Value))
}

// Map is a replicated record: named fields, each a register of some Kind, merged field by
// field. Concurrent edits to different fields all survive. The zero Map is empty and ready
// to use. A Map is a value to be owned by one goroutine; it is not safe for concurrent use.
// Methods never retain or modify the byte slices passed to them.
type Map struct {
	fields map[string]Field
	// origins, when not nil, is each writing node's latest timestamp among the fields,
	// sorted by node: computed when a Map is decoded, dropped by any change, shared by
	// copies (never modified once set). Bookmark.AddMap reads it instead of every field.
	origins []Timestamp
	// shared: fields may be read by other Maps (Share), so the first change copies it.
	shared bool
	// views, when not nil, memoizes the typed views of the fields (records.go), for the
	// Maps that Share made to be read many times: set by Share, shared by the copies,
	// dropped by any change.
	views *views
}

// latestByNode returns each node's latest timestamp among m's fields, sorted by node.
func (m *Map) latestByNode() []Timestamp {
	var out []Timestamp
	for _, f := range m.fields {
		i, found := slices.BinarySearchFunc(out, f.TS.Node, func(t Timestamp, n NodeID) int { return cmp.Compare(t.Node, n) })
		switch {
		case !found:
			out = slices.Insert(out, i, f.TS)
		case out[i].Less(f.TS):
			out[i] = f.TS
		}
	}
	return out
}

// Len returns the number of fields, tombstones included.
func (m *Map) Len() int { return len(m.fields) }

// Field returns the named field as stored, tombstones included.
func (m *Map) Field(name string) (Field, bool) {
	f, ok := m.fields[name]
	return f, ok
}

// Names returns the field names in ascending order, tombstones included.
func (m *Map) Names() []string {
	return slices.Sorted(maps.Keys(m.fields))
}

// put merges f into the field name and reports whether the map changed.
func (m *Map) put(name string, f Field) bool {
	old, ok := m.fields[name]
	if ok && !wins(f, old) {
		return false
	}
	m.own()
	if m.fields == nil {
		m.fields = make(map[string]Field)
	}
	if f.Value != nil {
		f.Value = bytes.Clone(f.Value)
	}
	m.fields[name] = f
	m.origins = nil
	return true
}

// Set writes value to the last-writer-wins field name at ts. It reports whether the write
// took effect (false when a later version is already there).
func (m *Map) Set(name string, value []byte, ts Timestamp) bool {
	if value == nil {
		value = []byte{}
	}
	return m.put(name, Field{Kind: KindLWW, TS: ts, Value: value})
}

// Delete writes a tombstone to the last-writer-wins field name at ts.
func (m *Map) Delete(name string, ts Timestamp) bool {
	return m.put(name, Field{Kind: KindLWW, TS: ts, Deleted: true})
}

// Get returns the value of a live last-writer-wins or first-writer-wins field. The slice
// belongs to the Map: copy it before modifying.
func (m *Map) Get(name string) ([]byte, bool) {
	f, ok := m.fields[name]
	if !ok || f.Deleted || (f.Kind != KindLWW && f.Kind != KindFWW) {
		return nil, false
	}
	return f.Value, true
}

// Claim writes value to the first-writer-wins field name at ts. It reports whether this
// claim is now the winning one.
func (m *Map) Claim(name string, value []byte, ts Timestamp) bool {
	if value == nil {
		value = []byte{}
	}
	return m.put(name, Field{Kind: KindFWW, TS: ts, Value: value})
}

// Raise writes v to the max-register name at ts; the field keeps the largest value ever
// written.
func (m *Map) Raise(name string, v int64, ts Timestamp) bool {
	return m.put(name, Field{Kind: KindMax, TS: ts, Value: binary.BigEndian.AppendUint64(nil, uint64(v))})
}

// MaxOf returns the value of the max-register name, or 0 when it was never written.
func (m *Map) MaxOf(name string) int64 {
	f, ok := m.fields[name]
	if !ok || f.Kind != KindMax {
		return 0
	}
	return maxValue(f)
}

// SetFlag sets the monotonic flag name at ts. Once set, no merge unsets it.
func (m *Map) SetFlag(name string, ts Timestamp) bool {
	return m.put(name, Field{Kind: KindFlag, TS: ts})
}

// Flag reports whether the monotonic flag name is set, and since when.
func (m *Map) Flag(name string) (Timestamp, bool) {
	f, ok := m.fields[name]
	if !ok || f.Kind != KindFlag {
		return Timestamp{}, false
	}
	return f.TS, true
}

// Merge merges every field of o into m and reports whether m changed. Merge is
// commutative, associative and idempotent.
func (m *Map) Merge(o Map) bool {
	changed := false
	for name, f := range o.fields {
		if m.put(name, f) {
			changed = true
		}
	}
	return changed
}

// MergeOvertaking merges o into m as Merge does, and also returns the latest timestamp
// of the fields of m stamped by node that o's fields replaced (the zero Timestamp if
// none): node's writes that m no longer shows because a later write, for a
// first-writer-wins field or a flag an earlier one, or for a max register a larger value,
// won. (A larger value shows a max register's effect, but it is another node's write:
// a replica it has not reached shows neither.)
func (m *Map) MergeOvertaking(o Map, node NodeID) (changed bool, overtaken Timestamp) {
	for name, f := range o.fields {
		old, had := m.fields[name]
		if m.put(name, f) {
			changed = true
			if had && old.TS.Node == node && overtaken.Less(old.TS) {
				overtaken = old.TS
			}
		}
	}
	return changed, overtaken
}

// Delta returns the fields of m written after since: what a replica that has seen
// everything up to since is missing. Merging the delta into such a replica yields m.
func (m *Map) Delta(since Timestamp) Map {
	var d Map
	for name, f := range m.fields {
		if since.Less(f.TS) {
			d.put(name, f)
		}
	}
	return d
}

// Version returns the greatest timestamp of any field: the map's latest write.
func (m *Map) Version() Timestamp {
	var v Timestamp
	for _, f := range m.fields {
		if v.Less(f.TS) {
			v = f.TS
		}
	}
	return v
}

// Clone returns a deep copy of m.
func (m *Map) Clone() Map {
	var c Map
	for name, f := range m.fields {
		c.put(name, f)
	}
	return c
}

// Copy returns a copy of m that shares its field values with m. No Map method modifies a
// value in place, so either map can be merged, edited or pruned afterwards without
// affecting the other; only writing into a slice from Get or Field would, which Get
// forbids. It is cheaper than Clone for a copy that will only be read.
func (m *Map) Copy() Map { return Map{fields: maps.Clone(m.fields), origins: m.origins} }

// Share returns a copy of m that shares its fields with m until either is changed: the
// first change to either copies the fields, once. It copies nothing itself, which makes it
// the copy for a state that many readers take and few change (the storage's record
// cache); the typed views of the state (ReadSessionMeta, ReadSessionOrigin, ReadUserMeta)
// are then computed once and shared too, until a change. Share marks m, so like every
// method that changes m it must not run concurrently with another use of m; the Maps it
// returns are independent values, safe to read concurrently with each other.
func (m *Map) Share() Map {
	m.shared = true
	if m.views == nil {
		m.views = new(views)
	}
	return *m
}

// own makes m the only holder of its fields, and drops their views, before a change.
func (m *Map) own() {
	if m.shared {
		m.fields, m.shared = maps.Clone(m.fields), false
	}
	m.views = nil
}

// Equal reports whether m and o hold the same fields and versions.
func (m *Map) Equal(o Map) bool {
	if len(m.fields) != len(o.fields) {
		return false
	}
	for name, f := range m.fields {
		g, ok := o.fields[name]
		if !ok || f.Kind != g.Kind || f.TS != g.TS || f.Deleted != g.Deleted || !bytes.Equal(f.Value, g.Value) {
			return false
		}
	}
	return true
}

// Prune removes the fields for which drop returns true, such as tombstones that every
// replica is known to have dropped the record for. It breaks convergence if misused; see
// the storage package for when it is safe.
func (m *Map) Prune(drop func(name string, f Field) bool) {
	for name, f := range m.fields {
		if drop(name, f) {
			m.own() // the range goes on over the fields as they were, which stay unchanged
			delete(m.fields, name)
			m.origins = nil
		}
	}
}
