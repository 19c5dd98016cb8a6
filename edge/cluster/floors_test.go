package cluster

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// TestFloorTable: a partition's floor only rises; a holder that confirmed the drops
// under one keep token is told, beside the floor, the floor for it while its token is
// unchanged; since tells each floor changed after a version, in the partitions asked
// about, in partition order.
func TestFloorTable(t *testing.T) {
	ts := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: 7} }
	const a, b, c = crdt.NodeID(1), crdt.NodeID(2), crdt.NodeID(3)
	var ft floorTable
	if got, seq := ft.since(0, nil, a); got != nil || seq != 0 {
		t.Fatalf("empty table: %v, %d", got, seq)
	}
	ft.raise(5, ts(10), map[crdt.NodeID]uint64{a: 100, b: 200})
	ft.raise(2, ts(20), nil)
	all, seq := ft.since(0, nil, a)
	if want := []Floor{{2, ts(20), 0, crdt.Timestamp{}}, {5, ts(10), 100, crdt.Timestamp{}}}; !slices.Equal(all, want) {
		t.Fatalf("since(0) for a = %v, want %v", all, want)
	}
	for keep, want := range map[uint64]crdt.Timestamp{100: {}, 101: ts(10), 0: ts(10)} {
		if got := all[1].For(keep); got != want {
			t.Errorf("partition 5's floor for a with token %d = %v, want %v", keep, got, want)
		}
	}
	// A second drop in 5: a confirms it under the same token, b under another, c
	// (which confirmed nothing before) too.
	ft.raise(5, ts(15), map[crdt.NodeID]uint64{a: 100, b: 201, c: 300})
	got, _ := ft.since(seq, nil, a)
	if want := []Floor{{5, ts(15), 100, crdt.Timestamp{}}}; !slices.Equal(got, want) {
		t.Errorf("since(%d) for a = %v, want %v", seq, got, want)
	}
	for node, want := range map[crdt.NodeID]Floor{
		b: {5, ts(15), 201, ts(10)}, // its token changed: what it confirmed before does not count
		c: {5, ts(15), 300, ts(10)},
	} {
		if got, _ := ft.since(seq, nil, node); !slices.Equal(got, []Floor{want}) {
			t.Errorf("since(%d) for %v = %v, want %v", seq, node, got, want)
		}
	}
	// A third drop that a does not confirm: its exemption is worth nothing any more.
	seq2 := seq
	_, seq = ft.since(0, nil, a)
	ft.raise(5, ts(30), map[crdt.NodeID]uint64{b: 201})
	got, _ = ft.since(seq, nil, a)
	if want := []Floor{{5, ts(30), 0, crdt.Timestamp{}}}; !slices.Equal(got, want) {
		t.Errorf("after a drop a did not confirm: %v, want %v", got, want)
	}
	got, _ = ft.since(seq, nil, b)
	if want := []Floor{{5, ts(30), 201, ts(10)}}; !slices.Equal(got, want) {
		t.Errorf("b, which confirmed it: %v, want %v", got, want)
	}
	ft.raise(5, ts(25), nil) // lower than the floor: it stays
	got, _ = ft.since(seq2, nil, c)
	if len(got) != 1 || got[0].TS != ts(30) {
		t.Errorf("floor of 5 after a lower drop: %v, want %v", got, ts(30))
	}
	var held partitionSet
	held.add(2)
	got, _ = ft.since(0, &held, a)
	if len(got) != 1 || got[0].Partition != 2 {
		t.Errorf("since(0) of partition 2 = %v", got)
	}
}

