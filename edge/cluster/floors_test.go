package cluster

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

func floorTS(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: 7} }

// TestFloorTable: a partition's floor only rises and its receipts gather (one per key,
// each field at its latest); since tells each floor changed after a version, in the
// partitions asked about, in partition order; receipts beyond the bound leave the floor
// incomplete; prune forgets expired receipts.
func TestFloorTable(t *testing.T) {
	var ft floorTable
	if got, seq := ft.since(0, nil); got != nil || seq != 0 {
		t.Fatalf("empty table: %v, %d", got, seq)
	}
	a := Receipt{Key: "u/a", Stamps: []Stamp{{"x", floorTS(3)}, {"y", floorTS(9)}}}
	ft.raise(5, floorTS(10), []Receipt{a})
	ft.raise(2, floorTS(20), nil)
	all, seq := ft.since(0, nil)
	if len(all) != 2 || all[0].Partition != 2 || all[1].Partition != 5 || all[1].TS != floorTS(10) || !all[1].Complete || len(all[1].Receipts) != 1 {
		t.Fatalf("since(0) = %+v", all)
	}
	// A later drop of the same key, with a newer x, and of another key; a lower floor.
	ft.raise(5, floorTS(8), []Receipt{{Key: "u/a", Stamps: []Stamp{{"x", floorTS(6)}}}, {Key: "s/b", Expires: 50}})
	got, _ := ft.since(seq, nil)
	if len(got) != 1 || got[0].TS != floorTS(10) || len(got[0].Receipts) != 2 {
		t.Fatalf("since(%d) = %+v", seq, got)
	}
	if rc := got[0].Receipts[1]; rc.Key != "u/a" || !slices.Equal(rc.Stamps, []Stamp{{"x", floorTS(6)}, {"y", floorTS(9)}}) {
		t.Errorf("merged receipt %+v", rc)
	}
	var held partitionSet
	held.add(2)
	if got, _ := ft.since(0, &held); len(got) != 1 || got[0].Partition != 2 {
		t.Errorf("since(0) of partition 2 = %+v", got)
	}
	ft.prune(60)
	if f := ft.all()[5]; len(f.Receipts) != 1 || f.Receipts[0].Key != "u/a" || !f.Complete {
		t.Errorf("after pruning what expired at 50: %+v", f)
	}
	// Too many receipts: the partition keeps its floor, without receipts.
	big := Receipt{Key: "u/big", Stamps: make([]Stamp, 1)}
	big.Stamps[0].Field = string(make([]byte, maxReceiptBytes))
	ft.raise(5, floorTS(30), []Receipt{big})
	if f := ft.all()[5]; f.Complete || f.Receipts != nil || f.TS != floorTS(30) {
		t.Errorf("after an overflow: %+v", f)
	}
	ft.raise(5, floorTS(31), []Receipt{a}) // stays incomplete
	if f := ft.all()[5]; f.Complete || f.Receipts != nil {
		t.Errorf("an incomplete floor gathered receipts again: %+v", f)
	}
}

// TestDropFloors: a dropped key raises a floor only if it carries a write of ours, in
// each of its homes, to the newest of ours in its group.
func TestDropFloors(t *testing.T) {
	mine, theirs := crdt.UserKey("mine"), crdt.UserKey("theirs")
	msg := storage.LogKey(crdt.ConversationID("alice", "bob"), crdt.EntryID{TS: floorTS(3)})
	own := map[string]bool{mine: true, msg: true}
	newest := map[string]crdt.Timestamp{ownGroup(mine): floorTS(5), ownGroup(theirs): floorTS(6), ownGroup(msg): floorTS(4)}
	got := dropFloors([]string{mine, theirs, msg}, own, newest)
	want := map[int]crdt.Timestamp{crdt.KeyHomes(mine).First(): floorTS(5)}
	for _, p := range crdt.KeyHomes(msg).Append(nil) {
		want[p] = maxTS(want[p], floorTS(4))
	}
	if !maps.Equal(got, want) {
		t.Errorf("dropFloors = %v, want %v", got, want)
	}
}

