package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
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
// that partition it dropped, with a receipt of each such key as it dropped it (its
// fields' timestamps; floorTable, raised and saved before the drop). A push that tells
// Through also tells the floors of the receiver's partitions that changed since the
// sender last told that receiver (all of them after the receiver's era changed: it may
// have forgotten them). The receiver checks the receipts against what it stores: if it
// holds what they describe, the floor is met at once. Otherwise it keeps the floor
// (haveState.noteFloorsLocked) and that sender's Throughs do not vouch in the partition,
// which counts as gained (the base, which Throughs raise, is not about it), until the
// floor is met: by the receipts, checked again whenever data arrives (recheckFloors: a
// round, a push, a handoff offer, Await's fetch all bring it), or by what another node
// teaches (a round with a peer that knows it holds the writes). Receipts are bounded
// (maxReceiptBytes); a floor whose receipts were left out (not Complete) is met only by
// teaching.
//
// The same floors bound what a node claims of its own writes: it vouches for them by its
// commit mark, but in a partition it holds again after such a drop, not for those up to
// its floor there until its own data holds what the receipts describe (or a round brings
// them back): it keeps its own floor as if told by itself.
//
// The table is saved (Store.SaveReplicationState) before each drop that raises it, and
// read again on start.

// maxReceiptBytes bounds the receipts a floor table keeps, about their encoded size:
// beyond it, the partition whose drop overflowed keeps its floor without receipts.
const maxReceiptBytes = 256 << 10

// floorTable is this node's floors, by partition. Safe for concurrent use.
type floorTable struct {
	mu    sync.Mutex
	seq   uint64 // raised by every change: the version of the latest
	at    map[int]*partitionFloor
	bytes int // the receipts' size, about
}

// partitionFloor is one partition's floor: the newest write of ours among the keys of
// the partition we dropped, and receipts of those keys, all of them if complete.
type partitionFloor struct {
	ts       crdt.Timestamp
	seq      uint64 // the table's version when it last changed
	complete bool
	receipts map[string]Receipt
}

// receiptSize is about the encoded size of rc.
func receiptSize(rc Receipt) int {
	n := len(rc.Key) + 10
	for _, st := range rc.Stamps {
		n += len(st.Field) + 1 + crdt.TimestampSize
	}
	return n
}

// raise records a drop, in partition p, of keys whose newest write of ours is ts, which
// receipts describe.
func (t *floorTable) raise(p int, ts crdt.Timestamp, receipts []Receipt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.at == nil {
		t.at = make(map[int]*partitionFloor)
	}
	f := t.at[p]
	if f == nil {
		f = &partitionFloor{complete: true}
		t.at[p] = f
	}
	f.ts = maxTS(f.ts, ts)
	for _, rc := range receipts {
		if !f.complete {
			break
		}
		if old, ok := f.receipts[rc.Key]; ok {
			t.bytes -= receiptSize(old)
			rc = mergeReceipts(old, rc)
		}
		if t.bytes+receiptSize(rc) > maxReceiptBytes {
			for _, old := range f.receipts {
				t.bytes -= receiptSize(old)
			}
			f.receipts, f.complete = nil, false
			break
		}
		if f.receipts == nil {
			f.receipts = make(map[string]Receipt)
		}
		f.receipts[rc.Key] = rc
		t.bytes += receiptSize(rc)
	}
	t.seq++
	f.seq = t.seq
}

// mergeReceipts returns a receipt that describes both a and b, of one key.
func mergeReceipts(a, b Receipt) Receipt {
	out := Receipt{Key: a.Key, Expires: max(a.Expires, b.Expires)}
	if a.Expires == 0 || b.Expires == 0 {
		out.Expires = 0
	}
	at := make(map[string]crdt.Timestamp, len(a.Stamps)+len(b.Stamps))
	for _, st := range slices.Concat(a.Stamps, b.Stamps) {
		at[st.Field] = maxTS(at[st.Field], st.TS)
	}
	for field, ts := range at {
		out.Stamps = append(out.Stamps, Stamp{Field: field, TS: ts})
	}
	slices.SortFunc(out.Stamps, func(x, y Stamp) int { return strings.Compare(x.Field, y.Field) })
	return out
}

