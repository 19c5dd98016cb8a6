package storage

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// Message logs are stored one entry per key, conv 0 EntryID(28), so a conversation is a
// contiguous key range in log order; the value is the entry's feed position (8 bytes)
// followed by its data. Beside them, per conversation:
//   - log_seq: conv 0 origin(8) seq(8) → the entry's timestamp, to find an origin's n-th
//     entry without a scan;
//   - convs: count, last entry ID and, per origin, the contiguous-prefix seq (every entry
//     1..prefix is present, so entries up to it are stable) and the highest seq present
//     (this node's next seq is one past its own highest);
//   - user_convs: user 0 conv, for each participant.

// convPrefix returns the key prefix of a conversation's entries.
func convPrefix(conv string) []byte { return append([]byte(conv), 0) }

func seqKey(prefix []byte, origin crdt.NodeID, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(slices.Clip(prefix), uint64(origin))
	return binary.BigEndian.AppendUint64(k, seq)
}

// decodeStoredEntry decodes the log key k (with the conversation prefix) and value v.
func decodeStoredEntry(prefix, k, v []byte) (crdt.Entry, error) {
	id, err := crdt.DecodeEntryID(k[len(prefix):])
	if err != nil || len(k) != len(prefix)+crdt.EntryIDSize || len(v) < seqLen {
		return crdt.Entry{}, fmt.Errorf("corrupt log key %x", k)
	}
	return crdt.Entry{ID: id, Data: bytes.Clone(v[seqLen:])}, nil
}

// convState is the per-conversation summary kept in the convs bucket.
type convState struct {
	count   uint64
	last    crdt.EntryID
	origins []originState // ascending by node
}

type originState struct {
	node   crdt.NodeID
	prefix uint64
	max    uint64
}

// origin returns the state of node, adding it when absent.
func (s *convState) origin(node crdt.NodeID) *originState {
	i, found := slices.BinarySearchFunc(s.origins, node, func(o originState, n crdt.NodeID) int { return cmp.Compare(o.node, n) })
	if !found {
		s.origins = slices.Insert(s.origins, i, originState{node: node})
	}
	return &s.origins[i]
}

func (s *convState) encode() []byte {
	b := binary.AppendUvarint(nil, s.count)
	b = s.last.AppendBinary(b)
	b = binary.AppendUvarint(b, uint64(len(s.origins)))
	for _, o := range s.origins {
		b = binary.BigEndian.AppendUint64(b, uint64(o.node))
		b = binary.AppendUvarint(b, o.prefix)
		b = binary.AppendUvarint(b, o.max)
	}
	return b
}

var errCorruptConv = errors.New("corrupt conversation state")

func decodeConvState(b []byte) (convState, error) {
	var s convState
	uv := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			b = nil
			return 0
		}
		b = b[n:]
		return v
	}
	s.count = uv()
	if len(b) < crdt.EntryIDSize {
		return s, errCorruptConv
	}
	s.last, _ = crdt.DecodeEntryID(b)
	b = b[crdt.EntryIDSize:]
	n := uv()
	if n > uint64(len(b))/10 {
		return s, errCorruptConv
	}
	s.origins = make([]originState, n)
	for i := range s.origins {
		if len(b) < 8 {
			return s, errCorruptConv
		}
		s.origins[i].node = crdt.NodeID(binary.BigEndian.Uint64(b))
		b = b[8:]
		s.origins[i].prefix, s.origins[i].max = uv(), uv()
	}
	if b == nil {
		return s, errCorruptConv
	}
	return s, nil
}

// loadConv reads a conversation's state from bk (the convs bucket).
func loadConv(bk *bolt.Bucket, conv string) (convState, bool, error) {
	v := bk.Get([]byte(conv))
	if v == nil {
		return convState{}, false, nil
	}
	s, err := decodeConvState(v)
	if err != nil {
		return s, false, fmt.Errorf("conversation %q: %w", conv, err)
	}
	return s, true, nil
}

