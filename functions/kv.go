package functions

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions/ijson"
)

// Limits of the key-value namespace (docs/API.md lists them).
const (
	MaxKVKey      = 256      // bytes of a key
	MaxKVAppName  = 64       // bytes of an app's name, as it appears in record keys
	MaxKVField    = 128      // bytes of a field's name
	MaxKVFields   = 256      // fields of one value
	MaxKVNames    = 1024     // field names one record keeps, deleted ones (tombstones) included
	MaxKVValue    = 64 << 10 // bytes of a value: its fields' names and values
	MaxKVTTL      = 90 * 24 * time.Hour
	DefaultKVPage = 100
	MaxKVPage     = 500 // keys per page without values
	MaxKVPageVals = 100 // keys per page with values
	// KVTombstoneGrace is how long at least a deleted key's tombstone is kept after the
	// deletion (longer when the key was to expire later): a write of the key made
	// before the deletion on a node that had not heard of it, arriving within it, stays
	// hidden.
	KVTombstoneGrace = time.Hour
	// maxKVPageBytes bounds the values of one page; a page holds at least one key.
	maxKVPageBytes = 1 << 20
	// kvScanFactor bounds the stored records one page reads, as a multiple of its
	// limit: expired and deleted keys count too, so a namespace full of tombstones
	// gives short pages rather than long requests.
	kvScanFactor = 8
)

// KVLister lists the key-value records of an app held here; *storage.DB implements it
// (see its KVRange for the contract).
type KVLister interface {
	KVRange(ctx context.Context, app string, from int, after string, held func(p int) bool,
		visit func(p int, key string, m crdt.Map) bool) error
}

// KV is the service API's key-value namespace: each app's keys, each a JSON object whose
// top-level fields merge one by one, with an expiry (crdt's key-value records). A
// deletion wins over every write of the key that arrives after it, however it is
// stamped, until its tombstone is dropped. It holds no state between calls and is safe
// for concurrent use.
type KV struct {
	Store  Store
	Lister KVLister
	Clock  Clock
	Quota  *Quota // bounds what each app stores; nil: nothing
}

// KVItem is a key and its value as the API shows it (package api owns the JSON shape).
type KVItem = api.KVItem

// KVPut replaces a key's whole value: Value's fields (a null value leaves a field out),
// expiring TTL from now.
type KVPut struct {
	Value map[string]json.RawMessage
	TTL   time.Duration
}

// KVPatch changes some fields of a key's value: Set writes fields, Delete removes them,
// and a TTL other than 0 moves the expiry to TTL from now.
type KVPatch struct {
	Set    map[string]json.RawMessage
	Delete []string
	TTL    time.Duration
}

var (
	errKVNotFound = Errorf(ENotFound, "no such key")
	errKVDeleted  = Errorf(EKeyDeleted, "the key was deleted; a deleted key cannot be written until its tombstone is gone (at least an hour; use a new key)")
)

// ValidKVApp checks an app's name as the namespace uses it: 1 to MaxKVAppName bytes,
// without '/' or control characters.
func ValidKVApp(app string) error {
	if app == "" || len(app) > MaxKVAppName || strings.ContainsFunc(app, func(r rune) bool { return r == '/' || unicode.IsControl(r) }) || !utf8.ValidString(app) {
		return Errorf(EInvalid, "app names must be 1 to %d bytes of printable UTF-8 without '/'", MaxKVAppName)
	}
	return nil
}

// ValidKVKey checks a key: 1 to MaxKVKey bytes of A–Z, a–z, 0–9 and - _ . ~ : @ + =
// (URL-safe in a path: base64url and base32 session IDs, UUIDs, "prefix:id"), and not
// "." or "..".
func ValidKVKey(key string) error {
	if key == "" || len(key) > MaxKVKey || key == "." || key == ".." {
		return Errorf(EInvalid, "keys must be 1 to %d bytes of A-Z a-z 0-9 - _ . ~ : @ + = (not \".\" or \"..\")", MaxKVKey)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.~:@+=", c) >= 0) {
			return Errorf(EInvalid, "keys must be 1 to %d bytes of A-Z a-z 0-9 - _ . ~ : @ + = (not \".\" or \"..\")", MaxKVKey)
		}
	}
	return nil
}

func validKVField(name string) error {
	if len(name) == 0 || len(name) > MaxKVField || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return Errorf(EInvalid, "field names must be 1 to %d bytes of printable UTF-8", MaxKVField)
	}
	return nil
}