// prune forgets the receipts of keys expired before limit (Unix nanoseconds): every
// node deletes those, so no receiver needs to hold them.
func (t *floorTable) prune(limit int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range t.at {
		for key, rc := range f.receipts {
			if rc.Expires != 0 && rc.Expires < limit {
				t.bytes -= receiptSize(rc)
				delete(f.receipts, key)
			}
		}
	}
}

// floor returns p's floor as told (receipts sorted by key).
func (f *partitionFloor) floor(p int) Floor {
	fl := Floor{Partition: p, TS: f.ts, Complete: f.complete}
	for _, rc := range f.receipts {
		fl.Receipts = append(fl.Receipts, rc)
	}
	slices.SortFunc(fl.Receipts, func(a, b Receipt) int { return strings.Compare(a.Key, b.Key) })
	return fl
}

// since returns, sorted by partition, the floors that changed after version seq in the
// partitions of held (nil: every partition), and the table's version.
func (t *floorTable) since(seq uint64, held *partitionSet) ([]Floor, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Floor
	for p, f := range t.at {
		if f.seq > seq && (held == nil || held.has(p)) {
			out = append(out, f.floor(p))
		}
	}
	slices.SortFunc(out, func(a, b Floor) int { return a.Partition - b.Partition })
	return out, t.seq
}

// all returns every floor, by partition.
func (t *floorTable) all() map[int]Floor {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]Floor, len(t.at))
	for p, f := range t.at {
		out[p] = f.floor(p)
	}
	return out
}

// dropFloors returns, by partition, the newest write of this node's own that a drop of
// keys drops there: for each key that carries one (own; newest: its timestamp, by the
// key's group, see ownGroup), in each of the key's partitions.
func dropFloors(keys []string, own map[string]bool, newest map[string]crdt.Timestamp) map[int]crdt.Timestamp {
	out := make(map[int]crdt.Timestamp)
	for _, key := range keys {
		if !own[key] {
			continue
		}
		ts := newest[ownGroup(key)]
		for _, p := range crdt.KeyHomes(key).Append(nil) {
			out[p] = maxTS(out[p], ts)
		}
	}
	return out
}

// receiptOf returns the receipt of c, a key's state as stored.
func receiptOf(c storage.Change) Receipt {
	if c.Conv != "" {
		return Receipt{Key: c.Key} // a log entry: its key names it
	}
	rc := Receipt{Key: c.Key}
	switch {
	case strings.HasPrefix(c.Key, crdt.SessionPrefix):
		rc.Expires = crdt.SessionExpires(&c.Map).UnixNano()
	case strings.HasPrefix(c.Key, crdt.KVPrefix):
		rc.Expires = crdt.KVKeepNanos(&c.Map)
	}
	for _, name := range c.Map.Names() {
		f, _ := c.Map.Field(name)
		rc.Stamps = append(rc.Stamps, Stamp{Field: name, TS: f.TS})
	}
	return rc
}

// heldBy reports whether c, the state stored of rc's key (found: whether any is), holds
// what rc describes, now (Unix nanoseconds).
func (rc Receipt) heldBy(c storage.Change, found bool, now int64) bool {
	if rc.Expires != 0 && rc.Expires < now {
		return true // expired: deleted everywhere, held or not
	}
	if !found {
		return false
	}
	if c.Conv != "" {
		return true // the entry itself
	}
	for _, st := range rc.Stamps {
		f, ok := c.Map.Field(st.Field)
		if !ok || f.TS.Less(st.TS) {
			return false
		}
	}
	return true
}