// TestReceipts: a receipt is held by a state with every field it names stamped at least
// as late, by a log entry's presence, and by anything once it expired.
func TestReceipts(t *testing.T) {
	var m crdt.Map
	m.Set("x", []byte("1"), floorTS(3))
	m.Set("y", []byte("2"), floorTS(5))
	c := storage.Change{Key: "u/a", Map: m}
	rc := receiptOf(c)
	if rc.Key != "u/a" || rc.Expires != 0 || len(rc.Stamps) != 2 {
		t.Fatalf("receiptOf = %+v", rc)
	}
	newer := m.Clone()
	newer.Set("y", []byte("3"), floorTS(8))
	newer.Set("z", []byte("4"), floorTS(9))
	older := crdt.Map{}
	older.Set("x", []byte("1"), floorTS(3))
	older.Set("y", []byte("0"), floorTS(4))
	for name, tc := range map[string]struct {
		c     storage.Change
		found bool
		want  bool
	}{
		"same":          {c, true, true},
		"newer":         {storage.Change{Key: "u/a", Map: newer}, true, true},
		"older field":   {storage.Change{Key: "u/a", Map: older}, true, false},
		"missing field": {storage.Change{Key: "u/a", Map: crdt.Map{}}, true, false},
		"absent":        {storage.Change{}, false, false},
	} {
		if got := rc.heldBy(tc.c, tc.found, 100); got != tc.want {
			t.Errorf("%s: heldBy = %v, want %v", name, got, tc.want)
		}
	}
	rc.Expires = 50
	if !rc.heldBy(storage.Change{}, false, 100) || rc.heldBy(storage.Change{}, false, 40) {
		t.Errorf("an expired receipt: held when absent %v at 100 (want true), %v at 40 (want false)",
			rc.heldBy(storage.Change{}, false, 100), rc.heldBy(storage.Change{}, false, 40))
	}
	entry := Receipt{Key: storage.LogKey(crdt.ConversationID("a", "b"), crdt.EntryID{TS: floorTS(2)})}
	if !entry.heldBy(storage.Change{Key: entry.Key, Conv: "a b"}, true, 100) || entry.heldBy(storage.Change{}, false, 100) {
		t.Errorf("a log entry's receipt is not held by its presence alone")
	}
}

// TestHaveFloors: a floor kept stops that origin's Throughs from vouching in its
// partition, which counts as gained, until something else teaches the node it meets the
// floor there; the other partitions count as before; a floor already met is not kept;
// and a round that teaches the base does not let the base vouch below a floor kept.
func TestHaveFloors(t *testing.T) {
	const origin, self, peer = crdt.NodeID(1), crdt.NodeID(2), crdt.NodeID(3)
	at := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: origin} }
	var held partitionSet
	for _, p := range []int{1, 2, 3} {
		held.add(p)
	}
	var h haveState
	h.init()
	h.self = self
	h.replan(100, nil, &held) // held, not gained: the base is about them
	era := h.currentEra()
	bookmark := func(ts crdt.Timestamp) crdt.Bookmark {
		var b crdt.Bookmark
		b.Add(ts)
		return b
	}
	covers := func(ts crdt.Timestamp, p int) bool {
		m, _ := h.missing(bookmark(ts), self, p)
		return len(m) == 0
	}

	h.pushed(at(10), 100, nil, era, []Floor{{Partition: 2, TS: at(5)}, {Partition: 9, TS: at(5)}})
	if !covers(at(10), 1) || !covers(at(10), 3) {
		t.Errorf("the Through does not count in the partitions without a floor")
	}
	if covers(at(4), 2) || covers(at(10), 2) || covers(at(4), AllPartitions) {
		t.Errorf("the Through vouches for partition 2, under a floor not known met")
	}
	if _, g := h.base(); !g.has(2) || g.has(1) {
		t.Errorf("the base is about partition 2, or not about 1")
	}
	h.pushed(at(20), 100, nil, era, nil) // told once: the floor stays until met
	if covers(at(4), 2) || !covers(at(20), 1) {
		t.Errorf("a later Through: covers partition 2 %v (want false), partition 1 %v (want true)", covers(at(4), 2), covers(at(20), 1))
	}
	// A round that teaches the base about everything but the origin's writes there: the
	// base must not vouch below the floor.
	all := fullSet()
	var base crdt.Bookmark
	base.Add(at(1))
	h.synced(peer, 0, era, base, self, 100, roundScope{all: true, compared: &all, full: &all})
	h.pushed(at(25), 100, nil, era, nil)
	if covers(at(4), 2) {
		t.Errorf("after a round taught the base, it vouches below the floor")
	}

	// A round with a peer that knows it holds the origin's writes in partition 2 up to 6.
	var two partitionSet
	two.add(2)
	h.synced(peer, 0, era, bookmark(at(6)), self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if !covers(at(6), 2) {
		t.Fatalf("the round's lesson does not count")
	}
	h.pushed(at(30), 100, nil, era, nil)
	if !covers(at(30), 2) || !covers(at(30), AllPartitions) {
		t.Errorf("the floor is met, yet the Through does not count everywhere")
	}
	// A floor known met when told is not kept.
	h.pushed(at(40), 100, nil, era, []Floor{{Partition: 3, TS: at(25)}})
	if !covers(at(40), 3) {
		t.Errorf("a floor already met stops the Through")
	}
	// Floors stamped by another node than the origin are not kept.
	h.pushed(at(50), 100, nil, era, []Floor{{Partition: 1, TS: crdt.Timestamp{Wall: 45, Node: peer}}})
	if !covers(at(50), 1) {
		t.Errorf("a floor stamped by another node than the origin stops its Through")
	}
	if len(h.floors) != 0 {
		t.Errorf("floors kept: %v", h.floors)
	}
	// A floor the receipts show met (Replicator.recheckFloors) is forgotten.
	h.pushed(at(60), 100, nil, era, []Floor{{Partition: 1, TS: at(55), Complete: true}})
	if covers(at(60), 1) {
		t.Fatalf("a floor kept does not stop the Through")
	}
	kept := h.keptFloors(nil)
	h.metFloors(kept, nil)
	h.pushed(at(70), 100, nil, era, nil)
	if !covers(at(70), 1) {
		t.Errorf("a floor met by its receipts still stops the Through")
	}
}