// TestDropFloors: a dropped key raises a floor only if it carries a write of ours, in
// each of its homes, to the newest of ours in its group; a holder counts as confirming a
// partition's drop only if it confirmed every key of it, under one token.
func TestDropFloors(t *testing.T) {
	ts := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: 7} }
	mine, theirs := crdt.UserKey("mine"), crdt.UserKey("theirs")
	msg := storage.LogKey(crdt.ConversationID("alice", "bob"), crdt.EntryID{TS: ts(3)})
	own := map[string]bool{mine: true, msg: true}
	newest := map[string]crdt.Timestamp{ownGroup(mine): ts(5), ownGroup(theirs): ts(6), ownGroup(msg): ts(4)}
	confirmed := map[string]map[crdt.NodeID]uint64{mine: {1: 10, 2: 20}, msg: {1: 10, 2: 21}}
	got := dropFloors([]string{mine, theirs, msg}, own, newest, confirmed)
	want := map[int]droppedIn{crdt.KeyHomes(mine).First(): {ts(5), map[crdt.NodeID]uint64{1: 10, 2: 20}}}
	for _, p := range crdt.KeyHomes(msg).Append(nil) {
		if d, ok := want[p]; ok { // both in one partition: the newest, and who confirmed both alike
			want[p] = droppedIn{maxTS(d.ts, ts(4)), map[crdt.NodeID]uint64{1: 10}}
		} else {
			want[p] = droppedIn{ts(4), map[crdt.NodeID]uint64{1: 10, 2: 21}}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("dropFloors = %v, want %v", got, want)
	}
	for p, w := range want {
		if got[p].ts != w.ts || !maps.Equal(got[p].by, w.by) {
			t.Errorf("partition %#x: %v, want %v", p, got[p], w)
		}
	}
}

// TestHaveFloors: a floor told with a Through keeps that origin's Throughs from vouching
// for its partition until something else teaches the node it meets the floor there; the
// other partitions count as before, and a floor already met is not kept.
func TestHaveFloors(t *testing.T) {
	const origin, self, peer = crdt.NodeID(1), crdt.NodeID(2), crdt.NodeID(3)
	at := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: origin} }
	var held partitionSet
	for _, p := range []int{1, 2, 3} {
		held.add(p)
	}
	var h haveState
	h.init()
	h.replan(100, []int{1, 2, 3}, &held) // every partition gained (a node that joined)
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

	h.pushed(at(10), 100, nil, era, []Floor{{Partition: 2, TS: at(5)}, {Partition: 9, TS: at(5)}}, 1)
	if !covers(at(10), 1) || !covers(at(10), 3) {
		t.Errorf("the Through does not count in the partitions without a floor")
	}
	if covers(at(4), 2) || covers(at(10), 2) || covers(at(4), AllPartitions) {
		t.Errorf("the Through vouches for partition 2, under a floor not known met")
	}
	h.pushed(at(20), 100, nil, era, nil, 1) // told once: the floor stays until met
	if covers(at(4), 2) || !covers(at(20), 1) {
		t.Errorf("a later Through: covers partition 2 %v (want false), partition 1 %v (want true)",
			covers(at(4), 2), covers(at(20), 1))
	}

	// A round with a peer that knows it holds the origin's writes in partition 2 up to 6.
	var two partitionSet
	two.add(2)
	h.synced(peer, 0, era, bookmark(at(6)), self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if !covers(at(6), 2) {
		t.Fatalf("the round's lesson does not count")
	}
	h.pushed(at(30), 100, nil, era, nil, 1)
	if !covers(at(30), 2) || !covers(at(30), AllPartitions) {
		t.Errorf("the floor is met, yet the Through does not count everywhere")
	}
	// A floor known met when told is not kept.
	h.pushed(at(40), 100, nil, era, []Floor{{Partition: 3, TS: at(25)}}, 1)
	if !covers(at(40), 3) {
		t.Errorf("a floor already met stops the Through")
	}
	// Floors of another origin, or in a partition not held, are not kept.
	h.pushed(at(50), 100, nil, era, []Floor{{Partition: 1, TS: crdt.Timestamp{Wall: 45, Node: peer}}}, 1)
	// A floor for a keep token that is ours, which exempts us, is not kept.
	h.pushed(at(60), 100, nil, era, []Floor{{Partition: 1, TS: at(55), Keep: 1}}, 1)
	if !covers(at(60), 1) {
		t.Errorf("a floor that exempts our keep token stops the Through")
	}
	if !covers(at(50), 1) {
		t.Errorf("a floor stamped by another node than the origin stops its Through")
	}
	if len(h.floors) != 0 {
		t.Errorf("floors kept: %v", h.floors)
	}
}