// Append adds a message to the conversation conv, which must be
// crdt.ConversationID(msg.From, msg.To). The entry's ID is the clock's next timestamp and
// this node's next sequence number in conv; its data is msg's encoding. The entry is
// written only if the function returns nil. Append fails if either participant is erased:
// check the recipient's user record in the same function first.
//
// An erasure marker (msg.Erased, without a body) may be appended whatever is erased, also
// in the function that erases msg.From: a function's markers are applied before its
// records, so the erasure cascade finds them in place (see the package documentation).
func (tx *Tx) Append(conv string, msg crdt.Message) (crdt.Entry, error) {
	if tx.closed {
		return crdt.Entry{}, errTxClosed
	}
	if err := checkConv(conv); err != nil {
		return crdt.Entry{}, err
	}
	if crdt.ConversationID(msg.From, msg.To) != conv {
		return crdt.Entry{}, fmt.Errorf("message from %q to %q does not belong to conversation %q", msg.From, msg.To, conv)
	}
	if msg.Erased && msg.Body != "" {
		return crdt.Entry{}, fmt.Errorf("conversation %q: an erasure marker has no body", conv)
	}
	a, b, _ := crdt.Participants(conv)
	for _, u := range []string{a, b} {
		if !msg.Erased && tx.b.erasedFor(tx, u) {
			return crdt.Entry{}, fmt.Errorf("conversation %q: user %q is erased", conv, u)
		}
	}
	seq, ok := tx.seqs[conv]
	if !ok {
		st, _, err := loadConv(tx.b.convs.get().Bucket, conv)
		if err != nil {
			return crdt.Entry{}, err
		}
		seq = max(st.origin(tx.b.db.node).max, seqFloor(tx.b.seqFloor.get().Bucket, conv)) + 1
		if tx.seqs == nil {
			tx.seqs = make(map[string]uint64)
		}
	}
	data := msg.AppendBinary(nil)
	if len(data) > MaxEntry {
		return crdt.Entry{}, fmt.Errorf("message of %d bytes, at most %d", len(data), MaxEntry)
	}
	tx.seqs[conv] = seq + 1
	if msg.Erased {
		tx.mark(msg.From)
	}
	e := crdt.Entry{ID: crdt.EntryID{TS: tx.b.db.clock.Next(), Seq: seq}, Data: data}
	tx.entries = append(tx.entries, e)
	tx.convs = append(tx.convs, conv)
	return crdt.Entry{ID: e.ID, Data: bytes.Clone(e.Data)}, nil
}

// Entry returns the entry id of the conversation conv as this node holds it (committed,
// or appended earlier in this function), and whether it holds it. The entry's data is a
// copy the caller owns.
func (tx *Tx) Entry(conv string, id crdt.EntryID) (crdt.Entry, bool, error) {
	if tx.closed {
		return crdt.Entry{}, false, errTxClosed
	}
	if err := checkConv(conv); err != nil {
		return crdt.Entry{}, false, err
	}
	for i := range tx.entries {
		if tx.convs[i] == conv && tx.entries[i].ID == id {
			return crdt.Entry{ID: id, Data: bytes.Clone(tx.entries[i].Data)}, true, nil
		}
	}
	v := tx.b.log.get().Get(id.AppendBinary(convPrefix(conv)))
	if len(v) < seqLen {
		return crdt.Entry{}, false, nil
	}
	return crdt.Entry{ID: id, Data: bytes.Clone(v[seqLen:])}, true, nil
}

// insert buffers a remote entry and says what applying it will do.
func (tx *Tx) insert(conv string, e crdt.Entry) outcome {
	marker := crdt.IsErasureMarker(e.Data)
	prefix := convPrefix(conv)
	lk := e.ID.AppendBinary(slices.Clip(prefix))
	if _, dup := tx.inserted[string(lk)]; dup {
		return outUnchanged
	}
	if a, b, _ := crdt.Participants(conv); !marker && (tx.b.erasedFor(tx, a) || tx.b.erasedFor(tx, b)) {
		// Buffered all the same: applying it drops it, and leaves a marker in the
		// conversation if it holds none (batch.writeEntry).
		tx.buffer(conv, e, lk)
		return outDropped
	}
	if tx.b.log.get().Get(lk) != nil {
		return outUnchanged
	}
	if marker {
		// (A marker deletes the messages it might conflict with before it is compared
		// with what is left: batch.writeEntry.)
		if m, err := crdt.DecodeMessage(e.Data); err == nil { // checked by Change.check
			tx.mark(m.From)
		}
	} else if v := tx.b.logSeq.get().Get(seqKey(prefix, e.ID.Origin(), e.ID.Seq)); v != nil {
		if ts, _ := crdt.DecodeTimestamp(v); ts.Compare(e.ID.TS) < 0 {
			return outUnchanged // a conflicting entry that wins is already here
		}
	}
	tx.buffer(conv, e, lk)
	return outApplied
}

// mark notes that the function buffered an erasure marker of user: applied before the
// function's other writes, it makes the user erased for them (batch.erasedFor).
func (tx *Tx) mark(user string) {
	if tx.marked == nil {
		tx.marked = make(map[string]bool)
	}
	tx.marked[user] = true
}

// buffer adds a remote entry, whose log key is lk, to the function's writes.
func (tx *Tx) buffer(conv string, e crdt.Entry, lk []byte) {
	if tx.inserted == nil {
		tx.inserted = make(map[string]struct{})
	}
	tx.inserted[string(lk)] = struct{}{}
	tx.entries = append(tx.entries, e)
	tx.convs = append(tx.convs, conv)
}