// TestOwnFloors: in a partition it holds again after dropping keys of it that carried
// writes of its own, a node vouches for its writes only above its floor there, until a
// round with a peer that holds them, or its own data (recheckFloors), meets it; the base
// it tells peers is not about the partition meanwhile.
func TestOwnFloors(t *testing.T) {
	const self, peer = crdt.NodeID(7), crdt.NodeID(2)
	var held partitionSet
	held.add(1)
	held.add(2)
	var h haveState
	h.init()
	h.self = self
	h.setOwnFloors(map[int]Floor{2: {Partition: 2, TS: floorTS(10)}, 3: {Partition: 3, TS: floorTS(10)}})
	h.replan(100, []int{1, 2}, &held) // 3 not held
	own := func(n int64, p int) bool {
		var b crdt.Bookmark
		b.Add(floorTS(n))
		m, _ := h.missing(b, self, p)
		return len(m) == 0
	}
	for _, tc := range []struct {
		n    int64
		p    int
		want bool
	}{{5, 1, true}, {5, 2, false}, {10, 2, false}, {11, 2, true}, {5, 3, true}, {5, AllPartitions, false}, {11, AllPartitions, true}} {
		if got := own(tc.n, tc.p); got != tc.want {
			t.Errorf("own write %d in partition %d vouched %v, want %v", tc.n, tc.p, got, tc.want)
		}
	}
	if un := h.ownUnmet(self); !un.has(2) || un.has(1) {
		t.Errorf("own floors unmet: 2 %v (want true), 1 %v (want false)", un.has(2), un.has(1))
	}
	var two partitionSet
	two.add(2)
	var have crdt.Bookmark
	have.Add(floorTS(8))
	h.synced(peer, 0, h.currentEra(), have, self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if own(5, 2) {
		t.Errorf("a round that brought our writes up to 8 met the floor at 10")
	}
	have.Add(floorTS(12))
	h.synced(peer, 0, h.currentEra(), have, self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if !own(5, 2) || !own(5, AllPartitions) {
		t.Errorf("a round that brought our writes up to 12 did not meet the floor at 10")
	}
	// Given up and gained again, without a drop between: nothing to keep.
	var one partitionSet
	one.add(1)
	h.replan(101, nil, &one)
	h.replan(102, []int{2}, &held)
	if !own(5, 2) {
		t.Errorf("partition 2 gained again with no drop since its floor was met: own floor kept")
	}
	// Given up, dropped again (the floor rises), gained again: kept again, and met by
	// the data (recheckFloors).
	h.replan(103, nil, &one)
	h.setOwnFloors(map[int]Floor{2: {Partition: 2, TS: floorTS(20)}})
	h.replan(104, []int{2}, &held)
	if own(15, 2) || !own(21, 2) {
		t.Fatalf("partition 2 gained again after a drop: write 15 vouched %v (want false), 21 %v (want true)", own(15, 2), own(21, 2))
	}
	h.metFloors(h.keptFloors(nil), nil)
	if !own(15, 2) {
		t.Errorf("own floor met by the data still kept")
	}
	// A restart forgets what was met: every own floor of a partition held is kept until
	// checked.
	var fresh haveState
	fresh.init()
	fresh.self = self
	fresh.setOwnFloors(map[int]Floor{2: {Partition: 2, TS: floorTS(20)}})
	fresh.replan(100, nil, &held)
	if m, _ := fresh.missing(func() crdt.Bookmark { var b crdt.Bookmark; b.Add(floorTS(15)); return b }(), self, 2); len(m) == 0 {
		t.Errorf("after a restart, an own floor of a partition held is not kept")
	}
}

// TestPushFloorsWire: floors and receipts travel from version 6 on; version 5 carries
// none; floors out of order, repeated or out of range are refused.
func TestPushFloorsWire(t *testing.T) {
	ts := crdt.Timestamp{Wall: 5, Node: 1}
	floors := []Floor{
		{Partition: 3, TS: ts},
		{Partition: 7, TS: ts, Complete: true, Receipts: []Receipt{{Key: "u/a", Expires: -1, Stamps: []Stamp{{"x", ts}}}, {Key: "e/b"}}},
	}
	m := PushRequest{From: 1, Through: ts, Floors: floors}
	for _, v := range []uint8{5, 6} {
		m.Version = v
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got PushRequest
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		want := floors
		if v < 6 {
			want = nil
		}
		if !slices.EqualFunc(got.Floors, want, func(a, b Floor) bool {
			return a.Partition == b.Partition && a.TS == b.TS && a.Complete == b.Complete &&
				slices.EqualFunc(a.Receipts, b.Receipts, func(x, y Receipt) bool {
					return x.Key == y.Key && x.Expires == y.Expires && slices.Equal(x.Stamps, y.Stamps)
				})
		}) {
			t.Errorf("version %d: floors %+v, want %+v", v, got.Floors, want)
		}
	}
	for name, floors := range map[string][]Floor{
		"repeated":     {{Partition: 3, TS: ts}, {Partition: 3, TS: ts}},
		"out of order": {{Partition: 7, TS: ts}, {Partition: 3, TS: ts}},
		"out of range": {{Partition: crdt.Partitions, TS: ts}},
	} {
		b, err := PushRequest{Version: 6, From: 1, Through: ts, Floors: floors}.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got PushRequest
		if err := got.UnmarshalBinary(b); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: %v, want ErrInvalidMessage", name, err)
		}
	}
}

// TestFloorsEncode: the table survives encode and decode; bytes that are not a table
// are refused.
func TestFloorsEncode(t *testing.T) {
	var ft floorTable
	ft.raise(5, floorTS(10), []Receipt{{Key: "u/a", Stamps: []Stamp{{"x", floorTS(3)}}}})
	ft.raise(crdt.Partitions-1, floorTS(3), nil)
	big := Receipt{Key: "u/big", Stamps: []Stamp{{Field: string(make([]byte, maxReceiptBytes))}}}
	ft.raise(9, floorTS(4), []Receipt{big}) // incomplete
	b := ft.encode()
	got, err := decodeFloors(b)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ft.since(0, nil)
	have, _ := got.since(0, nil)
	if len(have) != len(want) {
		t.Fatalf("decoded %+v, want %+v", have, want)
	}
	for i := range want {
		if have[i].Partition != want[i].Partition || have[i].TS != want[i].TS || have[i].Complete != want[i].Complete || len(have[i].Receipts) != len(want[i].Receipts) {
			t.Errorf("floor %d: decoded %+v, want %+v", i, have[i], want[i])
		}
	}
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"unknown format": append([]byte{9}, b[1:]...),
		"truncated":      b[:len(b)-1],
		"trailing":       append(slices.Clone(b), 0),
	} {
		if _, err := decodeFloors(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestHaveFloorsBaseStaysOff: a floor kept keeps its partition out of the base even
// when a round teaches the base there, so the origin's later Throughs, which raise the
// base, do not vouch below the floor through it (found by an outside review: a floor
// noted with a push from another era, then a round, then a Through in the era).
func TestHaveFloorsBaseStaysOff(t *testing.T) {
	const origin, self, peer = crdt.NodeID(1), crdt.NodeID(2), crdt.NodeID(3)
	at := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: origin} }
	var held partitionSet
	held.add(2)
	var h haveState
	h.init()
	h.self = self
	h.replan(100, nil, &held)
	era := h.currentEra()
	h.pushed(at(10), 100, nil, era+1, []Floor{{Partition: 2, TS: at(5)}}) // another era: noted, nothing raised
	var two partitionSet
	two.add(2)
	var have crdt.Bookmark
	have.Add(crdt.Timestamp{Wall: 1, Node: peer})
	h.synced(peer, 0, era, have, self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	h.pushed(at(20), 100, nil, era, nil)
	var b crdt.Bookmark
	b.Add(at(5))
	if m, _ := h.missing(b, self, 2); len(m) == 0 {
		t.Errorf("the base vouches below a floor kept (floors %v)", h.floors)
	}
}
