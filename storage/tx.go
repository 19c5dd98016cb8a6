package storage

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/sessiond/sessiond/crdt"
)

// Tx is one Update function's view of the store: reads see the committed state, the
// earlier functions of the same batch and this function's own writes, which are buffered
// until it returns. A Tx is valid only while its function runs and is not safe for
// concurrent use.
type Tx struct {
	b         *batch
	closed    bool
	recs      map[string]*pendingRecord
	order     []string // keys of recs in first-write order
	entries   []crdt.Entry
	convs     []string            // conv of each entry
	seqs      map[string]uint64   // conv → next seq of this node, once this function appended
	inserted  map[string]struct{} // log keys of the remote entries buffered
	marked    map[string]bool     // the From of each erasure marker buffered
	deletes   []string            // records to delete (Sweep, Drop)
	dropConvs []string            // conversations to drop (Drop)
	// overtaken lists this node's writes that remote changes replaced (see
	// DB.Overtaken).
	overtaken []Overtaken
}

// pendingRecord is a record merged by a function and not yet applied.
type pendingRecord struct {
	had  bool     // the record was stored when the function first read it
	base stored   // and this is what it was
	m    crdt.Map // merged state
	size int      // at least m.EncodedLen(): a bound that spares measuring m on every merge
	keep bool     // false when the merged record is not to be stored
}

// MaxRecord bounds the encoded size of every stored record, tombstones included (see
// crdt.Map.EncodedLen). A local write that would grow a record beyond it fails with
// ErrRecordTooLarge; a remote change that would is not applied (ApplyResult.TooLarge).
// The API's own limits keep what one node writes far below it (docs/API.md); only
// concurrent writes to one session through several partitioned nodes can add up to more,
// and those beyond the bound are then kept by the nodes that accepted them.
const MaxRecord = 1 << 20

// ErrRecordTooLarge is returned by Tx.Merge for a write that would grow a record beyond
// MaxRecord.
var ErrRecordTooLarge = errors.New("storage: record would exceed its size bound")

var errTxClosed = errors.New("storage: transaction used after its function returned")

// Record returns the state of the record key, as a copy the caller owns (crdt.Map.Share:
// it shares its fields with the transaction's until either changes, and its field values
// are shared: read them, never write into them), and whether it exists. It sees this function's earlier writes: a record this function merged into a
// state that is not stored (see Merge) does not exist. Otherwise it returns what is
// stored, which may be a session already past its expiry and not yet swept.
func (tx *Tx) Record(key string) (crdt.Map, bool, error) {
	if tx.closed {
		return crdt.Map{}, false, errTxClosed
	}
	if p, ok := tx.recs[key]; ok {
		if !p.keep {
			return crdt.Map{}, false, nil
		}
		return p.m.Share(), true, nil
	}
	return tx.b.record(key)
}

// Merge merges update into the record key, creating it if absent, and returns the merged
// state, which the caller owns as Record says. Merging is idempotent and commutative.
//
// Some merged states are not stored, and an existing record in such a state is deleted:
// a session record past its absolute expiry (crdt.SessionExpires; a record without one
// counts as expired), without a valid owner, or owned by an erased user; a key-value
// record past its keep time (crdt.KVKeepNanos; a record without one counts as past it).
// A key-value record, and the update merged into it, are compacted (crdt.CompactKV). Merge still
// returns the merged state, and Record then reports the record absent. The record of an
// erased user keeps only its username, deleted flag and sessions_until fields; merging a
// deleted flag into it erases the user's sessions and conversations (see the package
// documentation).
//
// Merge fails on an invalid key (empty, longer than 1024 bytes, containing NUL, or in the
// "l/" namespace of log entries) and on storage errors.
func (tx *Tx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	p, _, err := tx.merge(key, update, false)
	if err != nil {
		return crdt.Map{}, err
	}
	return p.m.Share(), nil
}

// outcome is what a merge or insert did, for ApplyResult.
type outcome int

const (
	outUnchanged outcome = iota
	outApplied
	outDropped
	outTooLarge // not applied: the record would exceed MaxRecord
)

