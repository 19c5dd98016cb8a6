package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/sessiond/sessiond/crdt"
)

// Change is the replicated state of one key: a record's full state, or one log entry.
// It is what OnCommit, ChangesSince and Changes return and what ApplyRemote merges.
type Change struct {
	Key   string     // replication key: the record key, or LogKey(Conv, Entry.ID)
	Map   crdt.Map   // the record's full state, when Conv == ""
	Conv  string     // the conversation, for a log entry
	Entry crdt.Entry // the log entry, when Conv != ""
}

// logPrefix starts every log entry's replication key; record keys never do.
const logPrefix = crdt.LogPrefix

// LogKey returns the replication key of entry id of conversation conv:
// "l/<conv>/<hex of id's binary encoding>". It sorts with neither records nor other
// conversations in any useful way; it only names the entry.
func LogKey(conv string, id crdt.EntryID) string {
	var b [crdt.EntryIDSize]byte
	return logPrefix + conv + "/" + hex.EncodeToString(id.AppendBinary(b[:0]))
}

// ParseLogKey returns the conversation and entry ID named by a LogKey, and false for any
// other string (record keys included).
func ParseLogKey(key string) (conv string, id crdt.EntryID, ok bool) {
	rest, ok := strings.CutPrefix(key, logPrefix)
	i := strings.LastIndexByte(rest, '/')
	if !ok || i < 0 || len(rest)-i-1 != 2*crdt.EntryIDSize {
		return "", crdt.EntryID{}, false
	}
	b, err := hex.DecodeString(rest[i+1:])
	if err != nil {
		return "", crdt.EntryID{}, false
	}
	id, _ = crdt.DecodeEntryID(b)
	conv = rest[:i]
	if id.Seq == 0 || checkConv(conv) != nil || LogKey(conv, id) != key {
		return "", crdt.EntryID{}, false
	}
	return conv, id, true
}

// check reports whether c is well formed: a valid record key with a Map, or a valid
// conversation whose entry has a sequence number and the matching Key.
func (c *Change) check() error {
	if c.Conv == "" {
		return checkRecordKey(c.Key)
	}
	if err := checkConv(c.Conv); err != nil {
		return err
	}
	if c.Entry.ID.Seq == 0 {
		return fmt.Errorf("log entry of %q with sequence number 0", c.Conv)
	}
	if c.Key != LogKey(c.Conv, c.Entry.ID) {
		return fmt.Errorf("log entry key %q does not match its entry", c.Key)
	}
	if len(c.Entry.Data) > MaxEntry {
		return fmt.Errorf("log entry of %q: %d bytes, at most %d", c.Conv, len(c.Entry.Data), MaxEntry)
	}
	// Other entries' data is opaque here; a marker's is read (its From is erased).
	if crdt.IsErasureMarker(c.Entry.Data) {
		m, err := crdt.DecodeMessage(c.Entry.Data)
		if err != nil {
			return fmt.Errorf("erasure marker in %q: %w", c.Conv, err)
		}
		if crdt.ConversationID(m.From, m.To) != c.Conv {
			return fmt.Errorf("erasure marker of %q and %q in conversation %q", m.From, m.To, c.Conv)
		}
	}
	return nil
}

// MaxEntry bounds a log entry's data in bytes (a message of at most 4 KiB of body takes
// far less); ApplyRemote refuses a change with a larger one as malformed.
const MaxEntry = 64 << 10

// maxTimestamp returns the latest timestamp c carries.
func (c *Change) maxTimestamp() crdt.Timestamp {
	if c.Conv != "" {
		return c.Entry.ID.TS
	}
	return c.Map.Version()
}

const (
	changeVersion = 1
	kindRecord    = 1
	kindEntry     = 2
)

// AppendBinary appends the canonical encoding of c: a version byte, a kind byte, the
// length-prefixed record key or conversation, then the crdt encoding of the Map or
// Entry. Equal changes have equal encodings.
func (c Change) AppendBinary(b []byte) []byte {
	b = append(b, changeVersion)
	if c.Conv != "" {
		b = append(b, kindEntry)
		b = binary.AppendUvarint(b, uint64(len(c.Conv)))
		b = append(b, c.Conv...)
		return c.Entry.AppendBinary(b)
	}
	b = append(b, kindRecord)
	b = binary.AppendUvarint(b, uint64(len(c.Key)))
	b = append(b, c.Key...)
	return c.Map.AppendBinary(b)
}

// DecodeChange decodes a Change encoded by AppendBinary. It accepts only canonical,
// well-formed encodings (valid keys and conversations, a Key matching the entry), never
// panics and allocates at most a small multiple of len(b). The result does not alias b.
func DecodeChange(b []byte) (Change, error) {
	c, err := decodeChange(b)
	if err != nil {
		return Change{}, fmt.Errorf("decode change: %w", err)
	}
	return c, nil
}

