package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

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

// The fixture of the haveState tests: this node (self), an origin of writes, and what
// this node knows of them.
const origin, self = crdt.NodeID(7), crdt.NodeID(1)

func at(w int64) crdt.Timestamp { return crdt.Timestamp{Wall: w, Node: origin} }

func mark(w int64) crdt.Bookmark {
	var b crdt.Bookmark
	b.Add(at(w))
	return b
}

// covers reports whether h holds the origin's writes up to w in partition p.
func covers(h *haveState, w int64, p int) bool {
	m, _ := h.missing(mark(w), self, p)
	return len(m) == 0
}

// newTestHave returns a haveState holding partitions 1 and 2 under placement 100.
func newTestHave() (*haveState, *partitionSet) { return newTestHaveGained(100, nil) }

// newTestHaveGained returns a haveState holding partitions 1 and 2 under placement, of
// which it gained those in gained.
func newTestHaveGained(placement uint64, gained []int) (*haveState, *partitionSet) {
	h := &haveState{}
	h.init()
	held := &partitionSet{}
	held.add(1)
	held.add(2)
	h.replan(placement, gained, held)
	return h, held
}

// TestHaveStatePartitions: what a node knows it holds, per partition, under placement.
func TestHaveStatePartitions(t *testing.T) {
	const peer = crdt.NodeID(8)
	h, held := newTestHave()

	t.Run("OKThroughUnderThisPlacement", func(t *testing.T) {
		h.pushed(at(10), 100, nil, h.currentEra())
		if !covers(h, 10, 1) || !covers(h, 10, AllPartitions) {
			t.Errorf("a Through under the current placement does not cover")
		}
		h.pushed(at(20), 99, nil, h.currentEra())
		if covers(h, 20, 1) {
			t.Errorf("a Through under another placement counted")
		}
	})
	t.Run("OKThroughUnderOtherPlacementForItsPartitions", func(t *testing.T) {
		var theirs partitionSet
		theirs.add(1)
		theirs.add(9) // not ours: ignored
		h.pushed(at(30), 98, theirs.words(), h.currentEra())
		if !covers(h, 30, 1) {
			t.Errorf("a Through naming the partitions it was pushed for does not cover them")
		}
		if covers(h, 30, 2) || covers(h, 30, 9) {
			t.Errorf("a Through covered partitions it was not pushed for")
		}
	})
	t.Run("OKThroughUnderOtherPlacementForAllWeHold", func(t *testing.T) {
		// The sender's placement differs from ours elsewhere only: what it pushed for is
		// all we hold, so the Through is base knowledge, which we tell others.
		var theirs partitionSet
		theirs.add(1)
		theirs.add(2)
		h.pushed(at(35), 97, theirs.words(), h.currentEra())
		if !covers(h, 35, AllPartitions) {
			t.Errorf("a Through for every partition we hold does not cover them all")
		}
		if base, _ := h.base(); !base.Covers(at(35)) {
			t.Errorf("a Through for every partition we hold is not in the knowledge we tell others")
		}
	})
	t.Run("OKGainedPartitionStartsEmpty", func(t *testing.T) {
		held.add(3)
		h.replan(101, []int{3}, held)
		if !covers(h, 10, 1) {
			t.Errorf("a partition held before and after forgot what it knew")
		}
		if covers(h, 10, 3) || covers(h, 10, AllPartitions) {
			t.Errorf("a gained partition inherited knowledge it was never taught")
		}
		h.pushed(at(15), 101, nil, h.currentEra())
		if !covers(h, 15, 3) || !covers(h, 15, AllPartitions) {
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
		epoch, era := h.roundStarts()
		h.synced(peer, epoch, era, have, self, 101, roundScope{compared: &compared, full: &full})
		if !covers(h, 40, 1) {
			t.Errorf("a round does not teach the peer's Have of a partition it knows")
		}
		if covers(h, 40, 3) || covers(h, 40, 2) {
			t.Errorf("a round taught the peer's Have of a partition it does not know, or did not compare")
		}
		var own crdt.Bookmark
		own.Add(crdt.Timestamp{Wall: 50, Node: peer})
		if m, _ := h.missing(own, self, 1); len(m) > 0 {
			t.Errorf("a round does not teach the peer's own writes in a partition it brought in full")
		}
		if m, _ := h.missing(own, self, 3); len(m) == 0 {
			t.Errorf("a round taught the peer's own writes in a partition it compared but did not bring in full (the peer may have dropped them)")
		}
		h.gone(peer, time.Now())
		if !covers(h, 40, 1) {
			t.Errorf("what a peer taught was forgotten when it left: the data is still here")
		}
		*held = partitionSet{}
		held.add(2)
		held.add(3)
		h.replan(102, nil, held)
		if covers(h, 40, 1) {
			t.Errorf("knowledge of a partition no longer held survived a new placement")
		}
		held.add(1)
		h.replan(103, []int{1}, held)
		if covers(h, 40, 1) {
			t.Errorf("knowledge of a partition held before survived its loss and return")
		}
	})
	t.Run("OKRoundUnderOldPlacementIgnored", func(t *testing.T) {
		epoch, era := h.roundStarts()
		h.synced(peer, epoch, era, mark(90), self, 101, roundScope{all: true})
		if covers(h, 90, 1) {
			t.Errorf("a round under an older placement counted")
		}
	})
	t.Run("OKFullRoundSettlesGained", func(t *testing.T) {
		epoch, era := h.roundStarts()
		h.synced(peer, epoch, era, mark(95), self, 103, roundScope{all: true})
		if !covers(h, 95, 3) || !covers(h, 95, AllPartitions) {
			t.Errorf("a round over every partition held does not cover them all")
		}
		if (h.gained != partitionSet{}) {
			t.Errorf("gained partitions not settled by a round that taught more than the base")
		}
	})
	t.Run("OKEraChangesOnlyWithAGain", func(t *testing.T) {
		era := h.currentEra()
		h.replan(104, nil, held)
		if h.currentEra() != era {
			t.Errorf("a placement that gains nothing started a new era")
		}
		held.add(4)
		h.replan(105, []int{4}, held)
		if h.currentEra() == era || h.currentEra() == 0 {
			t.Errorf("a placement that gains a partition kept era %d", era)
		}
	})
	t.Run("OKThroughOfAnOlderEraIgnored", func(t *testing.T) {
		// The sender's latest round with us was before we dropped and regained
		// partition 4: its pushes since may not have carried what we dropped.
		era := h.currentEra()
		held.add(5)
		h.replan(106, []int{5}, held)
		h.pushed(at(200), 106, nil, era)
		if covers(h, 200, 1) || covers(h, 200, 4) {
			t.Errorf("a Through by a sender whose round with us was in an older era counted")
		}
		var theirs partitionSet
		theirs.add(1)
		h.pushed(at(210), 77, theirs.words(), era)
		if covers(h, 210, 1) {
			t.Errorf("a Through under another placement by a sender of an older era counted")
		}
		h.pushed(at(220), 106, nil, h.currentEra())
		if !covers(h, 220, 5) {
			t.Errorf("a Through of the current era does not cover")
		}
	})
	t.Run("OKRoundBegunInAnOlderEraIgnored", func(t *testing.T) {
		epoch, era := h.roundStarts()
		held.add(6)
		h.replan(107, []int{6}, held)
		h.synced(peer, epoch, era, mark(300), self, 107, roundScope{all: true})
		if covers(h, 300, 6) || covers(h, 300, AllPartitions) {
			t.Errorf("a round begun before a gain taught what it may not have carried")
		}
	})
}

// TestHaveStateGained: what a node learns of partitions it gained (a node that joined
// gained all it holds) outlives the placement it learnt it under, for the partitions it
// still holds, and a round that teaches at least the base about some of them settles
// those.
func TestHaveStateGained(t *testing.T) {
	const peer = crdt.NodeID(8)
	h, held := newTestHaveGained(100, []int{1, 2})
	h.pushed(at(10), 100, nil, h.currentEra())
	if !covers(h, 10, 1) || !covers(h, 10, 2) {
		t.Fatalf("a Through under the current placement does not cover the gained partitions")
	}

	t.Run("OKThroughsOutliveThePlacement", func(t *testing.T) {
		*held = partitionSet{}
		held.add(1)
		held.add(3)
		h.replan(101, []int{3}, held) // the origin left, say: partition 2 went elsewhere
		if !covers(h, 10, 1) {
			t.Errorf("a partition held before and after forgot what the Throughs told of it")
		}
		if covers(h, 10, 3) {
			t.Errorf("a partition gained now inherited what Throughs told of others")
		}
		held.add(2)
		h.replan(102, []int{2}, held)
		if covers(h, 10, 2) {
			t.Errorf("a partition lost and gained again kept what Throughs told before it was lost")
		}
		if !covers(h, 10, 1) {
			t.Errorf("a partition held throughout forgot what the Throughs told of it")
		}
	})
	t.Run("OKAllPartitionsFromLessons", func(t *testing.T) {
		// A question about every partition held is answered when each of them is covered
		// by the base (not gained) or by some lesson: carried Throughs, rounds, pulls.
		h, held := newTestHaveGained(200, []int{1, 2})
		h.pushed(at(10), 200, nil, h.currentEra())
		h.replan(201, nil, held) // the Throughs are carried, about 1 and 2
		if !covers(h, 10, AllPartitions) {
			t.Errorf("the carried Throughs about every partition held do not answer for them all")
		}
		held.add(3)
		h.replan(202, []int{3}, held)
		if covers(h, 10, AllPartitions) {
			t.Errorf("a partition gained since, known of by nothing, was answered for")
		}
		var compared, full partitionSet
		compared.add(3)
		full.add(3)
		epoch, era := h.roundStarts()
		h.synced(peer, epoch, era, mark(10), self, 202, roundScope{compared: &compared, full: &full, one: true})
		if !covers(h, 10, AllPartitions) || covers(h, 11, AllPartitions) {
			t.Errorf("every partition held is covered by a lesson, but AllPartitions says %v (and %v past them)", covers(h, 10, AllPartitions), covers(h, 11, AllPartitions))
		}
	})
	t.Run("OKCarriedBounded", func(t *testing.T) {
		for i := range 2 * maxCarried {
			h.pushed(at(int64(20+i)), h.placement, nil, h.currentEra())
			h.replan(h.placement+1, nil, held)
		}
		if len(h.carried) > maxCarried {
			t.Errorf("%d lessons carried, want at most %d", len(h.carried), maxCarried)
		}
		if !covers(h, int64(20+2*maxCarried-1), 1) {
			t.Errorf("the latest placement's Throughs were not carried")
		}
	})
	t.Run("OKRoundCoveringTheBaseSettlesWhatItKnows", func(t *testing.T) {
		fp := h.placement
		var compared, full partitionSet
		compared.add(1)
		compared.add(2)
		compared.add(3)
		full.add(1)
		full.add(2)
		base, _ := h.base()
		behind := mark(base.Mark(origin).Wall - 1)
		epoch, era := h.roundStarts()
		h.synced(peer, epoch, era, behind, self, fp, roundScope{compared: &compared, full: &full})
		if !h.gained.has(2) {
			t.Errorf("a round that taught less than the base settled a gained partition")
		}
		epoch, era = h.roundStarts()
		h.synced(peer, epoch, era, base, self, fp, roundScope{compared: &compared, full: &full})
		if h.gained.has(1) || h.gained.has(2) || !h.gained.has(3) {
			t.Errorf("a round that taught the base settled gained partitions 1 %v, 2 %v, 3 %v; want 1 and 2 only",
				!h.gained.has(1), !h.gained.has(2), !h.gained.has(3))
		}
	})
}

// TestHaveStateKnownIn: what a node tells of partitions it gained (haveOf, when asked
// only about those) is, per origin, the least over them of the best it learnt of each.
func TestHaveStateKnownIn(t *testing.T) {
	const peer = crdt.NodeID(8)
	h, held := newTestHaveGained(100, []int{1, 2})
	one, both := &partitionSet{}, &partitionSet{}
	one.add(1)
	both.add(1)
	both.add(2)
	if k := h.knownIn(both); !k.IsZero() {
		t.Errorf("knownIn before anything was learnt = %v, want nothing", k)
	}
	h.pushed(at(10), 100, nil, h.currentEra())
	h.replan(101, nil, held) // the Through is carried
	var full partitionSet
	full.add(1)
	var have crdt.Bookmark
	have.Add(at(20))
	epoch, era := h.roundStarts()
	h.synced(peer, epoch, era, have, self, 101, roundScope{compared: one, full: &full, one: true})
	if k := h.knownIn(one); k.Mark(origin) != at(20) {
		t.Errorf("knownIn(1) = %v, want the pull's %v", k, at(20))
	}
	if k := h.knownIn(both); k.Mark(origin) != at(10) {
		t.Errorf("knownIn(1, 2) = %v, want the least of the two: %v", k, at(10))
	}
	if k := h.knownIn(both); !k.Mark(peer).IsZero() {
		t.Errorf("knownIn(1, 2) = %v names the peer, whose writes it knows of in partition 1 only", k)
	}
}

// TestMoveRate: sending stored state waits for the move rate once its burst is spent,
// and counts what it sends.
func TestMoveRate(t *testing.T) {
	m := NewMetrics()
	r := &Replicator{cfg: Config{MaxMessage: 4096, Metrics: m}}
	r.move = rate.NewLimiter(1, r.budget()) // one byte a second after a burst of one message
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.moving(ctx, r.budget()); err != nil {
		t.Fatalf("the first message within the burst waited: %v", err)
	}
	cancel()
	if err := r.moving(ctx, r.budget()); err == nil {
		t.Fatalf("a second message, beyond the rate, did not wait")
	}
	if got := testutil.ToFloat64(m.Moved); got != float64(2*r.budget()) {
		t.Errorf("moved bytes %v, want %d", got, 2*r.budget())
	}
	if testutil.ToFloat64(m.MoveWait) <= 0 {
		t.Errorf("the wait was not counted")
	}
	unbounded := &Replicator{cfg: Config{MaxMessage: 4096}}
	if err := unbounded.moving(ctx, 1<<30); err != nil {
		t.Errorf("an unbounded replicator waited: %v", err)
	}
}

// TestHaveStateDistrust: a change of an origin's refused in one partition (a field stamped
// too far ahead) makes its Throughs count for the other partitions only, until a round
// with it completes without refusals.
func TestHaveStateDistrust(t *testing.T) {
	h, held := newTestHave()
	refusedKey := crdt.UserKey("002" + strings.Repeat("0", 29))
	if got := crdt.KeyHomes(refusedKey).First(); got != 2 {
		t.Fatalf("test key in partition %d, want 2", got)
	}
	h.distrust(origin, []string{refusedKey})
	epoch, era := h.roundStarts()
	h.pushed(at(38), 100, held.words(), era)
	if !covers(h, 38, 1) || covers(h, 38, 2) || covers(h, 38, AllPartitions) {
		t.Errorf("a distrusted origin's Through: partition 1 %v (want true), 2 %v (want false)", covers(h, 38, 1), covers(h, 38, 2))
	}
	var refused partitionSet
	refused.add(2)
	h.synced(origin, epoch, era, mark(39), self, 100, roundScope{all: true, refused: &refused})
	if covers(h, 39, 2) || !covers(h, 39, 1) {
		t.Errorf("a round that refused changes in partition 2 taught about it, or not about 1")
	}
	h.pushed(at(40), 100, held.words(), era)
	if covers(h, 40, 2) {
		t.Errorf("a round with refusals ended the distrust")
	}
	h.synced(origin, epoch, era, mark(41), self, 100, roundScope{all: true})
	h.pushed(at(42), 100, held.words(), era)
	if !covers(h, 42, 2) || !covers(h, 42, AllPartitions) {
		t.Errorf("a clean round did not end the distrust")
	}
}

// TestHaveStateNotHeld: nothing vouches for a partition this node does not hold — not
// the base, not a Through — so a request served here because no holder answered (forward.go)
// waits for its bookmark and its session, and gets 503 behind, instead of reading a
// partition it holds no copy of. (Chaos with --replicas 1 once answered a live session's
// token 401 "expired or revoked" on a node cut off from the other holders: its base knowledge
// covered the session's creation, in a partition it did not hold.)
func TestHaveStateNotHeld(t *testing.T) {
	h, held := newTestHave()
	h.synced(origin, 0, h.currentEra(), mark(10), self, 100, roundScope{all: true})
	h.pushed(at(20), 100, held.words(), h.currentEra())
	for _, w := range []int64{10, 20} {
		if !covers(h, w, 1) || !covers(h, w, AllPartitions) {
			t.Errorf("the base or a Through up to %d does not cover the partitions held", w)
		}
		if covers(h, w, 3) {
			t.Errorf("up to %d covers partition 3, which is not held", w)
		}
	}
	if m, _ := h.missing(crdt.Bookmark{}, self, 3); len(m) != 0 {
		t.Errorf("an empty bookmark is not met in a partition not held: %v", m)
	}
}

// TestHaveStateDistrustPeerDoesNotHold: a distrust of an origin in a partition it does
// not hold (say a message's second home) ends with any clean round with it, since no
// round with it compares that partition in full; kept for good, it would freeze what this
// node knows it holds of the origin (its Throughs never again raise the base), and every
// request naming the origin's later writes would wait in vain.
func TestHaveStateDistrustPeerDoesNotHold(t *testing.T) {
	h, held := newTestHave()
	h.distrust(origin, []string{crdt.UserKey("002" + strings.Repeat("0", 29))})
	epoch, era := h.roundStarts()
	var theirs partitionSet
	theirs.add(1) // the origin holds partition 1, not 2
	h.synced(origin, epoch, era, mark(10), self, 100, roundScope{compared: &theirs, full: &theirs, peerHeld: &theirs})
	h.pushed(at(20), 100, held.words(), era)
	if !covers(h, 20, 2) || !covers(h, 20, AllPartitions) {
		t.Errorf("the distrust in a partition the origin does not hold outlived a clean round with it")
	}
}

// TestHaveStateOwnWritesOnlyWhereHeld: a round teaches that we hold the peer's own writes
// only in the partitions it brought in full (the peer holds them), not in every partition
// compared: in one the peer does not hold, it may have handed its writes off and dropped
// them, so pulling from it brings none of them (found by an outside review: a pull from a
// non-holder vouched for a write it had dropped).
func TestHaveStateOwnWritesOnlyWhereHeld(t *testing.T) {
	h, held := newTestHave()
	var one partitionSet
	one.add(1)
	peer := crdt.NodeID(8)
	epoch, era := h.roundStarts()
	var b crdt.Bookmark
	b.Add(crdt.Timestamp{Wall: 50, Node: peer})
	h.synced(peer, epoch, era, b, self, 100, roundScope{compared: held, full: &one, one: true})
	coversPeer := func(p int) bool {
		m, _ := h.missing(b, self, p)
		return len(m) == 0
	}
	if !coversPeer(1) {
		t.Errorf("the peer's own writes are not covered in the partition it brought in full")
	}
	if coversPeer(2) {
		t.Errorf("the peer's own writes are covered in partition 2, which it does not hold")
	}
}

// TestHaveStateDistrustEndsWhereCompared: a clean round ends the distrust of its peer only
// in the partitions it compared — it brought the peer's writes there, not those refused
// elsewhere. (Chaos with --replicas 1 once served a read, its bookmark "met", without ten
// writes of a session whose partition's changes had been refused while the origin's clock
// ran ahead: a pull of another partition from that origin had ended the distrust
// everywhere, and the origin's next Through then counted for the refused partition too.)
func TestHaveStateDistrustEndsWhereCompared(t *testing.T) {
	only := func(p int) *partitionSet {
		var s partitionSet
		s.add(p)
		return &s
	}
	for _, tc := range []struct {
		name    string
		refused []string // nil: refused without knowing where (every partition)
	}{
		{"InPartition2", []string{crdt.UserKey("002" + strings.Repeat("0", 29))}},
		{"Everywhere", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, held := newTestHave()
			h.distrust(origin, tc.refused)
			epoch, era := h.roundStarts()
			// A clean pull of partition 1 alone from the origin, which holds 1 and 2:
			// partition 2 was not compared.
			h.synced(origin, epoch, era, mark(10), self, 100, roundScope{compared: only(1), full: only(1), one: true, peerHeld: held})
			h.pushed(at(20), 100, held.words(), era)
			if covers(h, 20, 2) || covers(h, 20, AllPartitions) {
				t.Errorf("a clean round about partition 1 ended the distrust in partition 2")
			}
			if !covers(h, 20, 1) {
				t.Errorf("a clean round about partition 1 did not end the distrust there")
			}
			// A clean round that compared partition 2 but did not bring it in full (the
			// peer does not know of it: not in full) leaves the distrust there too.
			h.synced(origin, epoch, era, mark(25), self, 100, roundScope{compared: held, full: only(1), peerHeld: held})
			h.pushed(at(26), 100, held.words(), era)
			if covers(h, 26, 2) {
				t.Errorf("a clean round that did not bring partition 2 in full ended the distrust there")
			}
			// Then a clean round that brings partition 2 in full too.
			h.synced(origin, epoch, era, mark(30), self, 100, roundScope{compared: held, full: held, peerHeld: held})
			h.pushed(at(40), 100, held.words(), era)
			if !covers(h, 40, 2) || !covers(h, 40, AllPartitions) {
				t.Errorf("a clean round comparing every partition held did not end the distrust")
			}
		})
	}
}

