package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/sessiond/sessiond/crdt"
)

// Floors: what a push's Through cannot vouch for.
//
// A push's Through tells the receiver it holds every write of the sender's up to a mark
// in the partitions it holds: the sender's pushes, and its anti-entropy round with the
// receiver in the receiver's current era, carried them all. That round compares the
// partitions the receiver holds that the sender holds or has data in, so it carries the
// sender's own writes that the sender still stores. It cannot carry those the sender
// handed off and dropped (handoff.go): their holders confirmed them then, but a node
// that holds the partition only since (a holder failed, a view changed) was never sent
// them, and the sender's Throughs to it would vouch for writes it lacks.
//
// So a node keeps, per partition, a floor: the newest write of its own among the keys of
// that partition it dropped (floorTable; raised before the drop). A push that tells
// Through also tells the floors in the receiver's partitions that changed since the
// sender last told that receiver (all of them after the receiver's era changed: it may
// have forgotten them). The receiver notes each floor it does not already know it meets
// (haveState.noteFloorsLocked): until it knows, by what else taught it (rounds with
// other holders of the partition, Await's fetch, earlier Throughs), that it holds the
// sender's writes up to the floor there, that sender's Throughs do not vouch in that
// partition, and the partition counts as gained (the base, which Throughs raise, is not
// about it) until a round teaches it the base again. The holders that confirmed the
// dropped keys hold them, so a round with one of them ends the wait.
//
// Those holders need not wait at all, as long as they have dropped nothing since they
// confirmed: each node has a keep token (LeavesReply.Keep), which it renews around every
// drop of its own and on start, and tells with every leaves reply. For each partition
// the floor table also keeps, for each holder that confirmed the latest drops there
// under one token, the floor of the drops it did not confirm; a receiver whose token is
// still that one goes by that floor (Floor.For). A node that regains a partition it
// dropped has a new token, since it dropped.
//
// The table is saved (Store.SaveReplicationState) before each drop that raised it, and
// read again on start.

// floorTable is this node's floors, by partition. Safe for concurrent use.
type floorTable struct {
	mu  sync.Mutex
	seq uint64 // raised by every change: the version of the latest
	at  map[int]*partitionFloor
}

// partitionFloor is one partition's floor: the newest write of ours among the keys of
// the partition we dropped, but for the holders that confirmed the latest drops there
// and have dropped nothing since (their keep token is the same): for each, the newest
// such write among those it did not confirm (zero: none).
type partitionFloor struct {
	all  crdt.Timestamp
	seq  uint64 // the table's version when it last changed
	kept map[crdt.NodeID]keptFloor
}

type keptFloor struct {
	keep  uint64
	floor crdt.Timestamp
}

// raise records a drop, in partition p, of keys whose newest write of ours is ts, which
// the holders in by confirmed (each with its keep token when it confirmed them all; 0:
// unknown).
func (t *floorTable) raise(p int, ts crdt.Timestamp, by map[crdt.NodeID]uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.at == nil {
		t.at = make(map[int]*partitionFloor)
	}
	f := t.at[p]
	if f == nil {
		f = &partitionFloor{kept: make(map[crdt.NodeID]keptFloor)}
		t.at[p] = f
	}
	for node, k := range f.kept {
		if by[node] != k.keep {
			k.floor = maxTS(k.floor, ts) // did not confirm this drop, or dropped keys since
			f.kept[node] = k
		}
	}
	for node, keep := range by {
		if k, ok := f.kept[node]; keep != 0 && (!ok || k.keep != keep) {
			f.kept[node] = keptFloor{keep: keep, floor: f.all} // what it held before is unknown
		}
	}
	f.all = maxTS(f.all, ts)
	for node, k := range f.kept {
		if !k.floor.Less(f.all) {
			delete(f.kept, node) // no better than the floor itself
		}
	}
	t.seq++
	f.seq = t.seq
}

// since returns, sorted by partition, the floors that changed after version seq in the
// partitions of held (nil: every partition), as told to peer, and the table's version.
func (t *floorTable) since(seq uint64, held *partitionSet, peer crdt.NodeID) ([]Floor, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Floor
	for p, f := range t.at {
		if f.seq <= seq || held != nil && !held.has(p) {
			continue
		}
		fl := Floor{Partition: p, TS: f.all}
		if k, ok := f.kept[peer]; ok {
			fl.Keep, fl.Kept = k.keep, k.floor
		}
		out = append(out, fl)
	}
	slices.SortFunc(out, func(a, b Floor) int { return a.Partition - b.Partition })
	return out, t.seq
}

// droppedIn is what a drop raises in one partition: the newest write of ours among its
// keys, and the holders that confirmed every one of them, each with its keep token.
type droppedIn struct {
	ts crdt.Timestamp
	by map[crdt.NodeID]uint64
}