// raiseFloors raises this node's floors for a drop of keys (own: those that carry a
// write of ours; newest: those writes' timestamps, by group), with receipts of the keys
// as stored now, saves the table, and makes its own floors known to haveState. It must
// succeed before the drop.
func (r *Replicator) raiseFloors(ctx context.Context, drop []storage.KeyHash, own map[string]bool, newest map[string]crdt.Timestamp) error {
	var names, mine []string
	for _, kh := range drop {
		names = append(names, kh.Key)
		if own[kh.Key] {
			mine = append(mine, kh.Key)
		}
	}
	raised := dropFloors(names, own, newest)
	if len(raised) == 0 {
		return nil
	}
	changes, err := r.cfg.DB.Changes(ctx, mine)
	if err != nil {
		return fmt.Errorf("receipts: %w", err)
	}
	receipts := make(map[int][]Receipt)
	for _, c := range changes {
		rc := receiptOf(c)
		for _, p := range crdt.KeyHomes(c.Key).Append(nil) {
			receipts[p] = append(receipts[p], rc)
		}
	}
	r.floors.prune(r.cfg.Now().Add(-r.cfg.MaxSkew).UnixNano())
	for p, ts := range raised {
		r.floors.raise(p, ts, receipts[p])
	}
	r.have.setOwnFloors(r.floors.all())
	if err := r.cfg.DB.SaveReplicationState(ctx, r.floors.encode()); err != nil {
		return fmt.Errorf("save floors: %w", err)
	}
	return nil
}

// checkFloors returns those of floors that what this node stores does not show it
// holds: floors without complete receipts, and those with a receipt it does not hold.
func (r *Replicator) checkFloors(ctx context.Context, floors []Floor) []Floor {
	var keys []string
	for _, f := range floors {
		if f.Complete {
			for _, rc := range f.Receipts {
				keys = append(keys, rc.Key)
			}
		}
	}
	stored := make(map[string]storage.Change)
	if len(keys) > 0 {
		changes, err := r.cfg.DB.Changes(ctx, keys)
		if err != nil {
			return floors // cannot tell: all kept
		}
		for _, c := range changes {
			stored[c.Key] = c
		}
	}
	now := r.cfg.Now().UnixNano()
	var out []Floor
	for _, f := range floors {
		met := f.Complete
		for _, rc := range f.Receipts {
			if !met {
				break
			}
			c, ok := stored[rc.Key]
			met = rc.heldBy(c, ok, now)
		}
		if !met {
			out = append(out, f)
		}
	}
	return out
}

// recheckFloors checks the floors kept (told by other nodes, and our own) in the
// partitions of parts (nil: all) against what this node stores now, and forgets those it
// meets. Each completed round, and each push that brought changes, calls it.
func (r *Replicator) recheckFloors(ctx context.Context, parts *partitionSet) {
	kept := r.have.keptFloors(parts)
	if len(kept) == 0 {
		return
	}
	unmet := make(map[crdt.NodeID]map[int]bool)
	for origin, fs := range kept {
		for _, f := range r.checkFloors(ctx, fs) {
			if unmet[origin] == nil {
				unmet[origin] = make(map[int]bool)
			}
			unmet[origin][f.Partition] = true
		}
	}
	r.have.metFloors(kept, unmet)
}

// floorsFormat is the first byte of the floor table's encoding (encode).
const floorsFormat = 2

// encode returns the table for storage (Store.SaveReplicationState): its format, then
// the floors as a push tells them.
func (t *floorTable) encode() []byte {
	floors, _ := t.since(0, nil)
	m := PushRequest{Version: ProtocolVersion, Floors: floors}
	b, err := m.MarshalBinary()
	if err != nil {
		panic(err) // ProtocolVersion always encodes
	}
	return append([]byte{floorsFormat}, b...)
}

// decodeFloors returns the table encode wrote, every floor changed after version 0.
func decodeFloors(b []byte) (*floorTable, error) {
	if len(b) == 0 || b[0] != floorsFormat {
		return nil, fmt.Errorf("floor table of an unknown format")
	}
	var m PushRequest
	if err := m.UnmarshalBinary(b[1:]); err != nil {
		return nil, fmt.Errorf("floor table: %w", err)
	}
	t := &floorTable{}
	for _, f := range m.Floors {
		t.raise(f.Partition, f.TS, f.Receipts)
		if !f.Complete {
			t.at[f.Partition].complete = false
			t.at[f.Partition].receipts = nil
		}
	}
	return t, nil
}