func decodeChange(b []byte) (Change, error) {
	if len(b) < 2 {
		return Change{}, errors.New("truncated input")
	}
	if b[0] != changeVersion {
		return Change{}, fmt.Errorf("unknown encoding version %d, want %d", b[0], changeVersion)
	}
	kind, rest := b[1], b[2:]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > MaxKeyLen || n > uint64(len(rest)-k) {
		return Change{}, errors.New("bad key length")
	}
	name, rest := string(rest[k:k+int(n)]), rest[k+int(n):]
	var c Change
	switch kind {
	case kindRecord:
		m, err := crdt.DecodeMap(rest)
		if err != nil {
			return Change{}, err
		}
		c = Change{Key: name, Map: m}
	case kindEntry:
		if name == "" {
			return Change{}, errors.New("log entry without a conversation")
		}
		e, err := crdt.DecodeEntry(rest)
		if err != nil {
			return Change{}, err
		}
		c = Change{Key: LogKey(name, e.ID), Conv: name, Entry: e}
	default:
		return Change{}, fmt.Errorf("unknown change kind %d", kind)
	}
	if err := c.check(); err != nil {
		return Change{}, err
	}
	if !bytes.Equal(c.AppendBinary(nil), b) {
		return Change{}, errors.New("non-canonical encoding")
	}
	return c, nil
}

// ApplyResult counts what ApplyRemote did with each change.
type ApplyResult struct {
	Applied   int // changed the stored state
	Unchanged int // already known (a duplicate, or older than what is stored)
	Dropped   int // not stored: an expired session, or a record or entry of an erased user
	// Rejected counts changes not applied, or applied only in part: a log entry stamped,
	// or a record's fields stamped, too far ahead of local time (MaxSkew).
	Rejected int
	TooLarge int // not applied: the record would exceed MaxRecord
	// Refused lists the keys of the changes counted in Rejected and TooLarge.
	Refused []string
}

// ApplyRemote merges changes received from other nodes and returns once they are
// durable. It first advances the clock past each change's latest timestamp. What is
// stamped more than MaxSkew ahead of local time is not applied — a log entry whole, a
// record field by field (the record's other fields, such as other nodes' writes it
// relays, still are) — and counts as Rejected; a record that would grow beyond
// MaxRecord is not applied and counts as TooLarge. Neither is an error of the call. The
// rest are merged in one function of a group commit, with the rules of Tx.Merge for
// records, and entries inserted unless present. Applying a change twice, or changes in
// any order, ends in the same state. It fails, applying nothing, if a change is malformed
// (see DecodeChange), and on storage errors.
func (db *DB) ApplyRemote(ctx context.Context, changes []Change) (ApplyResult, error) {
	var res ApplyResult
	for i := range changes {
		if err := changes[i].check(); err != nil {
			return res, fmt.Errorf("apply remote change %d: %w", i, err)
		}
	}
	accepted := make([]Change, 0, len(changes))
	var skew error
	for i := range changes {
		c := changes[i]
		if c.Conv == "" && c.Map.Version().Wall > db.skewLimit() {
			c.Map = withinSkew(c.Map, db.skewLimit())
			res.Rejected++
			res.Refused = append(res.Refused, c.Key)
			skew = fmt.Errorf("record %q: fields stamped more than %s ahead: %w", c.Key, db.opts.MaxSkew, crdt.ErrClockSkew)
			if c.Map.Len() == 0 {
				continue
			}
		}
		if err := db.clock.Observe(c.maxTimestamp()); err != nil {
			if !errors.Is(err, crdt.ErrClockSkew) {
				return res, fmt.Errorf("apply remote: %w", err)
			}
			if c.Conv == "" && c.Map.Len() != changes[i].Map.Len() {
				continue // counted above; local time moved back meanwhile
			}
			res.Rejected++
			res.Refused = append(res.Refused, c.Key)
			skew = err
			continue
		}
		accepted = append(accepted, c)
	}
	if skew != nil {
		db.log.Warn("remote changes rejected", attrCount, res.Rejected, attrErr, skew)
	}
	if len(accepted) == 0 {
		return res, nil
	}
	var r ApplyResult
	err := db.Update(ctx, func(tx *Tx) error {
		r = ApplyResult{}
		for i := range accepted {
			c := &accepted[i]
			var out outcome
			if c.Conv == "" {
				var err error
				if _, out, err = tx.merge(c.Key, c.Map, true); err != nil {
					return err
				}
			} else {
				out = tx.insert(c.Conv, c.Entry)
			}
			switch out {
			case outApplied:
				r.Applied++
			case outDropped:
				r.Dropped++
			case outTooLarge:
				r.TooLarge++
				r.Refused = append(r.Refused, c.Key)
			default:
				r.Unchanged++
			}
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("apply remote: %w", err)
	}
	res.Applied, res.Unchanged, res.Dropped, res.TooLarge = r.Applied, r.Unchanged, r.Dropped, r.TooLarge
	res.Refused = append(res.Refused, r.Refused...)
	if res.TooLarge > 0 {
		db.log.Warn("remote changes refused", attrCount, res.TooLarge, attrErr, ErrRecordTooLarge)
	}
	return res, nil
}

// skewLimit is the latest wall time a remote timestamp may carry now (see Options.MaxSkew).
func (db *DB) skewLimit() int64 {
	return db.physicalNow().Add(db.opts.MaxSkew).UnixNano()
}

// withinSkew returns the fields of m stamped no later than limit (wall nanoseconds), as a
// new Map (m, the caller's, is left as it is).
func withinSkew(m crdt.Map, limit int64) crdt.Map {
	kept := m.Copy()
	kept.Prune(func(_ string, f crdt.Field) bool { return f.TS.Wall > limit })
	return kept
}
