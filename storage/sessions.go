package storage

import (
	"bytes"
	"context"
	"encoding/binary"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// Two local indexes point at session records: by owner (user 0 created(20) key), newest
// last, for UserSessions; and by absolute expiry (expires(8) key), soonest first, for
// Sweep. Both are derived from the records on this node and never replicated.

// sessionOwner returns the owner of the session record m.
func sessionOwner(m *crdt.Map) (string, bool) {
	f, ok := m.Field(crdt.FieldUser)
	if !ok || f.Kind != crdt.KindFWW || !validID(string(f.Value)) {
		return "", false
	}
	return string(f.Value), true
}

// sessionKeys is what a session record's index keys are made of.
type sessionKeys struct {
	key     string // empty: not a stored session record
	owner   []byte // shared with the record's Map, which never modifies it
	created crdt.Timestamp
	expires int64
}

// indexFields returns the index fields of the session record key in state m.
func indexFields(key string, m *crdt.Map) sessionKeys {
	f, _ := m.Field(crdt.FieldUser)
	return sessionKeys{key: key, owner: f.Value, created: f.TS, expires: crdt.SessionExpires(m).UnixNano()}
}

// byUser returns the key of the owner index: owner 0 created(20) key.
func (s sessionKeys) byUser() []byte {
	if s.key == "" {
		return nil
	}
	k := append(append(make([]byte, 0, len(s.owner)+1+crdt.TimestampSize+len(s.key)), s.owner...), 0)
	return append(s.created.AppendBinary(k), s.key...)
}

// byExpiry returns the key of the expiry index: expires(8) key.
func (s sessionKeys) byExpiry() []byte {
	if s.key == "" {
		return nil
	}
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(s.key)), uint64(s.expires)), s.key...)
}

func (s sessionKeys) equal(o sessionKeys) bool {
	return s.key == o.key && bytes.Equal(s.owner, o.owner) && s.created == o.created && s.expires == o.expires
}

// indexSession moves a session record's index entries from those of old to those of
// now; either may be empty (absent). Most writes change neither: nothing is done then.
func (b *batch) indexSession(old, now stored) error {
	if old.session.equal(now.session) {
		return nil
	}
	for _, ix := range []struct {
		bk       wbucket
		old, new []byte
	}{{b.userSessions.get(), old.session.byUser(), now.session.byUser()}, {b.expiry.get(), old.session.byExpiry(), now.session.byExpiry()}} {
		if bytes.Equal(ix.old, ix.new) {
			continue
		}
		if ix.old != nil {
			if err := ix.bk.Delete(ix.old); err != nil {
				return err
			}
		}
		if ix.new != nil {
			if err := ix.bk.Put(ix.new, present); err != nil {
				return err
			}
		}
	}
	return nil
}

// UserSessions returns every session record of userID held here, in any state (active,
// revoked, expired but not yet swept), newest first. It reads the owner index, not every
// session. The slice and its sessions are the caller's.
func (db *DB) UserSessions(ctx context.Context, userID string) ([]crdt.Session, error) {
	var out []crdt.Session
	err := db.view(ctx, func(btx *bolt.Tx) error {
		keys := userSessionKeys(btx.Bucket(bucketUserSessions), userID)
		records := btx.Bucket(bucketRecords)
		for i := len(keys) - 1; i >= 0; i-- {
			key := keys[i]
			m, ok, err := decodeRecord(key, records.Get([]byte(key)))
			if err != nil {
				return err
			}
			if ok {
				out = append(out, crdt.ReadSession(key[len(crdt.SessionPrefix):], &m))
			}
		}
		return nil
	})
	return out, err
}

// userSessionKeys returns the record keys of user's sessions, oldest first.
func userSessionKeys(bk *bolt.Bucket, user string) []string {
	if !validID(user) {
		return nil
	}
	prefix := append([]byte(user), 0)
	var keys []string
	c := bk.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) > len(prefix)+crdt.TimestampSize {
			keys = append(keys, string(k[len(prefix)+crdt.TimestampSize:]))
		}
	}
	return keys
}
