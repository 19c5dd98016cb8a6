package storage

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// A stored record is its feed position (8 bytes, big-endian) followed by the canonical
// encoding of its Map. The position lets the feed tell a key's latest entry from stale ones
// without a second index.
const seqLen = 8

// Record returns the stored state of the record key, which the caller owns, and whether it
// exists. A session past its expiry may still be returned until Sweep removes it; check
// crdt.Session.ActiveAt. The Map's field values may be shared with the record cache:
// read them, never write into them (see crdt.Map.Get).
func (db *DB) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	if err := ctx.Err(); err != nil {
		return crdt.Map{}, false, err
	}
	if m, hit, _ := db.cache.get(key); hit { // what Records does, without its slices
		return m, true, nil
	}
	ms, ok, err := db.Records(ctx, key)
	if err != nil {
		return crdt.Map{}, false, err
	}
	return ms[0], ok[0], nil
}

// Records returns the stored states of several records, read in one transaction:
// ms[i] and ok[i] are what Record would return for keys[i]. The caller owns the maps,
// as Record says. Records found in the record cache are not read from the file; the
// cache never holds a state older than the last acknowledged write.
func (db *DB) Records(ctx context.Context, keys ...string) (ms []crdt.Map, ok []bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ms, ok = make([]crdt.Map, len(keys)), make([]bool, len(keys))
	var (
		missed []int
		gen    uint64
	)
	for i, key := range keys {
		m, hit, g := db.cache.get(key)
		if hit {
			ms[i], ok[i] = m, true
			continue
		}
		// Any generation read before the file is read will do; see recordCache.
		missed, gen = append(missed, i), g
	}
	if len(missed) == 0 {
		return ms, ok, nil
	}
	err = db.view(ctx, func(btx *bolt.Tx) error {
		b := btx.Bucket(bucketRecords)
		for _, i := range missed {
			var err error
			if ms[i], ok[i], err = decodeRecord(keys[i], b.Get([]byte(keys[i]))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, i := range missed {
		if ok[i] {
			db.cache.fill(keys[i], ms[i].Share(), gen)
		}
	}
	return ms, ok, nil
}

// RecordsUnder returns the records whose keys begin with prefix, in key order, at most
// limit of them (limit > 0), read in one transaction, and whether more were left out. The
// keys and maps are the caller's. It reads the file, not the record cache: for the few
// cluster-wide records (crdt.ClusterPrefix), not for a request's reads.
func (db *DB) RecordsUnder(ctx context.Context, prefix string, limit int) (keys []string, ms []crdt.Map, more bool, err error) {
	err = db.view(ctx, func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketRecords).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if len(keys) == limit {
				more = true
				return nil
			}
			m, _, err := decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			keys, ms = append(keys, string(k)), append(ms, m)
		}
		return nil
	})
	if err != nil {
		return nil, nil, false, err
	}
	return keys, ms, more, nil
}

// decodeRecord decodes a stored record value (nil: absent).
func decodeRecord(key string, v []byte) (crdt.Map, bool, error) {
	if v == nil {
		return crdt.Map{}, false, nil
	}
	if len(v) < seqLen {
		return crdt.Map{}, false, fmt.Errorf("record %q: corrupt value", key)
	}
	m, err := crdt.DecodeMap(v[seqLen:])
	if err != nil {
		return crdt.Map{}, false, fmt.Errorf("record %q: %w", key, err)
	}
	return m, true, nil
}

// stored is what replacing or deleting a stored record must undo: its encoding (for the
// digest) and what the indexes and counters derived from it.
type stored struct {
	enc     []byte      // the Map's encoding; from bbolt, valid until the transaction commits
	deleted bool        // a user record with the deleted flag
	session sessionKeys // a session record's index fields
	keep    int64       // a key-value or subject record's keep time, Unix nanoseconds (its expiry index key); 0: none
}

// describe returns what is derived from the record key in state m, encoded as enc.
func describe(key string, m *crdt.Map, enc []byte) stored {
	st := stored{enc: enc}
	switch {
	case strings.HasPrefix(key, crdt.SessionPrefix):
		st.session = indexFields(key, m)
	case strings.HasPrefix(key, crdt.UserPrefix):
		_, st.deleted = m.Flag(crdt.FieldDeleted)
		st.keep = crdt.SubjectKeepNanos(m)
	case strings.HasPrefix(key, crdt.KVPrefix):
		st.keep = crdt.KVKeepNanos(m)
	}
	return st
}

// record reads the record key as of this point in the batch.
func (b *batch) record(key string) (crdt.Map, bool, error) {
	return decodeRecord(key, b.records.get().Get([]byte(key)))
}

// load reads the record key as of this point in the batch, with its description. A
// record the batch has not written yet is as last committed, so its decoded state may
// come from the record cache.
func (b *batch) load(key string) (crdt.Map, stored, bool, error) {
	v := b.records.get().Get([]byte(key))
	if v == nil {
		return crdt.Map{}, stored{}, false, nil
	}
	var m crdt.Map
	hit := false
	if _, written := b.written[key]; !written {
		m, hit, _ = b.db.cache.get(key)
	}
	if !hit {
		var err error
		if m, _, err = decodeRecord(key, v); err != nil {
			return m, stored{}, false, err
		}
	}
	return m, describe(key, &m, v[seqLen:]), true, nil
}

// keep reports whether the record key in state m is to be stored. Only session,
// key-value and subject records are ever refused: see Tx.Merge. tx (which may be nil)
// supplies the function's buffered erasures. A session is kept until it expires, unless
// its user is erased or its app ended it (crdt.App.Ends): the user's erasure, or the
// app's record, which every node holds, ends any copy that arrives later as well, so
// nothing of it needs keeping (an app whose sessions a leaked key filled gets its room
// back). A key-value record, and a subject's record, is kept until its keep time.
func (b *batch) keep(tx *Tx, key string, m *crdt.Map) bool {
	switch {
	case strings.HasPrefix(key, crdt.KVPrefix):
		return crdt.KVKeepNanos(m) > b.now.UnixNano()
	case strings.HasPrefix(key, crdt.UserPrefix):
		keep := crdt.SubjectKeepNanos(m)
		return keep == 0 || keep > b.now.UnixNano()
	case !strings.HasPrefix(key, crdt.SessionPrefix):
		return true
	}
	user, ok := sessionOwner(m)
	return ok && crdt.SessionExpires(m).After(b.now) && !b.erasedFor(tx, user) && !b.appEnded(m)
}

// appEnded reports whether the session in state m is one of an app's subjects' that
// the app's record, as of this point in the batch, ends.
func (b *batch) appEnded(m *crdt.Map) bool {
	f, ok := m.Field(crdt.FieldSessionApp)
	if !ok || f.Kind != crdt.KindFWW {
		return false
	}
	app := string(f.Value)
	am, _, ok, err := b.load(crdt.AppKey(app))
	if err != nil || !ok {
		return false
	}
	return crdt.ReadAppSessionsEnd(app, &am).Ends(crdt.ReadSessionMeta("", m))
}

// writeRecord applies a pending record.
func (b *batch) writeRecord(key string, p *pendingRecord) error {
	// An erasure applied earlier in the same function may have deleted the record since
	// the function read it; nothing else changes it in between.
	had := p.had && (!b.erasing || b.records.get().Get([]byte(key)) != nil)
	if !b.keep(nil, key, &p.m) {
		if !had {
			return nil
		}
		return b.deleteRecord(key, p.base)
	}
	seq := b.head + 1
	v := putUint(seq)
	v = p.m.AppendBinary(v)
	enc := v[seqLen:]
	if had && bytes.Equal(enc, p.base.enc) {
		return nil
	}
	b.nextSeq()
	if err := b.records.get().Put([]byte(key), v); err != nil {
		return err
	}
	if err := b.feedPut(seq, key); err != nil {
		return err
	}
	h := crdt.PairHash(key, enc)
	var old stored
	if had {
		old = p.base
		h ^= crdt.PairHash(key, old.enc)
		addUsage(&b.usage, key, old.enc, -1)
	} else if err := indexLeaves(b.leaves.get(), key, true); err != nil {
		return err
	}
	b.toggle(key, h)
	addUsage(&b.usage, key, enc, 1)
	now := describe(key, &p.m, nil)
	if err := b.indexKeep(key, old.keep, now.keep); err != nil { // key-value and subject records
		return err
	}
	switch {
	case strings.HasPrefix(key, crdt.SessionPrefix):
		if !had {
			b.sessions++
		}
		if err := b.indexSession(old, now); err != nil {
			return err
		}
	case strings.HasPrefix(key, crdt.ClaimPrefix):
		b.db.contested.note(key, &p.m) // before the commit: a false alarm costs a read
	case strings.HasPrefix(key, crdt.UserPrefix):
		if had && !old.deleted {
			b.users--
		}
		if !now.deleted {
			b.users++
		}
		if user := key[len(crdt.UserPrefix):]; now.deleted && !bytes.Equal(b.erased.get().Get([]byte(user)), erasedCascade) {
			if err := b.erase(user); err != nil {
				return fmt.Errorf("erase user %q: %w", user, err)
			}
		}
	}
	b.wrote(key, &p.m)
	b.changed(Change{Key: key, Map: p.m})
	return nil
}

// deleteRecord removes the stored record key, described by old, and everything derived
// from it. Its feed entry goes stale and is collected later.
func (b *batch) deleteRecord(key string, old stored) error {
	if err := b.records.get().Delete([]byte(key)); err != nil {
		return err
	}
	if err := indexLeaves(b.leaves.get(), key, false); err != nil {
		return err
	}
	b.toggle(key, crdt.PairHash(key, old.enc))
	addUsage(&b.usage, key, old.enc, -1)
	b.wrote(key, nil)
	b.removed(key)
	if err := b.forgetReplaced([]byte(key)); err != nil {
		return err
	}
	if err := b.indexKeep(key, old.keep, 0); err != nil { // key-value and subject records
		return err
	}
	switch {
	case strings.HasPrefix(key, crdt.SessionPrefix):
		b.sessions--
		return b.indexSession(old, stored{})
	case strings.HasPrefix(key, crdt.UserPrefix) && !old.deleted:
		b.users--
	}
	return nil
}

// erasedUserFields are the fields an erased user's record keeps: enough to know the
// name was taken and the account is gone, nothing personal.
var erasedUserFields = map[string]bool{
	crdt.FieldUsername:       true,
	crdt.FieldDeleted:        true,
	crdt.FieldSessionsUntil:  true,
	crdt.FieldSessionsWindow: true,
}

// filtered returns which fields a record of the kind prefix names (crdt.UserPrefix,
// crdt.SessionPrefix) sheds in state m, or nil if it keeps them all: an erased user's
// record everything but erasedUserFields; a revoked session its data (crdt.DataPrefix:
// values and deletions alike), which nobody can read or write any more, so that a user
// signing in and out in a loop leaves small records behind until they expire, not
// their data (found by an outside review: 2,000 sign-ins with 63 KB of data each grew
// a file by 190 MB). The flags that decide are monotonic and the filter works field by
// field, so filtering after every merge keeps merges commutative, associative and
// idempotent: every replica ends with the same record whatever order the flag and
// concurrent writes arrive in.
func filtered(prefix string, m *crdt.Map) func(name string) bool {
	switch prefix {
	case crdt.UserPrefix:
		if _, deleted := m.Flag(crdt.FieldDeleted); deleted {
			return func(name string) bool { return !erasedUserFields[name] }
		}
	case crdt.SessionPrefix:
		if _, revoked := m.Flag(crdt.FieldRevoked); revoked {
			return func(name string) bool { return strings.HasPrefix(name, crdt.DataPrefix) }
		}
	}
	return nil
}