// validKVValue checks a field's value: JSON, not null.
func validKVValue(name string, v json.RawMessage) error {
	if len(v) > MaxKVValue {
		return Errorf(ETooLarge, "value of field %q is %d bytes, at most %d", name, len(v), MaxKVValue)
	}
	if err := ijson.Check(v); err != nil {
		return Errorf(EInvalid, "value of field %q: %v (values are I-JSON, RFC 7493)", name, err)
	}
	return nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

func validKVTTL(ttl time.Duration, required bool) error {
	if ttl == 0 && !required {
		return nil
	}
	if ttl <= 0 || ttl > MaxKVTTL {
		return Errorf(EInvalid, "ttl must be 1 to %d seconds", int64(MaxKVTTL/time.Second))
	}
	return nil
}

func (k *KV) check(app, key string) error {
	if err := ValidKVApp(app); err != nil {
		return err
	}
	return ValidKVKey(key)
}

// kvItem returns the API's view of key's record.
func kvItem(key string, v crdt.KV, values bool) KVItem {
	it := KVItem{Key: key, ExpiresAt: v.Expires}
	if values {
		it.Value = make(map[string]json.RawMessage, len(v.Fields))
		for name, f := range v.Fields {
			it.Value[name] = json.RawMessage(f)
		}
	}
	return it
}

// Get returns the value of app's key. A key that does not exist, has expired or was
// deleted is ENotFound.
func (k *KV) Get(ctx context.Context, app, key string) (KVItem, error) {
	if err := k.check(app, key); err != nil {
		return KVItem{}, err
	}
	m, ok, err := k.Store.Record(ctx, crdt.KVKey(app, key))
	if err != nil {
		return KVItem{}, err
	}
	v := crdt.ReadKV(&m)
	if !ok || !v.LiveAt(k.Clock.PhysicalNow()) {
		return KVItem{}, errKVNotFound
	}
	return kvItem(key, v, true), nil
}

// Put replaces the whole value of app's key, creating it if absent or expired, and
// returns it. Concurrent writes to other fields stamped after it survive (the merge is
// per field); every field stamped before it is gone. A deleted key is EKeyDeleted; a
// value beyond the limits (MaxKVFields, MaxKVValue) ETooLarge.
func (k *KV) Put(ctx context.Context, app, key string, req KVPut) (KVItem, error) {
	if err := k.check(app, key); err != nil {
		return KVItem{}, err
	}
	if err := validKVTTL(req.TTL, true); err != nil {
		return KVItem{}, err
	}
	if len(req.Value) > MaxKVFields {
		return KVItem{}, Errorf(ETooLarge, "at most %d fields", MaxKVFields)
	}
	fields := make(map[string][]byte, len(req.Value))
	for name, v := range req.Value {
		err := validKVField(name)
		if err == nil {
			err = printableName("field name", name)
		}
		if err != nil {
			return KVItem{}, err
		}
		if err := validKVValue(name, v); err != nil {
			return KVItem{}, err
		}
		if !isNull(v) {
			fields[name] = v
		}
	}
	return k.write(ctx, app, key, false, func(_ *crdt.Map, ts crdt.Timestamp) crdt.Map {
		return crdt.KVPut(fields, ts.Time().Add(req.TTL), ts)
	})
}

// Patch sets and deletes fields of app's key and returns its value. Fields it does not
// name keep their values, also those another node changes concurrently. A key that does
// not exist or has expired is ENotFound, a deleted one EKeyDeleted; a value that would
// go beyond the limits (MaxKVFields, MaxKVValue, MaxKVNames) ETooLarge, and nothing
// changes.
func (k *KV) Patch(ctx context.Context, app, key string, req KVPatch) (KVItem, error) {
	if err := k.check(app, key); err != nil {
		return KVItem{}, err
	}
	if err := validKVTTL(req.TTL, false); err != nil {
		return KVItem{}, err
	}
	if len(req.Set)+len(req.Delete) > MaxKVFields {
		return KVItem{}, Errorf(ETooLarge, "at most %d fields per update", MaxKVFields)
	}
	set := make(map[string][]byte, len(req.Set))
	for name, v := range req.Set {
		err := validKVField(name)
		if err == nil {
			err = printableName("field name", name)
		}
		if err != nil {
			return KVItem{}, err
		}
		if err := validKVValue(name, v); err != nil {
			return KVItem{}, err
		}
		if isNull(v) {
			return KVItem{}, Errorf(EInvalid, "value of field %q is null; delete the field instead", name)
		}
		set[name] = v
	}
	for _, name := range req.Delete {
		if err := validKVField(name); err != nil {
			return KVItem{}, err
		}
	}
	return k.write(ctx, app, key, true, func(cur *crdt.Map, ts crdt.Timestamp) crdt.Map {
		// A tombstone is kept until the next put: write one only for a field that
		// has a value, so deleting fields never set grows nothing.
		var del []string
		for _, name := range req.Delete {
			if crdt.KVFieldLive(cur, name) {
				del = append(del, name)
			}
		}
		var expires time.Time
		if req.TTL > 0 {
			expires = ts.Time().Add(req.TTL)
		}
		return crdt.KVPatch(set, del, expires, ts)
	})
}

// write merges the update that build makes from the key's current record at a new
// timestamp, and checks the result: a deleted key is EKeyDeleted; with live, a key that
// is not live is ENotFound; over the limits ETooLarge (the write is discarded).
func (k *KV) write(ctx context.Context, app, key string, live bool, build func(cur *crdt.Map, ts crdt.Timestamp) crdt.Map) (KVItem, error) {
	var v crdt.KV
	quota := k.Quota.claim(app)
	defer quota.release()
	err := k.Store.Update(ctx, func(tx Tx) error {
		rk := crdt.KVKey(app, key)
		cur, had, err := tx.Record(rk)
		if err != nil {
			return err
		}
		before := storedSize(rk, &cur, had)
		ts := k.Clock.Next()
		if was := crdt.ReadKV(&cur); was.Deleted {
			return errKVDeleted
		} else if live && !was.LiveAt(ts.Time()) {
			return errKVNotFound
		}
		merged, err := tx.Merge(rk, build(&cur, ts))
		if err != nil {
			return err
		}
		fields, size, names := crdt.KVSize(&merged)
		switch v = crdt.ReadKV(&merged); {
		case v.Deleted: // a deletion merged since: not possible within one transaction, but checked
			return errKVDeleted
		case fields > MaxKVFields:
			return Errorf(ETooLarge, "the value would have %d fields, at most %d", fields, MaxKVFields)
		case size > MaxKVValue:
			return Errorf(ETooLarge, "the value would be %d bytes, at most %d", size, MaxKVValue)
		case names > MaxKVNames:
			return Errorf(ETooLarge, "the key would keep %d field names, deleted ones included, at most %d: a deleted field is remembered until the next put; put the whole value instead", names, MaxKVNames)
		}
		return quota.allows(storedSize(rk, &merged, true) - before)
	})
	if err != nil {
		return KVItem{}, err
	}
	return kvItem(key, v, true), nil
}

// Delete deletes app's key for good: it stops showing at once, and no write of it that
// arrives later, from any node and however it is stamped, brings it back while its
// tombstone is kept (until the latest expiry written to it, and at least
// KVTombstoneGrace). Deleting a key that does not exist (here: it may exist on a node
// not yet heard from) leaves a tombstone too; it is never an error.
func (k *KV) Delete(ctx context.Context, app, key string) error {
	if err := k.check(app, key); err != nil {
		return err
	}
	quota := k.Quota.claim(app)
	defer quota.release()
	return k.Store.Update(ctx, func(tx Tx) error {
		rk := crdt.KVKey(app, key)
		cur, had, err := tx.Record(rk)
		if err != nil {
			return err
		}
		before := storedSize(rk, &cur, had)
		ts := k.Clock.Next()
		merged, err := tx.Merge(rk, crdt.KVDelete(ts.Time().Add(KVTombstoneGrace), ts))
		if err != nil || had {
			return err // deleting a stored key always works, even if its tombstone is larger
		}
		// A tombstone of a key not held here adds a record: bounded like any other.
		return quota.allows(storedSize(rk, &merged, true) - before)
	})
}

// KVPos is a position in the order keys are listed in: by partition (crdt.KeyHomes of
// the record key), then key. The zero KVPos is before every key.
type KVPos struct {
	Partition int
	Key       string // "" before the partition's first key
}

// Compare orders positions.
func (p KVPos) Compare(o KVPos) int {
	if c := cmp.Compare(p.Partition, o.Partition); c != 0 {
		return c
	}
	return strings.Compare(p.Key, o.Key)
}

// KVPosOf returns the position of app's key.
func KVPosOf(app, key string) KVPos {
	return KVPos{Partition: crdt.KeyHomes(crdt.KVKey(app, key)).First(), Key: key}
}

// String returns the position as a list cursor: URL-safe base64.
func (p KVPos) String() string {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(p.Key)), uint16(p.Partition)) // #nosec G115 -- < crdt.Partitions
	return base64.RawURLEncoding.EncodeToString(append(b, p.Key...))
}

