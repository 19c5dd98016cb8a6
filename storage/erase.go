package storage

import (
	"bytes"
	"fmt"

	"github.com/sessiond/sessiond/crdt"
)

// Values of the erased bucket (user → value). A user is erased here once either is set:
// its sessions and messages are refused from then on.
var (
	// erasedCascade: the user record's deleted flag was applied here, and with it the
	// cascade (erase).
	erasedCascade = present
	// erasedMarker: an erasure marker of one of the user's conversations was applied
	// here, and the record's deleted flag not (yet): this node may not even hold it.
	erasedMarker = []byte{2}
)

// erase runs the erasure cascade for user, whose record has just gained the deleted
// flag: it deletes every session record of the user and the messages of every
// conversation involving them, leaves an erasure marker of its own in each conversation
// it deleted messages from that holds none (leaveMarker), and marks the user erased so
// that such records and entries arriving later are dropped.
func (b *batch) erase(user string) error {
	b.erasing = true
	if err := b.erased.get().Put([]byte(user), erasedCascade); err != nil {
		return err
	}
	sessions := userSessionKeys(b.userSessions.get().Bucket, user)
	var own crdt.Timestamp // the latest write of ours the deleted sessions held or lost
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
			if ts, ok := replacedIn(b.replaced.get().Bucket, []byte(key)); ok && own.Less(ts) { // and those it lost
				own = ts
			}
			if err := b.deleteRecord(key, st); err != nil {
				return err
			}
		}
	}
	if !own.IsZero() {
		// Writes of ours to these sessions may not have been pushed; the user record,
		// which carries the erasure, stands in for them (DB.Overtaken, DB.Replaced).
		b.overtaken = append(b.overtaken, Overtaken{Key: crdt.UserKey(user), TS: own})
		if err := b.noteReplaced([]byte(crdt.UserKey(user)), own); err != nil {
			return err
		}
	}
	convs := b.userConvList(user) // conversations with messages: none holds a marker
	markers := 0
	for _, conv := range convs {
		n, err := b.purgeConv(conv)
		if err != nil {
			return err
		}
		if n > 0 && !b.holdsMarker(conv) {
			if err := b.leaveMarker(conv, user); err != nil {
				return err
			}
			markers++
		}
	}
	b.db.log.Info("user erased", attrUser, user, "sessions", len(sessions), "conversations", len(convs), "markers", markers)
	return nil
}

// userConvList returns the IDs of user's conversations that hold messages.
func (b *batch) userConvList(user string) []string {
	prefix := append([]byte(user), 0)
	var convs []string
	c := b.userConvs.get().Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		convs = append(convs, string(k[len(prefix):]))
	}
	return convs
}

// markErased records that user is erased, as value says (erasedCascade or
// erasedMarker), unless the cascade already ran here.
func (b *batch) markErased(user string, value []byte) error {
	if v := b.erased.get().Get([]byte(user)); bytes.Equal(v, erasedCascade) || bytes.Equal(v, value) {
		return nil
	}
	return b.erased.get().Put([]byte(user), value)
}

// holdsMarker reports whether conv holds an erasure marker. A conversation that holds
// one holds nothing else (applying a marker deletes the messages, and a participant of
// the conversation is then erased here, so later messages are dropped), so its first
// entry tells.
func (b *batch) holdsMarker(conv string) bool {
	prefix := convPrefix(conv)
	k, v := b.log.get().Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix) && len(v) > seqLen && crdt.IsErasureMarker(v[seqLen:])
}

// leaveMarker appends this node's own erasure marker of from to conv, stamped as
// Tx.Append stamps an entry: the clock's next timestamp and this node's next sequence
// number there (past any it issued before the conversation was dropped or purged). It is
// written like any entry — replicated to both participants' holders, which may not know
// of the erasure — and applying it purges conv here. A marker never leads to another.
func (b *batch) leaveMarker(conv, from string) error {
	x, y, _ := crdt.Participants(conv)
	to := y
	if from == y {
		to = x
	}
	st, _, err := loadConv(b.convs.get().Bucket, conv)
	if err != nil {
		return err
	}
	seq := max(st.origin(b.db.node).max, seqFloor(b.seqFloor.get().Bucket, conv)) + 1
	e := crdt.Entry{ID: crdt.EntryID{TS: b.db.clock.Next(), Seq: seq}, Data: crdt.ErasureMarker(from, to).AppendBinary(nil)}
	_, err = b.writeEntry(conv, e)
	return err
}

