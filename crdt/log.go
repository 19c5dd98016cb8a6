package crdt

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
)

// EntryID identifies a log entry: the hybrid logical clock timestamp at which its origin
// appended it (Node is the origin) and the origin's sequence number within that log,
// counting 1, 2, 3, … without gaps. Entries order by (TS, Seq); an origin's own entries
// therefore order by Seq, in the order it appended them.
type EntryID struct {
	TS  Timestamp
	Seq uint64
}

// EntryIDSize is the length of an EntryID's binary encoding.
const EntryIDSize = TimestampSize + 8

// Origin returns the node that appended the entry.
func (id EntryID) Origin() NodeID { return id.TS.Node }

// Compare returns -1, 0 or +1 as id orders before, equal to or after o.
func (id EntryID) Compare(o EntryID) int {
	if c := id.TS.Compare(o.TS); c != 0 {
		return c
	}
	switch {
	case id.Seq < o.Seq:
		return -1
	case id.Seq > o.Seq:
		return 1
	}
	return 0
}

// AppendBinary appends the fixed-size, order-preserving encoding of id.
func (id EntryID) AppendBinary(b []byte) []byte {
	b = id.TS.AppendBinary(b)
	return binary.BigEndian.AppendUint64(b, id.Seq)
}

// DecodeEntryID decodes the first EntryIDSize bytes of b.
func DecodeEntryID(b []byte) (EntryID, error) {
	if len(b) < EntryIDSize {
		return EntryID{}, errShort
	}
	ts, _ := DecodeTimestamp(b)
	return EntryID{TS: ts, Seq: binary.BigEndian.Uint64(b[TimestampSize:])}, nil
}

// Entry is one immutable element of an append-only log.
type Entry struct {
	ID   EntryID
	Data []byte
}

// Log is an append-only log replicated by union: merging two logs keeps every entry of
// both exactly once, and every replica orders the entries the same way, by ID. The zero Log
// is empty and ready to use. A Log is not safe for concurrent use.
//
// Readers page through a log with a Cursor. Read returns an entry only once every earlier
// entry of the same origin is present (its origin's sequence numbers are contiguous up to
// it). The cursor records, per origin, the last sequence number returned, so an entry that
// arrives late — after entries that order after it — is still returned by the next Read: it
// is above its origin's mark, and entries of its origin that follow it were held back until
// it came.
type Log struct {
	entries []Entry             // sorted by ID, no duplicates
	prefix  map[NodeID]uint64   // per origin: highest seq with 1..seq all present
	seqs    map[NodeID][]uint64 // per origin: seqs present above prefix, sorted
}

// Len returns the number of entries.
func (l *Log) Len() int { return len(l.entries) }

// Entries returns the entries in log order. The slice belongs to the Log.
func (l *Log) Entries() []Entry { return l.entries }

// NextSeq returns the sequence number origin's next entry must carry, given the entries
// present: one past the highest seen from it.
func (l *Log) NextSeq(origin NodeID) uint64 {
	if s := l.seqs[origin]; len(s) > 0 {
		return s[len(s)-1] + 1
	}
	return l.prefix[origin] + 1
}

// Insert adds e unless an entry with its ID is already present, and reports whether it
// did. A zero Seq is rejected (returns false): sequence numbers start at 1.
func (l *Log) Insert(e Entry) bool {
	if e.ID.Seq == 0 {
		return false
	}
	i, found := slices.BinarySearchFunc(l.entries, e.ID, func(x Entry, id EntryID) int { return x.ID.Compare(id) })
	if found {
		return false
	}
	e.Data = bytes.Clone(e.Data)
	l.entries = slices.Insert(l.entries, i, e)
	l.markSeq(e.ID.Origin(), e.ID.Seq)
	return true
}

func (l *Log) markSeq(origin NodeID, seq uint64) {
	if l.prefix == nil {
		l.prefix = make(map[NodeID]uint64)
		l.seqs = make(map[NodeID][]uint64)
	}
	p := l.prefix[origin]
	if seq <= p {
		return
	}
	s := l.seqs[origin]
	if i, found := slices.BinarySearch(s, seq); !found {
		s = slices.Insert(s, i, seq)
	}
	for len(s) > 0 && s[0] == p+1 {
		p++
		s = s[1:]
	}
	l.prefix[origin] = p
	if len(s) == 0 {
		delete(l.seqs, origin)
	} else {
		l.seqs[origin] = s
	}
}

// Merge inserts every entry of o and reports whether l changed.
func (l *Log) Merge(o *Log) bool {
	changed := false
	for _, e := range o.entries {
		if l.Insert(e) {
			changed = true
		}
	}
	return changed
}

// Stable reports whether every entry of id's origin up to id is present.
func (l *Log) Stable(id EntryID) bool {
	return id.Seq <= l.prefix[id.Origin()]
}

// Read returns, in log order, up to limit stable entries that cursor has not yet returned,
// and the cursor to pass next time. limit ≤ 0 means no limit. The cursor argument is not
// modified.
func (l *Log) Read(cursor Cursor, limit int) ([]Entry, Cursor) {
	next := cursor.Clone()
	var out []Entry
	for _, e := range l.entries {
		if limit > 0 && len(out) == limit {
			break
		}
		o := e.ID.Origin()
		// Only an origin's next unread seq: if its timestamps ever went back (a restart
		// that lost its clock state), a later seq can order before an earlier one, and
		// returning it first would make the cursor skip the earlier one forever.
		if e.ID.Seq != next[o]+1 || !l.Stable(e.ID) {
			continue
		}
		out = append(out, e)
		next[o] = max(next[o], e.ID.Seq)
	}
	return out, next
}

// Cursor is a reader's position in a Log: per origin, the highest sequence number already
// returned. It is meaningful on every replica. The nil Cursor is the start of the log.
type Cursor map[NodeID]uint64

// Clone returns a copy of c that is never nil.
func (c Cursor) Clone() Cursor {
	out := make(Cursor, len(c))
	maps.Copy(out, c)
	return out
}

// Seen reports whether c has already returned the entry id.
func (c Cursor) Seen(id EntryID) bool { return id.Seq <= c[id.Origin()] }