// writeEntry stores a log entry unless it is there already or, for a message, a
// participant is erased. Two different entries with the same origin and seq (only a node
// restored from an old copy of its file would issue them) resolve everywhere to the one
// with the lower ID.
//
// A message dropped because a participant is erased leaves this node's own marker in the
// conversation if it holds none (leaveMarker). An erasure marker (whose form Change.check
// or Tx.Append checked) is stored whatever is erased: it marks its From erased and
// deletes the conversation's messages first (purgeConv), so it is compared only with
// other markers.
func (b *batch) writeEntry(conv string, e crdt.Entry) (outcome, error) {
	x, y, _ := crdt.Participants(conv)
	marker := crdt.IsErasureMarker(e.Data)
	if !marker {
		for _, u := range []string{x, y} {
			if b.erasedFor(nil, u) {
				if b.holdsMarker(conv) {
					return outDropped, nil
				}
				return outDropped, b.leaveMarker(conv, u)
			}
		}
	}
	prefix := convPrefix(conv)
	lk := e.ID.AppendBinary(slices.Clip(prefix))
	if b.log.get().Get(lk) != nil {
		return outUnchanged, nil
	}
	if marker {
		m, err := crdt.DecodeMessage(e.Data)
		if err != nil || crdt.ConversationID(m.From, m.To) != conv {
			return 0, fmt.Errorf("malformed erasure marker %v", e.ID)
		}
		if err := b.markErased(m.From, erasedMarker); err != nil {
			return 0, err
		}
		if _, err := b.purgeConv(conv); err != nil {
			return 0, err
		}
	}
	st, exists, err := loadConv(b.convs.get().Bucket, conv)
	if err != nil {
		return 0, err
	}
	origin, sk := e.ID.Origin(), seqKey(prefix, e.ID.Origin(), e.ID.Seq)
	replace := false
	if v := b.logSeq.get().Get(sk); v != nil {
		ts, _ := crdt.DecodeTimestamp(v)
		old := crdt.EntryID{TS: ts, Seq: e.ID.Seq}
		if old.Compare(e.ID) < 0 {
			return outUnchanged, nil
		}
		if err := b.deleteEntry(conv, old); err != nil {
			return 0, err
		}
		st.count--
		replace = true
	}
	seq := b.nextSeq()
	if err := b.log.get().Put(lk, append(putUint(seq), e.Data...)); err != nil {
		return 0, err
	}
	if err := b.logSeq.get().Put(sk, e.ID.TS.AppendBinary(nil)); err != nil {
		return 0, err
	}
	if !exists && !marker { // a conversation with a marker is listed for neither
		for _, u := range []string{x, y} {
			if err := b.userConvs.get().Put(append(append([]byte(u), 0), conv...), present); err != nil {
				return 0, err
			}
		}
	}
	st.count++
	if replace {
		c := b.log.get().Cursor()
		c.Seek(append([]byte(conv), 1))
		if k, _ := c.Prev(); k != nil && bytes.HasPrefix(k, prefix) {
			st.last, _ = crdt.DecodeEntryID(k[len(prefix):])
		}
	} else {
		if st.last.Compare(e.ID) < 0 {
			st.last = e.ID
		}
		o := st.origin(origin)
		o.max = max(o.max, e.ID.Seq)
		if e.ID.Seq == o.prefix+1 {
			o.prefix = e.ID.Seq
			for o.prefix < o.max && b.logSeq.get().Get(seqKey(prefix, origin, o.prefix+1)) != nil {
				o.prefix++
			}
		}
	}
	if err := b.convs.get().Put([]byte(conv), st.encode()); err != nil {
		return 0, err
	}
	key := LogKey(conv, e.ID)
	if err := indexLeaves(b.leaves.get(), key, true); err != nil {
		return 0, err
	}
	b.toggle(key, crdt.PairHash(key, e.AppendBinary(nil)))
	if err := b.feedPut(seq, key); err != nil {
		return 0, err
	}
	if !marker {
		b.messages++
	}
	b.changed(Change{Key: key, Conv: conv, Entry: crdt.Entry{ID: e.ID, Data: bytes.Clone(e.Data)}})
	return outApplied, nil
}

// deleteEntry deletes one entry of conv (not its log_seq key, which the caller reuses).
func (b *batch) deleteEntry(conv string, id crdt.EntryID) error {
	lk := id.AppendBinary(convPrefix(conv))
	v := b.log.get().Get(lk)
	if v == nil {
		return nil
	}
	key := LogKey(conv, id)
	e := crdt.Entry{ID: id, Data: v[seqLen:]}
	b.toggle(key, crdt.PairHash(key, e.AppendBinary(nil)))
	b.removed(key)
	if !crdt.IsErasureMarker(e.Data) {
		b.messages--
	}
	if err := indexLeaves(b.leaves.get(), key, false); err != nil {
		return err
	}
	return b.log.get().Delete(lk)
}
