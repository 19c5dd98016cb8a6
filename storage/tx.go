package storage

import (
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
	b       *batch
	closed  bool
	recs    map[string]*pendingRecord
	order   []string // keys of recs in first-write order
	entries []crdt.Entry
	convs   []string          // conv of each entry
	seqs    map[string]uint64 // conv → next seq of this node, once this function appended
	deletes []string          // records to delete (Sweep)
}

// pendingRecord is a record merged by a function and not yet applied.
type pendingRecord struct {
	base     crdt.Map // the stored state the merges started from
	baseHash uint64   // its digest pair hash
	had      bool     // base was stored
	m        crdt.Map // merged state
	keep     bool     // false when the merged record is not to be stored
}

// dirty reports whether applying p changes what is stored.
func (p *pendingRecord) dirty() bool {
	if !p.keep {
		return p.had
	}
	return !p.had || !p.base.Equal(p.m)
}

var errTxClosed = errors.New("storage: transaction used after its function returned")

// Record returns the state of the record key, as a copy the caller owns, and whether it
// exists. It sees this function's earlier writes: a record this function merged into a
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
		return p.m.Clone(), true, nil
	}
	m, _, ok, err := tx.b.record(key)
	return m, ok, err
}

// Merge merges update into the record key, creating it if absent, and returns the merged
// state, which the caller owns. Merging is idempotent and commutative.
//
// Some merged states are not stored, and an existing record in such a state is deleted:
// a session record past its absolute expiry (crdt.SessionExpires; a record without one
// counts as expired), without a valid owner, or owned by an erased user. Merge still
// returns the merged state, and Record then reports the record absent. The record of an
// erased user keeps only its username, deleted flag and sessions_until fields; merging a
// deleted flag into it erases the user's sessions and conversations (see the package
// documentation).
//
// Merge fails on an invalid key (empty, longer than 1024 bytes, containing NUL, or in the
// "l/" namespace of log entries) and on storage errors.
func (tx *Tx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	p, _, err := tx.merge(key, update)
	if err != nil {
		return crdt.Map{}, err
	}
	return p.m.Clone(), nil
}

// outcome is what a merge or insert did, for ApplyResult.
type outcome int

const (
	outUnchanged outcome = iota
	outApplied
	outDropped
)

func (tx *Tx) merge(key string, update crdt.Map) (*pendingRecord, outcome, error) {
	if tx.closed {
		return nil, 0, errTxClosed
	}
	if err := checkRecordKey(key); err != nil {
		return nil, 0, err
	}
	p, ok := tx.recs[key]
	if !ok {
		base, hash, had, err := tx.b.record(key)
		if err != nil {
			return nil, 0, err
		}
		p = &pendingRecord{base: base, baseHash: hash, had: had, m: base.Clone()}
		if tx.recs == nil {
			tx.recs = make(map[string]*pendingRecord)
		}
		tx.recs[key] = p
		tx.order = append(tx.order, key)
	}
	var before crdt.Map
	isUser := strings.HasPrefix(key, crdt.UserPrefix)
	if isUser {
		before = p.m.Clone() // erased users' records are filtered after merging
	}
	changed := p.m.Merge(update)
	if isUser {
		filterErased(&p.m)
		changed = !before.Equal(p.m)
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
	for _, key := range tx.deletes {
		m, h, ok, err := tx.b.record(key)
		if err != nil {
			return err
		}
		if ok {
			if err := tx.b.deleteRecord(key, &m, h); err != nil {
				return fmt.Errorf("record %q: %w", key, err)
			}
		}
	}
	for _, key := range tx.order {
		p := tx.recs[key]
		if !p.dirty() {
			continue
		}
		if err := tx.b.writeRecord(key, p); err != nil {
			return fmt.Errorf("record %q: %w", key, err)
		}
	}
	for i, e := range tx.entries {
		if _, err := tx.b.writeEntry(tx.convs[i], e); err != nil {
			return fmt.Errorf("log %q: %w", tx.convs[i], err)
		}
	}
	return nil
}

// erased reports whether user is erased here, counting this function's buffered writes.
// tx may be nil.
func (b *batch) erasedFor(tx *Tx, user string) bool {
	if tx != nil {
		if p, ok := tx.recs[crdt.UserKey(user)]; ok {
			if _, del := p.m.Flag(crdt.FieldDeleted); del {
				return true
			}
		}
	}
	return b.erased.Get([]byte(user)) != nil
}

const maxKeyLen = 1024

// checkRecordKey rejects keys that cannot be stored or would collide with log keys.
func checkRecordKey(key string) error {
	if key == "" || len(key) > maxKeyLen || strings.IndexByte(key, 0) >= 0 || strings.HasPrefix(key, logPrefix) {
		return fmt.Errorf("invalid record key %q", key)
	}
	return nil
}

// validID reports whether s can be a user ID in conversation IDs and index keys.
func validID(s string) bool {
	return s != "" && len(s) <= maxKeyLen/4 && !strings.ContainsAny(s, "\x00:/")
}

// checkConv rejects conversation IDs that crdt.ConversationID would not produce.
func checkConv(conv string) error {
	a, b, ok := crdt.Participants(conv)
	if !ok || !validID(a) || !validID(b) || b < a {
		return fmt.Errorf("invalid conversation %q", conv)
	}
	return nil
}
