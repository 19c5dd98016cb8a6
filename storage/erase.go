package storage

import (
	"bytes"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// erase runs the erasure cascade for user, whose record has just gained the deleted
// flag: it deletes every session record of the user and every conversation involving
// them, and marks them erased so that such records and entries arriving later are
// dropped. Nothing of this is replicated as such: each replica derives it from the user
// record, so their digests converge.
func (b *batch) erase(user string) error {
	b.erasing = true
	if err := b.erased.get().Put([]byte(user), present); err != nil {
		return err
	}
	sessions := userSessionKeys(b.userSessions.get(), user)
	var own crdt.Timestamp // the latest write of ours the deleted sessions held
	for _, key := range sessions {
		m, st, ok, err := b.load(key)
		if err != nil {
			return err
		}
		if ok {
			for _, name := range m.Names() {
				if f, _ := m.Field(name); f.TS.Node == b.db.node && own.Less(f.TS) {
					own = f.TS
				}
			}
			if err := b.deleteRecord(key, st); err != nil {
				return err
			}
		}
	}
	if !own.IsZero() {
		// Writes of ours to these sessions may not have been pushed; the user record,
		// which carries the erasure, stands in for them (DB.Overtaken).
		b.overtaken = append(b.overtaken, Overtaken{Key: crdt.UserKey(user), TS: own})
	}
	convs := b.userConvList(user)
	for _, conv := range convs {
		if err := b.deleteConv(conv); err != nil {
			return err
		}
	}
	b.db.log.Info("user erased", attrUser, user, "sessions", len(sessions), "conversations", len(convs))
	return nil
}

// userConvList returns the IDs of user's conversations.
func (b *batch) userConvList(user string) []string {
	prefix := append([]byte(user), 0)
	var convs []string
	c := b.userConvs.get().Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		convs = append(convs, string(k[len(prefix):]))
	}
	return convs
}

// deleteConv deletes a conversation: its entries, their indexes and its state.
func (b *batch) deleteConv(conv string) error {
	prefix := convPrefix(conv)
	var dead [][]byte
	c := b.log.get().Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		e, err := decodeStoredEntry(prefix, k, v)
		if err != nil {
			return err
		}
		lk := LogKey(conv, e.ID)
		b.toggle(lk, crdt.PairHash(lk, e.AppendBinary(nil)))
		if err := indexLeaves(b.leaves.get(), lk, false); err != nil {
			return err
		}
		b.removed(lk)
		b.messages--
		dead = append(dead, bytes.Clone(k))
	}
	if err := deleteKeys(b.log.get(), dead); err != nil {
		return err
	}
	dead = dead[:0]
	c = b.logSeq.get().Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		dead = append(dead, bytes.Clone(k))
	}
	if err := deleteKeys(b.logSeq.get(), dead); err != nil {
		return err
	}
	if err := b.convs.get().Delete([]byte(conv)); err != nil {
		return err
	}
	x, y, _ := crdt.Participants(conv)
	for _, u := range []string{x, y} {
		if err := b.userConvs.get().Delete(append(append([]byte(u), 0), conv...)); err != nil {
			return err
		}
	}
	return nil
}

// deleteKeys deletes keys collected by a cursor; deleting while iterating would skip keys.
func deleteKeys(bk *bolt.Bucket, keys [][]byte) error {
	for _, k := range keys {
		if err := bk.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// erasedFor reports whether user is erased here, counting this function's buffered writes.
// tx may be nil.
func (b *batch) erasedFor(tx *Tx, user string) bool {
	if tx != nil {
		if p, ok := tx.recs[crdt.UserKey(user)]; ok {
			if _, del := p.m.Flag(crdt.FieldDeleted); del {
				return true
			}
		}
	}
	return b.erased.get().Get([]byte(user)) != nil
}
