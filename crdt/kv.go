package crdt

import (
	"encoding/binary"
	"strings"
	"time"
)

// Key-value records: the service API's namespace for store adapters (scs, gorilla
// sessions), one record per app and key at KVKey(app, key), placed like any key outside
// the user namespaces, by its hash (KeyHomes).
//
// A record's value is a JSON object whose top-level fields are last-writer-wins
// registers (fields named kvValuePrefix + the field's name, holding its JSON text), so two
// nodes that change different fields of one value concurrently both keep their change.
// Three more fields make the record a key with expiry:
//
//   - FieldKVReset (LWW, empty): the latest replacement of the whole value (KVPut). A value
//     field stamped before it is gone, whatever node wrote it and whether or not the
//     replacing node knew of it: replacing is a real operation of the record, not a
//     delete of the fields the writer happened to see.
//   - FieldKVExpires (LWW, Unix nanoseconds): when the value expires. The latest write
//     of it wins, so an expiry can be moved in both directions.
//   - FieldKVKeep (Max, Unix nanoseconds): until when the record is kept — the latest
//     expiry ever written to it, and at least a deletion's grace. Storage keeps a record
//     until then and refuses one already past it; readers never show a value past
//     FieldKVExpires.
//   - FieldKVDeleted (Flag): the key was deleted. Once set, set: a deleted key stays
//     deleted whatever arrives afterwards — a put or a patch stamped later included —
//     until the record is dropped when its keep time passes.
//
// CompactKV removes the fields that can no longer show (stamped before the latest reset,
// every value field of a deleted key, and anything not of the schema); storage applies
// it to every update before merging and to the merged state. Merging compacted records
// and compacting is commutative, associative and idempotent (the property tests check
// it), and so is reading them.
const KVPrefix = "k/" // k/<app>/<key> → key-value record

// Key-value record fields.
const (
	FieldKVReset   = "reset"   // LWW, empty value: the latest KVPut
	FieldKVExpires = "expires" // LWW: expiry, Unix nanoseconds (8 bytes)
	FieldKVKeep    = "keep"    // Max: kept until, Unix nanoseconds
	FieldKVDeleted = "deleted" // Flag: deleted
	kvValuePrefix  = "v/"      // v/<name> LWW: a top-level field of the value, JSON text
)

// KVKey returns the record key of key in app's namespace. The app name must not contain
// '/' (ParseKVKey splits at the first one).
func KVKey(app, key string) string { return KVPrefix + app + "/" + key }

// KVAppPrefix returns the prefix every record key of app's namespace begins with.
func KVAppPrefix(app string) string { return KVPrefix + app + "/" }

// ParseKVKey returns the app and key a KVKey names, and false for any other string.
func ParseKVKey(k string) (app, key string, ok bool) {
	rest, ok := strings.CutPrefix(k, KVPrefix)
	if !ok {
		return "", "", false
	}
	app, key, ok = strings.Cut(rest, "/")
	return app, key, ok && app != "" && key != ""
}

// KVPut returns the update, at ts, that replaces the whole value of a key with fields
// (name → JSON text) expiring at expires: every field stamped before ts is gone, on every
// replica, and the key is kept at least until expires.
func KVPut(fields map[string][]byte, expires time.Time, ts Timestamp) Map {
	var m Map
	m.Set(FieldKVReset, nil, ts)
	for name, v := range fields {
		m.Set(kvValuePrefix+name, v, ts)
	}
	setKVExpiry(&m, expires, ts)
	return m
}

// KVPatch returns the update, at ts, that sets the fields of set (name → JSON text) and
// deletes those named in del; with a non-zero expires, it also moves the expiry there.
// Fields neither set nor deleted keep their values.
func KVPatch(set map[string][]byte, del []string, expires time.Time, ts Timestamp) Map {
	var m Map
	for name, v := range set {
		m.Set(kvValuePrefix+name, v, ts)
	}
	for _, name := range del {
		m.Delete(kvValuePrefix+name, ts)
	}
	if !expires.IsZero() {
		setKVExpiry(&m, expires, ts)
	}
	return m
}

func setKVExpiry(m *Map, expires time.Time, ts Timestamp) {
	ns := expires.UnixNano()
	m.Set(FieldKVExpires, binary.BigEndian.AppendUint64(nil, uint64(ns)), ts) // #nosec G115 -- a bit pattern, read back as int64
	m.Raise(FieldKVKeep, ns, ts)
}

// KVDelete returns the update, at ts, that deletes a key for good: the record, kept at
// least until keep, shows no value whatever is merged into it afterwards.
func KVDelete(keep time.Time, ts Timestamp) Map {
	var m Map
	m.SetFlag(FieldKVDeleted, ts)
	m.Raise(FieldKVKeep, keep.UnixNano(), ts)
	return m
}

// KV is the typed view of a key-value record.
type KV struct {
	Fields  map[string][]byte // the value's live fields (nil when none); values alias the Map
	Expires time.Time         // the zero time (long past) when never set
	Keep    time.Time         // until when the record is kept
	Deleted bool
	// Version is the latest timestamp among the fields the view shows (the value's
	// fields, the reset, the expiry and the deletion).
	Version Timestamp
}