// dropFloors returns, by partition, what a drop of keys raises: for each key that
// carries a write of this node's own (own; newest: that write's timestamp, by the key's
// group, see ownGroup), the write in each of the key's partitions, and who confirmed it
// (confirmed: key → holder → its keep token).
func dropFloors(keys []string, own map[string]bool, newest map[string]crdt.Timestamp, confirmed map[string]map[crdt.NodeID]uint64) map[int]droppedIn {
	out := make(map[int]droppedIn)
	for _, key := range keys {
		if !own[key] {
			continue
		}
		ts := newest[ownGroup(key)]
		for _, p := range crdt.KeyHomes(key).Append(nil) {
			d, ok := out[p]
			if !ok {
				d = droppedIn{ts: ts, by: maps.Clone(confirmed[key])}
			} else {
				d.ts = maxTS(d.ts, ts)
				for node, keep := range d.by {
					if confirmed[key][node] != keep {
						delete(d.by, node) // confirmed not all of them, or not under one token
					}
				}
			}
			if d.by == nil {
				d.by = map[crdt.NodeID]uint64{}
			}
			out[p] = d
		}
	}
	return out
}

// noteFloorsLocked keeps those of origin's floors, in partitions this node holds, that
// it does not already know it meets, and stops the base from speaking for their
// partitions (they count as gained: the base rose, and rises, with the origin's
// Throughs, which do not vouch there). Not sharded, floors mean nothing: every node is
// pushed every write, and none drops any.
//
// keep is this node's keep token (Floor.For).
func (h *haveState) noteFloorsLocked(origin crdt.NodeID, floors []Floor, keep uint64) {
	if h.held == nil {
		return
	}
	for _, f := range floors {
		ts := f.For(keep)
		if ts.IsZero() || ts.Node != origin || !h.held.has(f.Partition) || h.coversLocked(ts, f.Partition) {
			continue
		}
		if h.floors == nil {
			h.floors = make(map[crdt.NodeID]map[int]crdt.Timestamp)
		}
		m := h.floors[origin]
		if m == nil {
			m = make(map[int]crdt.Timestamp)
			h.floors[origin] = m
		}
		m[f.Partition] = maxTS(m[f.Partition], ts)
		h.gained.add(f.Partition)
		h.anyGained = true
	}
}

// belowFloorLocked reports whether origin has a floor in partition p not known met: its
// Throughs do not vouch there.
func (h *haveState) belowFloorLocked(origin crdt.NodeID, p int) bool {
	_, ok := h.floors[origin][p]
	return ok
}

// throughAtLocked returns what the Throughs vouch for in partition p: h.through but the
// marks of origins with a floor there not known met.
func (h *haveState) throughAtLocked(p int) crdt.Bookmark {
	if len(h.floors) == 0 {
		return h.through
	}
	var out crdt.Bookmark
	for _, ts := range h.through.Marks() {
		if !h.belowFloorLocked(ts.Node, p) {
			out.Add(ts)
		}
	}
	return out
}

// meetFloorsLocked forgets the floors now known met, and those of partitions no longer
// held (a partition gained again starts a new era, and its origins tell their floors
// anew).
func (h *haveState) meetFloorsLocked() {
	if h.held == nil {
		h.floors = nil // not sharded any more
		return
	}
	for origin, m := range h.floors {
		for p, ts := range m {
			if !h.held.has(p) || h.coversLocked(ts, p) {
				delete(m, p)
			}
		}
		if len(m) == 0 {
			delete(h.floors, origin)
		}
	}
}

// renewKeep gives this node a new keep token (LeavesReply.Keep). A handoff renews it
// before and after each drop: a reply that read a token before the drop may have
// compared leaves before it too, and a token read after both renewals saw the drop's
// outcome, since the reply reads it before the leaves. A restart starts with a new one.
func (r *Replicator) renewKeep() { r.keep.Store(newEra(r.keep.Load())) }

// floorsFormat is the first byte of the floor table's encoding (encode).
const floorsFormat = 1

// maxKeptPerFloor bounds the holders kept per partition in a decoded table: the
// confirmers of one drop, a few per region.
const maxKeptPerFloor = 1024

// encode returns the table for storage (Store.SaveReplicationState): its format, the
// number of partitions, and for each the partition, its floor and the holders kept.
func (t *floorTable) encode() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := binary.AppendUvarint([]byte{floorsFormat}, uint64(len(t.at)))
	for p, f := range t.at {
		b = binary.AppendUvarint(b, uint64(p)) // #nosec G115 -- a partition, below crdt.Partitions
		b = f.all.AppendBinary(b)
		b = binary.AppendUvarint(b, uint64(len(f.kept)))
		for node, k := range f.kept {
			b = binary.BigEndian.AppendUint64(b, uint64(node))
			b = binary.BigEndian.AppendUint64(b, k.keep)
			b = k.floor.AppendBinary(b)
		}
	}
	return b
}