// ParseKVCursor parses a cursor String returned; "" is the start. A malformed one is
// EInvalid.
func ParseKVCursor(s string) (KVPos, error) {
	if s == "" {
		return KVPos{}, nil
	}
	bad := Errorf(EInvalid, "invalid cursor: send back a next value this API returned")
	if len(s) > 2*MaxKVKey {
		return KVPos{}, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2 {
		return KVPos{}, bad
	}
	p := KVPos{Partition: int(binary.BigEndian.Uint16(b)), Key: string(b[2:])}
	if p.Partition >= crdt.Partitions || (p.Key != "" && ValidKVKey(p.Key) != nil) {
		return KVPos{}, bad
	}
	return p, nil
}

// KVList asks for a page of an app's live keys.
type KVList struct {
	After  KVPos // list keys after it (the zero KVPos: from the start)
	Limit  int   // at most this many (0: DefaultKVPage)
	Values bool  // with their values
	// Held, when not nil, restricts the page to the partitions for which it returns
	// true: with placement, those this node holds (the others are gathered from their
	// holders, see MergeKVPages).
	Held func(p int) bool
}

// KVPage is a page of an app's live keys in KVPos order, with where the next page
// begins (nil: no more keys). It may hold fewer keys than asked for, even none, and
// still have a next page.
type KVPage struct {
	Items []KVItem
	Next  *KVPos
}

// List returns a page of app's live keys — not expired, not deleted — held here.
func (k *KV) List(ctx context.Context, app string, req KVList) (KVPage, error) {
	if err := ValidKVApp(app); err != nil {
		return KVPage{}, err
	}
	limit, err := kvLimit(req.Limit, req.Values)
	if err != nil {
		return KVPage{}, err
	}
	now := k.Clock.PhysicalNow()
	page := KVPage{Items: []KVItem{}}
	scanned, size := 0, 0
	var last KVPos
	stopped := false
	err = k.Lister.KVRange(ctx, app, req.After.Partition, req.After.Key, req.Held, func(p int, key string, m crdt.Map) bool {
		scanned++
		last = KVPos{Partition: p, Key: key}
		if v := crdt.ReadKV(&m); v.LiveAt(now) {
			it := kvItem(key, v, req.Values)
			page.Items = append(page.Items, it)
			for name, f := range it.Value {
				size += len(name) + len(f)
			}
		}
		stopped = len(page.Items) >= limit || scanned >= kvScanFactor*limit || size >= maxKVPageBytes
		return !stopped
	})
	if err != nil {
		return KVPage{}, err
	}
	if stopped {
		page.Next = &last
	}
	return page, nil
}

func kvLimit(limit int, values bool) (int, error) {
	most := MaxKVPage
	if values {
		most = MaxKVPageVals
	}
	switch {
	case limit == 0:
		return min(DefaultKVPage, most), nil
	case limit < 0 || limit > most:
		return 0, Errorf(EInvalid, "limit must be 1 to %d", most)
	}
	return limit, nil
}

// MergeKVPages merges pages of app's keys listed from the same position by several
// nodes, each over partitions the others did not list, into one page of at most limit
// keys (0: DefaultKVPage): every key up to where the page ends is in it, so the next page
// can begin there. A source that stopped early (its Next) bounds the page: beyond it
// that source's keys are unknown.
func MergeKVPages(app string, limit int, values bool, pages []KVPage) (KVPage, error) {
	limit, err := kvLimit(limit, values)
	if err != nil {
		return KVPage{}, err
	}
	var bound *KVPos
	for _, pg := range pages {
		if pg.Next != nil && (bound == nil || pg.Next.Compare(*bound) < 0) {
			b := *pg.Next
			bound = &b
		}
	}
	type listed struct {
		pos  KVPos
		item KVItem
	}
	var all []listed
	for _, pg := range pages {
		for _, it := range pg.Items {
			pos := KVPosOf(app, it.Key)
			if bound == nil || pos.Compare(*bound) <= 0 {
				all = append(all, listed{pos, it})
			}
		}
	}
	slices.SortFunc(all, func(a, b listed) int { return a.pos.Compare(b.pos) })
	all = slices.CompactFunc(all, func(a, b listed) bool { return a.pos == b.pos }) // a partition listed twice
	out := KVPage{Items: make([]KVItem, 0, min(len(all), limit)), Next: bound}
	for i, l := range all {
		if i == limit {
			next := all[i-1].pos
			out.Next = &next
			break
		}
		out.Items = append(out.Items, l.item)
	}
	return out, nil
}