// TestPushFloorsWire: floors travel from version 6 on; version 5 carries none; floors
// out of order, repeated or out of range are refused.
func TestPushFloorsWire(t *testing.T) {
	ts := crdt.Timestamp{Wall: 5, Node: 1}
	m := PushRequest{From: 1, Through: ts, Floors: []Floor{{3, ts, 0, crdt.Timestamp{}}, {7, ts, 9, ts}}}
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
		if want := v >= 6; (len(got.Floors) == 2) != want || !want && got.Floors != nil {
			t.Errorf("version %d: floors %v", v, got.Floors)
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

// TestFloorsEncode: the table survives encode and decode, every floor told anew; bytes
// that are not a table are refused.
func TestFloorsEncode(t *testing.T) {
	ts := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: 7} }
	var ft floorTable
	ft.raise(5, ts(10), map[crdt.NodeID]uint64{1: 100, 2: 200})
	ft.raise(5, ts(15), map[crdt.NodeID]uint64{1: 100})
	ft.raise(crdt.Partitions-1, ts(3), nil)
	b := ft.encode()
	got, err := decodeFloors(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, peer := range []crdt.NodeID{1, 2, 3} {
		want, _ := ft.since(0, nil, peer)
		have, _ := got.since(0, nil, peer)
		if !slices.Equal(have, want) {
			t.Errorf("for %v: decoded %v, want %v", peer, have, want)
		}
	}
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"unknown format": append([]byte{9}, b[1:]...),
		"truncated":      b[:len(b)-1],
		"trailing":       append(slices.Clone(b), 0),
		"twice":          append(append([]byte{floorsFormat, 4}, b[2:]...), b[2:]...),
	} {
		if _, err := decodeFloors(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestOwnFloors: in a partition held where this node dropped writes of its own (its own
// floor), it vouches for its writes only above the floor, or up to what a round with a
// peer that holds them brought back; the base it tells peers is not about the partition
// meanwhile.
func TestOwnFloors(t *testing.T) {
	const self, peer = crdt.NodeID(1), crdt.NodeID(2)
	at := func(n int64) crdt.Timestamp { return crdt.Timestamp{Wall: n, Node: self} }
	var held partitionSet
	held.add(1)
	held.add(2)
	var h haveState
	h.init()
	h.replan(100, nil, &held)                                    // held, not gained: the base is about both
	h.setOwnFloors(map[int]crdt.Timestamp{2: at(10), 3: at(10)}) // 3: not held
	own := func(n int64, p int) bool {
		var b crdt.Bookmark
		b.Add(at(n))
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
	if _, g := h.base(); !g.has(2) || g.has(1) {
		t.Errorf("the base is about partition 2 (%v) or not about 1 (%v)", !g.has(2), g.has(1))
	}
	// A round with a peer that holds our writes up to 8 in partition 2: not enough.
	var two partitionSet
	two.add(2)
	var have crdt.Bookmark
	have.Add(at(8))
	h.synced(peer, 0, h.currentEra(), have, self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if own(5, 2) {
		t.Errorf("a round that brought our writes up to 8 met the floor at 10")
	}
	have.Add(at(12))
	h.synced(peer, 0, h.currentEra(), have, self, 100, roundScope{compared: &two, full: &two, peerHeld: &held})
	if !own(5, 2) || !own(5, AllPartitions) {
		t.Errorf("a round that brought our writes up to 12 did not meet the floor at 10")
	}
	if un := h.ownUnmet(); un.has(2) {
		t.Errorf("partition 2 still unmet")
	}
	h.setOwnFloors(map[int]crdt.Timestamp{2: at(20)}) // dropped again since
	if own(15, 2) || !own(5, 2) {
		t.Errorf("after a new floor at 20: write 15 vouched %v (want false), write 5 %v (want true)", own(15, 2), own(5, 2))
	}
}