// decodeFloors returns the table encode wrote, every floor changed after version 0.
func decodeFloors(b []byte) (*floorTable, error) {
	r := reader{b: b}
	if len(b) == 0 || b[0] != floorsFormat {
		return nil, fmt.Errorf("floor table of an unknown format")
	}
	r.b = r.b[1:]
	t := &floorTable{seq: 1, at: make(map[int]*partitionFloor)}
	n := r.count(1+crdt.TimestampSize+1, crdt.Partitions)
	for range n {
		p := r.index("floor partition", crdt.Partitions)
		f := &partitionFloor{all: r.timestamp(), seq: 1, kept: make(map[crdt.NodeID]keptFloor)}
		for range r.count(16+crdt.TimestampSize, maxKeptPerFloor) {
			node := crdt.NodeID(r.u64())
			f.kept[node] = keptFloor{keep: r.u64(), floor: r.timestamp()}
		}
		if r.err != nil {
			break
		}
		if _, dup := t.at[p]; dup {
			return nil, fmt.Errorf("floor table: partition %d twice", p)
		}
		t.at[p] = f
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return t, nil
}

// loadFloors reads the floors saved before a restart. A table that does not decode
// counts, cautiously, as a floor at the commit mark in every partition.
func (r *Replicator) loadFloors(ctx context.Context) {
	b, err := r.cfg.DB.ReplicationState(ctx)
	if err == nil && b == nil {
		return
	}
	var t *floorTable
	if err == nil {
		t, err = decodeFloors(b)
	}
	if err != nil {
		r.log.Warn("the floors saved before the restart cannot be read; assuming every own write dropped everywhere", slog.Any("err", err))
		now := r.cfg.DB.Committed()
		for p := range crdt.Partitions {
			r.floors.raise(p, now, nil)
		}
		r.have.setOwnFloors(r.floors.alls())
		return
	}
	r.floors.mu.Lock()
	r.floors.seq, r.floors.at = t.seq, t.at
	r.floors.mu.Unlock()
	r.have.setOwnFloors(r.floors.alls())
}

// alls returns each partition's floor, all holders alike.
func (t *floorTable) alls() map[int]crdt.Timestamp {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]crdt.Timestamp, len(t.at))
	for p, f := range t.at {
		out[p] = f.all
	}
	return out
}

// Our own floors. A partition this node dropped keys of, and holds again, may lack
// writes of its own: those up to its floor there that it handed off. Until a round with
// a peer that knows it holds them brings them back (meetOwnLocked), this node does not
// vouch for them (missing) nor tells peers it holds its writes there (base, haveOf).

// setOwnFloors records this node's floors (floorTable.alls).
func (h *haveState) setOwnFloors(all map[int]crdt.Timestamp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ownAll = all
}

// ownBelowLocked reports whether this node may lack its own write ts in partition p
// (AllPartitions: in some partition it holds): p is held, and ts lies between what a
// round brought back there and the floor.
func (h *haveState) ownBelowLocked(ts crdt.Timestamp, p int) bool {
	if len(h.ownAll) == 0 || h.held == nil {
		return false
	}
	below := func(p int, f crdt.Timestamp) bool {
		return h.held.has(p) && !f.Less(ts) && h.ownMet[p].Less(ts)
	}
	if p != AllPartitions {
		f, ok := h.ownAll[p]
		return ok && below(p, f)
	}
	for p, f := range h.ownAll {
		if below(p, f) {
			return true
		}
	}
	return false
}

// ownUnmetLocked returns the partitions held whose own floor no round met yet.
func (h *haveState) ownUnmetLocked() partitionSet {
	var out partitionSet
	if h.held == nil {
		return out
	}
	for p, f := range h.ownAll {
		if h.held.has(p) && h.ownMet[p].Less(f) {
			out.add(p)
		}
	}
	return out
}

// meetOwnLocked notes that a completed round left this node holding what a peer held
// (have) in the partitions of about (nil: all): its writes of self up to have's mark.
func (h *haveState) meetOwnLocked(have crdt.Bookmark, self crdt.NodeID, about *partitionSet) {
	mark := have.Mark(self)
	for p, f := range h.ownAll {
		if (about == nil || about.has(p)) && !mark.Less(f) && h.ownMet[p].Less(f) {
			if h.ownMet == nil {
				h.ownMet = make(map[int]crdt.Timestamp)
			}
			h.ownMet[p] = f
		}
	}
}

// ownUnmet returns the partitions held whose own floor no round met yet.
func (h *haveState) ownUnmet() partitionSet {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ownUnmetLocked()
}