// TestHaveStateDropThenGain: a handoff round drops stray keys of partition 3 (not held
// under placement 100); a replan (101) gains 3 while the drop runs, and a round in the
// new era compares 3 — with the strays still there — and teaches it. Nothing may vouch for
// 3 while the drop runs, nor after it (it is gained again, in a new era); a drop decided
// under a placement no longer current does not begin. (Chaos with --replicas 1: eu-2
// answered a live session 401 just after taking over eu-1's partitions.)
func TestHaveStateDropThenGain(t *testing.T) {
	h, _ := newTestHave()
	h.synced(origin, 0, h.currentEra(), mark(10), self, 100, roundScope{all: true})
	var three partitionSet
	three.add(3)
	if !h.beginDrop(100, &three) {
		t.Fatalf("beginDrop under the current placement refused")
	}
	now := &partitionSet{}
	now.add(1)
	now.add(2)
	now.add(3)
	h.replan(101, []int{3}, now)
	h.synced(origin, 0, h.currentEra(), mark(20), self, 101, roundScope{compared: now, full: now})
	if covers(h, 10, 3) || covers(h, 10, AllPartitions) {
		t.Errorf("partition 3 vouched for while a handoff drops its keys")
	}
	era := h.currentEra()
	if !h.endDrop() {
		t.Errorf("endDrop: partition 3, held now, not gained again")
	}
	if h.currentEra() == era {
		t.Errorf("endDrop gained 3 again without a new era")
	}
	if covers(h, 10, 3) {
		t.Errorf("partition 3 vouched for after the drop, by a round that compared it before")
	}
	if !covers(h, 10, 1) {
		t.Errorf("partition 1, held throughout, no longer covered")
	}
	if h.beginDrop(100, &three) {
		t.Errorf("beginDrop under a placement no longer current began")
	}
}
