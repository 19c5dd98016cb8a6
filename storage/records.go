package storage

import (
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
// crdt.Session.ActiveAt.
func (db *DB) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	var (
		m  crdt.Map
		ok bool
	)
	err := db.view(ctx, func(btx *bolt.Tx) error {
		var err error
		m, _, ok, err = decodeRecord(key, btx.Bucket(bucketRecords).Get([]byte(key)))
		return err
	})
	return m, ok, err
}

// decodeRecord decodes a stored record value (nil: absent) and returns its digest pair
// hash.
func decodeRecord(key string, v []byte) (crdt.Map, uint64, bool, error) {
	if v == nil {
		return crdt.Map{}, 0, false, nil
	}
	if len(v) < seqLen {
		return crdt.Map{}, 0, false, fmt.Errorf("record %q: corrupt value", key)
	}
	m, err := crdt.DecodeMap(v[seqLen:])
	if err != nil {
		return crdt.Map{}, 0, false, fmt.Errorf("record %q: %w", key, err)
	}
	return m, crdt.PairHash(key, v[seqLen:]), true, nil
}

// record reads the record key as of this point in the batch.
func (b *batch) record(key string) (crdt.Map, uint64, bool, error) {
	return decodeRecord(key, b.records.Get([]byte(key)))
}

// keep reports whether the record key in state m is to be stored. Only session records
// are ever refused: see Tx.Merge. tx (which may be nil) supplies the function's buffered
// erasures.
func (b *batch) keep(tx *Tx, key string, m *crdt.Map) bool {
	if !strings.HasPrefix(key, crdt.SessionPrefix) {
		return true
	}
	user, ok := sessionOwner(m)
	return ok && crdt.SessionExpires(m).After(b.now) && !b.erasedFor(tx, user)
}

// writeRecord applies a pending record whose state differs from the stored one.
func (b *batch) writeRecord(key string, p *pendingRecord) error {
	if !b.keep(nil, key, &p.m) {
		if !p.had {
			return nil
		}
		return b.deleteRecord(key, &p.base, p.baseHash)
	}
	seq := b.nextSeq()
	v := putUint(seq)
	v = p.m.AppendBinary(v)
	if err := b.records.Put([]byte(key), v); err != nil {
		return err
	}
	if err := b.feedPut(seq, key); err != nil {
		return err
	}
	h := crdt.PairHash(key, v[seqLen:])
	if p.had {
		b.toggle(key, p.baseHash^h)
	} else {
		b.toggle(key, h)
		if err := b.leaves.Put(leafKey(key), nil); err != nil {
			return err
		}
	}
	switch {
	case strings.HasPrefix(key, crdt.SessionPrefix):
		if !p.had {
			b.sessions++
		}
		var old *crdt.Map
		if p.had {
			old = &p.base
		}
		if err := b.indexSession(key, old, &p.m); err != nil {
			return err
		}
	case strings.HasPrefix(key, crdt.UserPrefix):
		_, wasDeleted := p.base.Flag(crdt.FieldDeleted)
		_, deleted := p.m.Flag(crdt.FieldDeleted)
		if p.had && !wasDeleted {
			b.users--
		}
		if !deleted {
			b.users++
		}
		if user := key[len(crdt.UserPrefix):]; deleted && b.erased.Get([]byte(user)) == nil {
			if err := b.erase(user); err != nil {
				return fmt.Errorf("erase user %q: %w", user, err)
			}
		}
	}
	b.changed(Change{Key: key, Map: p.m})
	return nil
}

// deleteRecord removes the stored record key, whose state is old with pair hash h, and
// everything derived from it. Its feed entry goes stale and is collected later.
func (b *batch) deleteRecord(key string, old *crdt.Map, h uint64) error {
	if err := b.records.Delete([]byte(key)); err != nil {
		return err
	}
	if err := b.leaves.Delete(leafKey(key)); err != nil {
		return err
	}
	b.toggle(key, h)
	b.removed(key)
	if strings.HasPrefix(key, crdt.SessionPrefix) {
		b.sessions--
		return b.indexSession(key, old, nil)
	}
	if strings.HasPrefix(key, crdt.UserPrefix) {
		if _, deleted := old.Flag(crdt.FieldDeleted); !deleted {
			b.users--
		}
	}
	return nil
}

// erasedUserFields are the fields an erased user's record keeps: enough to know the
// name was taken and the account is gone, nothing personal.
var erasedUserFields = map[string]bool{
	crdt.FieldUsername:      true,
	crdt.FieldDeleted:       true,
	crdt.FieldSessionsUntil: true,
}

// filterErased strips an erased user's record m of every other field. The deleted flag
// is monotonic and the filter works field by field, so filtering after every merge keeps
// merges commutative, associative and idempotent: every replica ends with the same
// record whatever order the erasure and concurrent profile edits arrive in.
func filterErased(m *crdt.Map) {
	if _, deleted := m.Flag(crdt.FieldDeleted); !deleted {
		return
	}
	m.Prune(func(name string, _ crdt.Field) bool { return !erasedUserFields[name] })
}