// purgeConv deletes the messages of conv, with everything derived from them, and keeps
// its erasure markers. It returns how many messages it deleted. The conversation is
// no longer listed (user_convs); if no marker is left, its state goes too, and the
// highest sequence number this node gave its own entries there is remembered, as Drop
// does, so that a marker it leaves later never reuses one.
func (b *batch) purgeConv(conv string) (int, error) {
	prefix := convPrefix(conv)
	var (
		dead    []crdt.EntryID
		markers int
		last    crdt.EntryID
		own     crdt.Timestamp // the latest message of ours among the dead
	)
	c := b.log.get().Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+crdt.EntryIDSize || len(v) < seqLen {
			return 0, fmt.Errorf("corrupt log key %x", k)
		}
		id, _ := crdt.DecodeEntryID(k[len(prefix):])
		if crdt.IsErasureMarker(v[seqLen:]) {
			markers, last = markers+1, id
			continue
		}
		dead = append(dead, id)
		if id.Origin() == b.db.node && own.Less(id.TS) {
			own = id.TS
		}
	}
	if !own.IsZero() {
		// The marker that purges them stands for our messages (DB.Replaced).
		if err := b.noteReplaced(convReplacedKey(conv), own); err != nil {
			return 0, err
		}
	}
	logSeq := b.logSeq.get()
	for _, id := range dead {
		if err := b.deleteEntry(conv, id); err != nil {
			return 0, err
		}
		if err := logSeq.Delete(seqKey(prefix, id.Origin(), id.Seq)); err != nil {
			return 0, err
		}
	}
	x, y, _ := crdt.Participants(conv)
	for _, u := range []string{x, y} {
		if err := b.userConvs.get().Delete(append(append([]byte(u), 0), conv...)); err != nil {
			return 0, err
		}
	}
	st, ok, err := loadConv(b.convs.get().Bucket, conv)
	if err != nil || !ok {
		return len(dead), err
	}
	if markers == 0 {
		if err := b.forgetConv(conv, st); err != nil {
			return 0, err
		}
		return len(dead), nil
	}
	// The markers' state: origins keep their highest sequence number (this node's next
	// one stays past every one it issued); the contiguous prefixes shrink to what is left.
	st.count, st.last = uint64(markers), last
	for i := range st.origins {
		o := &st.origins[i]
		o.prefix = 0
		for o.prefix < o.max && logSeq.Get(seqKey(prefix, o.node, o.prefix+1)) != nil {
			o.prefix++
		}
	}
	return len(dead), b.convs.get().Put([]byte(conv), st.encode())
}

// forgetConv deletes the state of conv, whose entries are all gone, remembering the
// highest sequence number this node gave its own entries there (the seq_floor bucket).
func (b *batch) forgetConv(conv string, st convState) error {
	floors := b.seqFloor.get()
	if own := st.origin(b.db.node).max; own > seqFloor(floors.Bucket, conv) {
		if err := floors.Put([]byte(conv), putUint(own)); err != nil {
			return err
		}
	}
	return b.convs.get().Delete([]byte(conv))
}

// deleteEntries deletes every entry of a conversation, markers included, with their
// indexes and its listing, but not its state (forgetConv). Only Drop does, for a
// conversation this node no longer holds.
func (b *batch) deleteEntries(conv string) error {
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
		if !crdt.IsErasureMarker(e.Data) {
			b.messages--
		}
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
	x, y, _ := crdt.Participants(conv)
	for _, u := range []string{x, y} {
		if err := b.userConvs.get().Delete(append(append([]byte(u), 0), conv...)); err != nil {
			return err
		}
	}
	return b.forgetReplaced(convReplacedKey(conv))
}

// deleteKeys deletes keys collected by a cursor; deleting while iterating would skip keys.
func deleteKeys(bk wbucket, keys [][]byte) error {
	for _, k := range keys {
		if err := bk.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// erasedFor reports whether user is erased here, counting this function's buffered writes
// (a deleted flag, an erasure marker). tx may be nil.
func (b *batch) erasedFor(tx *Tx, user string) bool {
	if tx != nil {
		if tx.marked[user] {
			return true
		}
		if p, ok := tx.recs[crdt.UserKey(user)]; ok {
			if _, del := p.m.Flag(crdt.FieldDeleted); del {
				return true
			}
		}
	}
	return b.erased.get().Get([]byte(user)) != nil
}
