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
// Sweep. Both are derived from the records on this node and never replicated. An owner
// index entry's value says whether the session is revoked by its own flag
// (revokedSession; present otherwise), so that UserSessions passes over revoked sessions
// without reading them: a revoked session stays stored until it expires, and an account
// that signs in and is signed out in a loop piles up thousands. Entries written before
// the value was kept say present whatever the state; UserSessions reads those.

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
	revoked bool // the value of the owner index entry
}

// revokedSession is the value of an owner index entry of a revoked session.
var revokedSession = []byte{2}

// indexFields returns the index fields of the session record key in state m.
func indexFields(key string, m *crdt.Map) sessionKeys {
	f, _ := m.Field(crdt.FieldUser)
	_, revoked := m.Flag(crdt.FieldRevoked)
	return sessionKeys{key: key, owner: f.Value, created: f.TS, expires: crdt.SessionExpires(m).UnixNano(), revoked: revoked}
}

// byUserValue returns the value of the owner index entry.
func (s sessionKeys) byUserValue() []byte {
	if s.revoked {
		return revokedSession
	}
	return present
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
	return s.key == o.key && bytes.Equal(s.owner, o.owner) && s.created == o.created && s.expires == o.expires && s.revoked == o.revoked
}

// indexSession moves a session record's index entries from those of old to those of
// now; either may be empty (absent). Most writes change neither: nothing is done then.
func (b *batch) indexSession(old, now stored) error {
	if old.session.equal(now.session) {
		return nil
	}
	for _, ix := range []struct {
		bk             wbucket
		old, new       []byte
		oldVal, newVal []byte
	}{
		{b.userSessions.get(), old.session.byUser(), now.session.byUser(), old.session.byUserValue(), now.session.byUserValue()},
		{b.expiry.get(), old.session.byExpiry(), now.session.byExpiry(), present, present},
	} {
		same := bytes.Equal(ix.old, ix.new)
		if same && bytes.Equal(ix.oldVal, ix.newVal) {
			continue
		}
		if ix.old != nil && !same {
			if err := ix.bk.Delete(ix.old); err != nil {
				return err
			}
		}
		if ix.new != nil {
			if err := ix.bk.Put(ix.new, ix.newVal); err != nil {
				return err
			}
		}
	}
	return nil
}

// UserSessions returns the session records of userID held here that are not revoked by
// their own flag, newest first: active ones, idle or expired ones not yet swept, and
// those that the user's sign-out everywhere revokes but that do not carry the flag. It
// reads the owner index, not every session, and passes over revoked sessions without
// reading their records (see revokedSession). The slice and its sessions are the
// caller's.
func (db *DB) UserSessions(ctx context.Context, userID string) ([]crdt.Session, error) {
	var out []crdt.Session
	err := db.view(ctx, func(btx *bolt.Tx) error {
		if !validID(userID) {
			return nil
		}
		records := btx.Bucket(bucketRecords)
		prefix := append([]byte(userID), 0)
		c := btx.Bucket(bucketUserSessions).Cursor()
		k, _ := c.Seek(append([]byte(userID), 1)) // the first key past the prefix
		var v []byte
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			if len(k) <= len(prefix)+crdt.TimestampSize || bytes.Equal(v, revokedSession) {
				continue
			}
			key := string(k[len(prefix)+crdt.TimestampSize:])
			m, ok, err := decodeRecord(key, records.Get([]byte(key)))
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if ss := crdt.ReadSession(key[len(crdt.SessionPrefix):], &m); !ss.Revoked {
				out = append(out, ss)
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