// LiveAt reports whether the key has a value at now: not deleted, not expired.
func (v KV) LiveAt(now time.Time) bool { return !v.Deleted && now.Before(v.Expires) }

// ReadKV returns the typed view of the key-value record m. Fields stamped before the
// latest reset, and every field of a deleted key, do not show, compacted or not.
func ReadKV(m *Map) KV {
	var v KV
	reset, hasReset := kvReset(m)
	if f, ok := m.Field(FieldKVDeleted); ok && f.Kind == KindFlag {
		v.Deleted = true
		v.Version = f.TS
	}
	if f, ok := m.Field(FieldKVExpires); ok && f.Kind == KindLWW && !f.Deleted && len(f.Value) == 8 {
		v.Expires = time.Unix(0, int64(binary.BigEndian.Uint64(f.Value))).UTC() // #nosec G115 -- see setKVExpiry
		v.Version = later(v.Version, f.TS)
	}
	if hasReset {
		v.Version = later(v.Version, reset)
	}
	v.Keep = time.Unix(0, KVKeepNanos(m)).UTC()
	if v.Deleted {
		return v
	}
	for name, f := range m.fields {
		if k, ok := kvField(name, f, reset, hasReset); ok {
			if v.Fields == nil {
				v.Fields = make(map[string][]byte)
			}
			v.Fields[k] = f.Value
			v.Version = later(v.Version, f.TS)
		}
	}
	return v
}

func later(a, b Timestamp) Timestamp {
	if a.Less(b) {
		return b
	}
	return a
}

// kvReset returns the timestamp of the record's latest reset.
func kvReset(m *Map) (Timestamp, bool) {
	f, ok := m.Field(FieldKVReset)
	if !ok || f.Kind != KindLWW {
		return Timestamp{}, false
	}
	return f.TS, true
}

// kvField returns the value field name holds, if it is a live one: a last-writer-wins
// value field, not a tombstone, not stamped before the reset.
func kvField(name string, f Field, reset Timestamp, hasReset bool) (string, bool) {
	k, ok := strings.CutPrefix(name, kvValuePrefix)
	return k, ok && f.Kind == KindLWW && !f.Deleted && !(hasReset && f.TS.Less(reset))
}

// KVKeepNanos returns until when the record m is to be kept, in Unix nanoseconds: 0 (long
// past) for a record without a keep time.
func KVKeepNanos(m *Map) int64 { return m.MaxOf(FieldKVKeep) }

// KVFieldLive reports whether the record m shows a value for field name.
func KVFieldLive(m *Map, name string) bool {
	if _, deleted := m.Flag(FieldKVDeleted); deleted {
		return false
	}
	f, ok := m.fields[kvValuePrefix+name]
	if !ok {
		return false
	}
	reset, hasReset := kvReset(m)
	_, live := kvField(kvValuePrefix+name, f, reset, hasReset)
	return live
}

// KVSize returns how many fields the record m shows and their size (the bytes of their
// names and values), and how many value field names it stores, deleted ones (tombstones)
// included. It allocates nothing.
func KVSize(m *Map) (fields, size, names int) {
	_, deleted := m.Flag(FieldKVDeleted)
	reset, hasReset := kvReset(m)
	for name, f := range m.fields {
		if !strings.HasPrefix(name, kvValuePrefix) {
			continue
		}
		names++
		if k, ok := kvField(name, f, reset, hasReset); ok && !deleted {
			fields++
			size += len(k) + len(f.Value)
		}
	}
	return fields, size, names
}

// kvSchema is the kind of each field of a key-value record but the value's fields, which
// are all last-writer-wins.
var kvSchema = map[string]Kind{
	FieldKVReset:   KindLWW,
	FieldKVExpires: KindLWW,
	FieldKVKeep:    KindMax,
	FieldKVDeleted: KindFlag,
}

// CompactKV removes from the key-value record m the fields that can no longer show: value
// fields stamped before the latest reset, every value field once the key is deleted, and
// any field not of the schema (an unknown name, or a known one of another kind: only a
// faulty or hostile peer sends them). It returns the latest timestamp among the removed
// fields that node stamped (the zero Timestamp if none), as Map.MergeOvertaking does.
//
// Storage compacts every update before merging it and the merged state after, so no
// stored record holds a field of the wrong kind: merging two compacted records and
// compacting the result then does not depend on the order of merges, and ReadKV shows
// the same whether or not a record was compacted.
func CompactKV(m *Map, node NodeID) (overtaken Timestamp) {
	_, deleted := m.Flag(FieldKVDeleted)
	reset, hasReset := kvReset(m)
	m.Prune(func(name string, f Field) bool {
		var drop bool
		if strings.HasPrefix(name, kvValuePrefix) {
			drop = f.Kind != KindLWW || deleted || (hasReset && f.TS.Less(reset))
		} else {
			kind, known := kvSchema[name]
			drop = !known || f.Kind != kind || (kind != KindLWW && f.Deleted)
		}
		if drop && f.TS.Node == node && overtaken.Less(f.TS) {
			overtaken = f.TS
		}
		return drop
	})
	return overtaken
}