// loadFloors reads the floors saved before a restart. A table that does not decode
// counts, cautiously, as a floor at the commit mark in every partition, without
// receipts.
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
		t = &floorTable{}
		for p := range crdt.Partitions {
			t.raise(p, now, nil)
			t.at[p].complete = false
		}
	}
	r.floors.mu.Lock()
	r.floors.seq, r.floors.at, r.floors.bytes = t.seq, t.at, t.bytes
	r.floors.mu.Unlock()
	r.have.setOwnFloors(r.floors.all())
}

// floorsFor returns the floors to tell the worker's peer with a Through: those of the
// partitions it holds by v changed since it was last told, or all of them if its era
// changed since, and the version of the table they come from. A peer that speaks no
// version with floors is told none.
func (r *Replicator) floorsFor(w *worker, v *view) ([]Floor, uint64) {
	seq := w.floorsSent
	if w.floorsEra != w.peerEra {
		seq = 0
	}
	var held *partitionSet
	if v.sharded() {
		held = v.held(w.peer.ID)
	}
	floors, now := r.floors.since(seq, held)
	if w.peer.Proto != 0 && w.peer.Proto < 6 {
		return nil, now
	}
	return floors, now
}

// The receiver's side: haveState.floors, by origin (ours among them, for our own
// floors), the floors it does not know it meets. Sharded only: not sharded, every node
// is pushed every write, and none drops any.

// noteFloorsLocked keeps those of origin's floors, in partitions this node holds, that
// it does not already know it meets (the caller checked the receipts: checkFloors), and
// stops the base from speaking for their partitions.
func (h *haveState) noteFloorsLocked(origin crdt.NodeID, floors []Floor) {
	if h.held == nil {
		return
	}
	for _, f := range floors {
		if f.TS.Node != origin || !h.held.has(f.Partition) || h.coversLocked(f.TS, f.Partition) {
			continue
		}
		h.keepFloorLocked(origin, f)
	}
}

// keepFloorLocked keeps floor f of origin, raising one kept before, and marks its
// partition gained.
func (h *haveState) keepFloorLocked(origin crdt.NodeID, f Floor) {
	if h.floors == nil {
		h.floors = make(map[crdt.NodeID]map[int]Floor)
	}
	m := h.floors[origin]
	if m == nil {
		m = make(map[int]Floor)
		h.floors[origin] = m
	}
	if old, ok := m[f.Partition]; ok && !old.TS.Less(f.TS) {
		return
	}
	m[f.Partition] = f
	h.gained.add(f.Partition)
	h.anyGained = true
}

// keepOwnFloorsLocked keeps our own floors (ownAll) in the partitions we hold that no
// check met yet (ownMet): we may lack the writes of ours we dropped there. A drop raises
// floors only in partitions not held, so a partition held with a floor not met is one
// we dropped keys of and hold again — or, after a restart, one not checked since.
func (h *haveState) keepOwnFloorsLocked() {
	if h.held == nil {
		return
	}
	for p, f := range h.ownAll {
		if h.held.has(p) && h.ownMet[p].Less(f.TS) {
			h.keepFloorLocked(h.self, f)
		}
	}
}

// setOwnFloors records this node's floors (floorTable.all), which it keeps as its own
// in a partition it gains (regainFloorsLocked): a drop raises floors only in partitions
// not held.
func (h *haveState) setOwnFloors(all map[int]Floor) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ownAll = all
	h.keepOwnFloorsLocked()
}

// forgetFloorLocked forgets origin's floor in partition p, met; our own is remembered
// met (ownMet) until it rises.
func (h *haveState) forgetFloorLocked(origin crdt.NodeID, p int) {
	m := h.floors[origin]
	if f, ok := m[p]; ok && origin == h.self {
		if h.ownMet == nil {
			h.ownMet = make(map[int]crdt.Timestamp)
		}
		h.ownMet[p] = maxTS(h.ownMet[p], f.TS)
	}
	delete(m, p)
	if len(m) == 0 {
		delete(h.floors, origin)
	}
}