// remote says update comes from another node: then a write of this node's that it
// overtakes is noted (batch.overtook).
func (tx *Tx) merge(key string, update crdt.Map, remote bool) (*pendingRecord, outcome, error) {
	if tx.closed {
		return nil, 0, errTxClosed
	}
	if err := checkRecordKey(key); err != nil {
		return nil, 0, err
	}
	p, ok := tx.recs[key]
	fresh := !ok
	if fresh {
		m, base, had, err := tx.b.load(key)
		if err != nil {
			return nil, 0, err
		}
		p = &pendingRecord{had: had, base: base, m: m, size: len(base.enc)} // m's encoding
		if !had {
			p.size = m.EncodedLen()
		}
		if tx.recs == nil {
			tx.recs = make(map[string]*pendingRecord)
		}
		tx.recs[key] = p
		tx.order = append(tx.order, key)
	}
	kv := strings.HasPrefix(key, crdt.KVPrefix)
	if kv {
		// Compacted before the merge, so that no stored key-value record holds a field
		// of the wrong kind (crdt.CompactKV). The caller's update is left as it is.
		update = update.Copy()
		crdt.CompactKV(&update, tx.b.db.node)
	}
	// The merged state is measured only when the bound says it might be too large; it is
	// then merged into a copy, kept only if it fits.
	dst, bound := &p.m, p.size+update.EncodedLen()
	var trial crdt.Map
	if bound > MaxRecord {
		trial = p.m.Copy()
		dst = &trial
	}
	// An erased user's record and a revoked session are filtered after merging
	// (filtered), a key-value record compacted; whether the merge changed it then shows
	// only in its encoding.
	var before []byte
	var prefix string // the record's kind, if it may be filtered
	switch {
	case kv:
		before = p.m.AppendBinary(nil)
	case strings.HasPrefix(key, crdt.UserPrefix):
		prefix = crdt.UserPrefix
	case strings.HasPrefix(key, crdt.SessionPrefix):
		prefix = crdt.SessionPrefix
	}
	if prefix != "" && (filtered(prefix, &p.m) != nil || filtered(prefix, &update) != nil) {
		before = p.m.AppendBinary(nil)
	}
	var changed bool
	var overtaken crdt.Timestamp
	if remote {
		changed, overtaken = dst.MergeOvertaking(update, tx.b.db.node)
	} else {
		changed = dst.Merge(update)
	}
	if kv && changed {
		// A remote put or delete that hides this node's fields overtakes them too.
		if o := crdt.CompactKV(dst, tx.b.db.node); remote && overtaken.Less(o) {
			overtaken = o
		}
	}
	// Filtered before it is measured: a revocation or an erasure only ever shrinks a
	// record, and must not be refused as too large when the record is near the bound.
	if drop := filtered(prefix, dst); drop != nil {
		dst.Prune(func(name string, f crdt.Field) bool {
			// A write of ours that a remote erasure or revocation sheds is lost as much as
			// one a later write replaced (DB.Replaced).
			if drop(name) && remote && f.TS.Node == tx.b.db.node && overtaken.Less(f.TS) {
				overtaken = f.TS
			}
			return drop(name)
		})
	}
	if dst == &trial {
		if n := trial.EncodedLen(); n > MaxRecord {
			if fresh { // as if never merged
				delete(tx.recs, key)
				tx.order = tx.order[:len(tx.order)-1]
			}
			if remote {
				return p, outTooLarge, nil
			}
			return p, 0, fmt.Errorf("merge %q: %d bytes, at most %d: %w", key, n, MaxRecord, ErrRecordTooLarge)
		}
		p.m, bound = trial, trial.EncodedLen()
	}
	p.size = bound
	if before != nil {
		changed = !bytes.Equal(before, p.m.AppendBinary(nil))
	}
	if !overtaken.IsZero() {
		tx.overtaken = append(tx.overtaken, Overtaken{Key: key, TS: overtaken})
	}
	p.keep = p.m.Len() > 0 && tx.b.keep(tx, key, &p.m)
	switch {
	case p.m.Len() > 0 && !p.keep:
		return p, outDropped, nil
	case changed:
		return p, outApplied, nil
	}
	return p, outUnchanged, nil
}

// apply writes the function's buffered writes into the batch.
func (tx *Tx) apply() error {
	for _, conv := range tx.dropConvs {
		if err := tx.b.dropConv(conv); err != nil {
			return fmt.Errorf("drop conversation %q: %w", conv, err)
		}
	}
	for _, key := range tx.deletes {
		_, st, ok, err := tx.b.load(key)
		if err != nil {
			return err
		}
		if ok {
			if err := tx.b.deleteRecord(key, st); err != nil {
				return fmt.Errorf("record %q: %w", key, err)
			}
		}
	}
	// Erasure markers first: the erasure cascade that a record of this function may
	// trigger then finds them in place, keeps them and leaves no marker of its own where
	// one is. Messages last: those of a user erased by this function are dropped.
	if err := tx.writeEntries(true); err != nil {
		return err
	}
	// Before the records: a cascade that one of them runs deletes those it deletes.
	for _, o := range tx.overtaken {
		if p := tx.recs[o.Key]; p == nil || !p.keep {
			continue // not stored: nothing stands for the write
		}
		tx.b.overtaken = append(tx.b.overtaken, o)
		if err := tx.b.noteReplaced([]byte(o.Key), o.TS); err != nil {
			return fmt.Errorf("record %q: %w", o.Key, err)
		}
	}
	for _, key := range tx.order {
		p := tx.recs[key]
		if !p.had && !p.keep {
			continue // nothing stored, nothing to store
		}
		if err := tx.b.writeRecord(key, p); err != nil {
			return fmt.Errorf("record %q: %w", key, err)
		}
	}
	if err := tx.writeEntries(false); err != nil {
		return err
	}
	return nil
}

// writeEntries writes the function's erasure markers (markers), or its other entries.
func (tx *Tx) writeEntries(markers bool) error {
	for i, e := range tx.entries {
		if crdt.IsErasureMarker(e.Data) != markers {
			continue
		}
		if _, err := tx.b.writeEntry(tx.convs[i], e); err != nil {
			return fmt.Errorf("log %q: %w", tx.convs[i], err)
		}
	}
	return nil
}

// MaxKeyLen bounds a replicated key (a record key, or a log entry's LogKey) in bytes.
const MaxKeyLen = 1024

// checkRecordKey rejects keys that cannot be stored or would collide with log keys.
func checkRecordKey(key string) error {
	if key == "" || len(key) > MaxKeyLen || strings.IndexByte(key, 0) >= 0 || strings.HasPrefix(key, logPrefix) {
		return fmt.Errorf("invalid record key %q", key)
	}
	return nil
}

// validID reports whether s can be a user ID in conversation IDs and index keys.
func validID(s string) bool {
	return s != "" && len(s) <= MaxKeyLen/4 && !strings.ContainsAny(s, "\x00:/")
}

// checkConv rejects conversation IDs that crdt.ConversationID would not produce.
func checkConv(conv string) error {
	a, b, ok := crdt.Participants(conv)
	if !ok || !validID(a) || !validID(b) || b < a {
		return fmt.Errorf("invalid conversation %q", conv)
	}
	return nil
}
