package cluster

import (
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func sixPeers() (Peer, []Peer) {
	var all []Peer
	for i, name := range []string{"eu-1", "eu-2", "eu-3", "us-1", "us-2", "us-3"} {
		region := "eu"
		if i >= 3 {
			region = "us"
		}
		all = append(all, Peer{ID: crdt.NodeID(i + 1), Name: name, Region: region})
	}
	return all[0], all[1:]
}

// TestViewHolds: a node holds a key when it holds one of its homes; without placement,
// every node holds everything.
func TestViewHolds(t *testing.T) {
	self, peers := sixPeers()
	if v := newView(self, peers, 0, false); v.sharded() || !v.holds(99, "anything") || v.fingerprint != 0 {
		t.Fatalf("replicas 0: sharded %v, fingerprint %x; want every node holding everything", v.sharded(), v.fingerprint)
	}
	v := newView(self, peers, 2, false)
	if again := newView(peers[2], append([]Peer{self}, append(peers[:2:2], peers[3:]...)...), 2, false); again.fingerprint != v.fingerprint {
		t.Errorf("fingerprint depends on whose view it is: %x, %x", v.fingerprint, again.fingerprint)
	}
	if other := newView(self, peers[:4], 2, false); other.fingerprint == v.fingerprint {
		t.Errorf("fingerprint unchanged without a member")
	}
	a, b := crdt.PartitionPrefix(10)+"aaaa", crdt.PartitionPrefix(20)+"bbbb"
	for _, key := range []string{crdt.UserKey(a), crdt.SessionKey(b), crdt.ClaimKey("alice"), crdt.LogPrefix + crdt.ConversationID(a, b) + "/0001"} {
		homes := crdt.KeyHomes(key).Append(nil)
		holders := 0
		for _, p := range append([]Peer{self}, peers...) {
			want := v.table.OwnsAny(p.ID, homes)
			if got := v.holds(p.ID, key); got != want {
				t.Errorf("holds(%s, %q) = %v, want %v (homes %v)", p.Name, key, got, want, homes)
			}
			if want && p.Region == "eu" {
				holders++
			}
		}
		if min := 2; holders < min || len(homes) == 1 && holders != 2 {
			t.Errorf("%q (homes %v) held by %d nodes of eu, want 2 (or up to 4 for two homes)", key, homes, holders)
		}
	}
}

// TestSyncMask: a round compares the partitions the peer holds that we hold or have data
// in, and nothing else.
func TestSyncMask(t *testing.T) {
	self, peers := sixPeers()
	v := newView(self, peers, 2, false)
	var d crdt.Digest
	mine, theirs := v.held(self.ID), v.held(peers[0].ID)
	leftover := -1
	for p := range crdt.Partitions {
		if !mine.has(p) && theirs.has(p) {
			leftover = p
			break
		}
	}
	d.Toggle(crdt.UserKey(crdt.PartitionPrefix(leftover)+"x"), 1) // data in a partition we do not hold
	m := v.syncMask(self.ID, peers[0].ID, &d)
	for p := range crdt.Partitions {
		want := theirs.has(p) && (mine.has(p) || p == leftover)
		if m.has(p) != want {
			t.Fatalf("mask has %d = %v, want %v (ours %v, theirs %v)", p, m.has(p), want, mine.has(p), theirs.has(p))
		}
	}
	if newView(self, peers, 0, false).syncMask(self.ID, peers[0].ID, &d) != nil {
		t.Errorf("without placement the mask is not nil (everything)")
	}
}

// TestHaveStatePartitions: what a node knows it holds, per partition, under placement.
func TestHaveStatePartitions(t *testing.T) {
	const origin, peer, self = crdt.NodeID(7), crdt.NodeID(8), crdt.NodeID(1)
	at := func(w int64) crdt.Timestamp { return crdt.Timestamp{Wall: w, Node: origin} }
	mark := func(w int64) crdt.Bookmark { var b crdt.Bookmark; b.Add(at(w)); return b }
	covers := func(h *haveState, w int64, p int) bool {
		m, _ := h.missing(mark(w), self, p)
		return len(m) == 0
	}
	var h haveState
	h.init()
	var held partitionSet
	held.add(1)
	held.add(2)
	h.replan(100, nil, &held)

	t.Run("OKThroughUnderThisPlacement", func(t *testing.T) {
		h.pushed(at(10), 100, nil)
		if !covers(&h, 10, 1) || !covers(&h, 10, AllPartitions) {
			t.Errorf("a Through under the current placement does not cover")
		}
		h.pushed(at(20), 99, nil)
		if covers(&h, 20, 1) {
			t.Errorf("a Through under another placement counted")
		}
	})
	t.Run("OKThroughUnderOtherPlacementForItsPartitions", func(t *testing.T) {
		var theirs partitionSet
		theirs.add(1)
		theirs.add(9) // not ours: ignored
		h.pushed(at(30), 98, theirs.words())
		if !covers(&h, 30, 1) {
			t.Errorf("a Through naming the partitions it was pushed for does not cover them")
		}
		if covers(&h, 30, 2) || covers(&h, 30, 9) {
			t.Errorf("a Through covered partitions it was not pushed for")
		}
	})
	t.Run("OKGainedPartitionStartsEmpty", func(t *testing.T) {
		held.add(3)
		h.replan(101, []int{3}, &held)
		if !covers(&h, 10, 1) {
			t.Errorf("a partition held before and after forgot what it knew")
		}
		if covers(&h, 10, 3) || covers(&h, 10, AllPartitions) {
			t.Errorf("a gained partition inherited knowledge it was never taught")
		}
		h.pushed(at(15), 101, nil)
		if !covers(&h, 15, 3) || !covers(&h, 15, AllPartitions) {
			t.Errorf("a Through under the new placement does not cover the gained partition")
		}
	})
	t.Run("OKRoundTeachesWhatItCompared", func(t *testing.T) {
		var compared, full partitionSet
		compared.add(1)
		compared.add(3)
		full.add(1)
		var have crdt.Bookmark
		have.Add(at(40))
		have.Add(crdt.Timestamp{Wall: 50, Node: peer})
		h.synced(peer, h.roundStarts(), have, self, 101, roundScope{compared: &compared, full: &full})
		if !covers(&h, 40, 1) {
			t.Errorf("a round does not teach the peer's Have of a partition it knows")
		}
		if covers(&h, 40, 3) || covers(&h, 40, 2) {
			t.Errorf("a round taught the peer's Have of a partition it does not know, or did not compare")
		}
		var own crdt.Bookmark
		own.Add(crdt.Timestamp{Wall: 50, Node: peer})
		if m, _ := h.missing(own, self, 3); len(m) > 0 {
			t.Errorf("a round does not teach the peer's own writes in every partition compared")
		}
		h.gone(peer, time.Now())
		if !covers(&h, 40, 1) {
			t.Errorf("what a peer taught was forgotten when it left: the data is still here")
		}
		held = partitionSet{}
		held.add(2)
		held.add(3)
		h.replan(102, nil, &held)
		if covers(&h, 40, 1) {
			t.Errorf("knowledge of a partition no longer held survived a new placement")
		}
		held.add(1)
		h.replan(103, []int{1}, &held)
		if covers(&h, 40, 1) {
			t.Errorf("knowledge of a partition held before survived its loss and return")
		}
	})
	t.Run("OKRoundUnderOldPlacementIgnored", func(t *testing.T) {
		h.synced(peer, h.roundStarts(), mark(90), self, 101, roundScope{all: true})
		if covers(&h, 90, 1) {
			t.Errorf("a round under an older placement counted")
		}
	})
	t.Run("OKFullRoundSettlesGained", func(t *testing.T) {
		h.synced(peer, h.roundStarts(), mark(95), self, 103, roundScope{all: true})
		if !covers(&h, 95, 3) || !covers(&h, 95, AllPartitions) {
			t.Errorf("a round over every partition held does not cover them all")
		}
		if (h.gained != partitionSet{}) {
			t.Errorf("gained partitions not settled by a round that taught more than the base")
		}
	})
}