// ownUnmet returns the partitions where we keep a floor of our own.
func (h *haveState) ownUnmet(self crdt.NodeID) partitionSet {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ownUnmetLocked(self)
}

// keepFlooredGainedLocked marks gained every partition with a floor kept: a round that
// taught the base there must not let the base vouch below the floor.
func (h *haveState) keepFlooredGainedLocked() {
	for _, m := range h.floors {
		for p := range m {
			h.gained.add(p)
			h.anyGained = true
		}
	}
}

// fullSet returns the set of every partition.
func fullSet() partitionSet {
	var s partitionSet
	for i := range s {
		s[i] = ^uint64(0)
	}
	return s
}

// belowFloorLocked reports whether origin has a floor in partition p not known met: its
// Throughs do not vouch there.
func (h *haveState) belowFloorLocked(origin crdt.NodeID, p int) bool {
	_, ok := h.floors[origin][p]
	return ok
}

// ownBelowLocked reports whether this node (self) may lack its own write ts in partition
// p (AllPartitions: in some partition it holds).
func (h *haveState) ownBelowLocked(self crdt.NodeID, ts crdt.Timestamp, p int) bool {
	m := h.floors[self]
	if len(m) == 0 {
		return false
	}
	if p != AllPartitions {
		f, ok := m[p]
		return ok && !f.TS.Less(ts)
	}
	for _, f := range m {
		if !f.TS.Less(ts) {
			return true
		}
	}
	return false
}

// ownUnmetLocked returns the partitions where we keep a floor of our own.
func (h *haveState) ownUnmetLocked(self crdt.NodeID) partitionSet {
	var out partitionSet
	for p := range h.floors[self] {
		out.add(p)
	}
	return out
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

// meetFloorsLocked forgets the floors now known met by what rounds and Throughs taught,
// those of partitions no longer held (a partition gained again starts a new era, and
// its origins tell their floors anew), and, for our own, those a round brought back
// (have, the peer's, about the partitions of about; nil: none).
func (h *haveState) meetFloorsLocked(self crdt.NodeID, have crdt.Bookmark, about *partitionSet) {
	if h.held == nil {
		h.floors = nil // not sharded any more
		return
	}
	for origin, m := range h.floors {
		for p, f := range m {
			switch {
			case !h.held.has(p):
				delete(m, p) // not met: told again, or kept again, if held again
				continue
			case origin == self:
				if about == nil || !about.has(p) || have.Mark(self).Less(f.TS) {
					continue
				}
			case !h.coversLocked(f.TS, p):
				continue
			}
			h.forgetFloorLocked(origin, p)
		}
		if len(m) == 0 {
			delete(h.floors, origin)
		}
	}
}

// keptFloors returns the floors kept in the partitions of parts (nil: all), by origin.
func (h *haveState) keptFloors(parts *partitionSet) map[crdt.NodeID][]Floor {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.floors) == 0 {
		return nil
	}
	out := make(map[crdt.NodeID][]Floor, len(h.floors))
	for origin, m := range h.floors {
		for p, f := range m {
			if parts == nil || parts.has(p) {
				out[origin] = append(out[origin], f)
			}
		}
	}
	return out
}

// metFloors forgets the floors of checked, by origin, that the check found met (not in
// unmet) and that were not raised since.
func (h *haveState) metFloors(checked map[crdt.NodeID][]Floor, unmet map[crdt.NodeID]map[int]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for origin, fs := range checked {
		for _, f := range fs {
			if cur, ok := h.floors[origin][f.Partition]; ok && !unmet[origin][f.Partition] && cur.TS == f.TS {
				h.forgetFloorLocked(origin, f.Partition)
			}
		}
	}
	h.wakeLocked()
}

// clampFloors returns floors with each timestamp clamped like a Through (Replicator.clamp).
func (r *Replicator) clampFloors(floors []Floor) []Floor {
	for i := range floors {
		floors[i].TS = r.clamp(floors[i].TS)
	}
	return floors
}
