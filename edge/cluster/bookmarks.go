package cluster

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// What a node holds of other nodes' writes, and how a request waits for more.
//
// A client's bookmark (crdt.Bookmark) names, per origin node, the latest write it must see.
// This node knows, per origin, a mark up to which it holds every write of that origin:
//
//   - a push from the origin carries Through (see pushFrom): the origin's pushes to us,
//     applied in order since its worker's first anti-entropy round, carried every write
//     it stamped up to that mark;
//   - a completed anti-entropy round with any peer leaves us holding everything that peer
//     held when it answered, and its reply says what that was (DigestReply.Have), for
//     every origin, so knowledge travels with the data;
//   - our own writes are covered up to storage's commit mark.
//
// A push of which we refused a change (clock skew) makes us stop believing that origin's
// Through, in the refused change's partitions, until a round with it that refuses nothing
// brings them in full (in a partition the origin does not hold: any such round).

// With placement (holding.go), what a node knows it holds is about the partitions it
// holds. The base knowledge covers every partition it holds but those gained since the
// data was sharded this way (gained; a node that joined gained all it holds): those it
// only knows from what it learnt since it gained them — pushes' Through (which cover
// every partition held under the placement they were told under, and stay true of those
// held since: carried) and completed rounds, each of which teaches, for the partitions
// it compared, what the peer held of those the peer knows of (learnt: the latest round
// per peer, and its latest pull of one partition). A gained partition joins the base
// again once a round teaches at least the base about it. Asked only about partitions it
// gained (a pull of one partition), a node answers with what it knows of them, so that
// knowledge travels from node to node whatever became of the writes' origins, even when
// every holder gained the partition (nodes that started together all joined). A
// question about one
// partition (a request is about its caller's) is answered from that partition's
// knowledge; a question about none (AllPartitions) from what covers them all.

// A peer's claim that this node holds its writes (a push's Through) rests on what the
// peer sent us since its latest round with us. A node drops data only in partitions it
// does not hold (handoff), and regains a partition only with a new placement that gains
// it; each such gain starts a new era (as does each start of the process), and a Through
// counts only if the sender's latest round with us was in the current era: otherwise we
// may have dropped, since, what that round and the pushes after it brought.

// haveState is what this node holds of each other origin's writes. Safe for concurrent use.
type haveState struct {
	mu         sync.Mutex
	era        uint64                    // changes whenever we gain partitions; never 0
	have       crdt.Bookmark             // base knowledge; never holds our own node
	gained     partitionSet              // partitions the base is not about (sharded only)
	anyGained  bool                      // gained is not empty: spares comparing 512 bytes per mark
	through    crdt.Bookmark             // Throughs told under the current placement: about every partition held
	carried    []lesson                  // the Throughs of earlier placements, about the partitions held since; newest last
	learnt     map[crdt.NodeID][4]lesson // the latest round with each peer taught [0:2], its latest pull of one partition [2:4]
	told       map[crdt.NodeID]lesson    // each origin's latest Through under another placement, about the partitions it named
	held       *partitionSet             // the partitions held, as of the latest replan (nil: not sharded)
	placement  uint64                    // the fingerprint of the current placement
	changed    chan struct{}             // closed and replaced whenever knowledge rises
	distrusted map[crdt.NodeID]distrust  // origins whose pushes we partly refused
	partial    map[crdt.NodeID]lesson    // a distrusted origin's latest Through, about the partitions not distrusted
	epoch      uint64                    // counts distrust events
	lastLive   map[crdt.NodeID]time.Time // when each node last stopped being a live peer
	dropping   partitionSet              // partitions whose stray keys a handoff round is dropping now
	fetching   map[fetchKey]*fetch       // fetches in flight
	lastFetch  map[fetchKey]time.Time
}

// lesson is knowledge about some partitions.
type lesson struct {
	about partitionSet
	have  crdt.Bookmark
}

// AllPartitions, as a partition, asks about every partition this node holds.
const AllPartitions = -1

func (h *haveState) init() {
	h.era = newEra(0)
	h.changed = make(chan struct{})
	h.learnt = make(map[crdt.NodeID][4]lesson)
	h.distrusted = make(map[crdt.NodeID]distrust)
	h.partial = make(map[crdt.NodeID]lesson)
	h.lastLive = make(map[crdt.NodeID]time.Time)
	h.fetching = make(map[fetchKey]*fetch)
	h.lastFetch = make(map[fetchKey]time.Time)
}

// gone records that node stopped being a live peer at t.
func (h *haveState) gone(node crdt.NodeID, t time.Time) {
	h.mu.Lock()
	h.lastLive[node] = t
	h.mu.Unlock()
}

// newEra returns a random era, neither 0 nor old.
func newEra(old uint64) uint64 {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		if e := binary.BigEndian.Uint64(b[:]); e != 0 && e != old {
			return e
		}
	}
}

// currentEra returns the era this node is in.
func (h *haveState) currentEra() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.era
}

// raiseLocked adds b's marks (but self's) to the base knowledge and wakes waiters if it
// rose.
func (h *haveState) raiseLocked(b crdt.Bookmark, self crdt.NodeID) {
	if raise(&h.have, b, self) {
		h.wakeLocked()
	}
}

func (h *haveState) wakeLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// raise adds b's marks but self's to dst and reports whether dst rose.
func raise(dst *crdt.Bookmark, b crdt.Bookmark, self crdt.NodeID) bool {
	changed := false
	for _, ts := range b.Marks() {
		if ts.Node != self && dst.Add(ts) {
			changed = true
		}
	}
	return changed
}

// pushed records an origin's Through, told under the placement with fingerprint
// placement, by a sender whose latest round with us was in era (ignored in any other):
// it covers every partition we hold.
//
// Under another placement, a Through told with the partitions it was pushed for (held:
// ours by the sender's placement) counts for those of them we hold: the sender's pushes
// and its round with us carried all it wrote there. When those are all we hold (the
// placements differ only elsewhere, say in another region), it counts as under ours,
// and so reaches the knowledge we tell others (DigestReply.Have).
//
// A Through of an origin we distrust counts only for the partitions we refused none of
// its changes in (see distrust).
func (h *haveState) pushed(through crdt.Timestamp, placement uint64, held []uint64, era uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, distrusted := h.distrusted[through.Node]
	if era != h.era || distrusted && d.all {
		return
	}
	var l lesson
	switch {
	case placement != h.placement:
		if held == nil || h.held == nil {
			return
		}
		for i := range l.about {
			if i < len(held) {
				l.about[i] = held[i] & h.held[i]
			}
		}
	case h.held != nil:
		l.about = *h.held
	default: // not sharded: every partition
		for i := range l.about {
			l.about[i] = ^uint64(0)
		}
	}
	if distrusted {
		for i := range l.about {
			l.about[i] &^= d.parts[i]
		}
		l.have.Add(through)
		if old, ok := h.partial[through.Node]; ok && old.about == l.about && !old.have.Mark(through.Node).Less(through) {
			return
		}
		h.partial[through.Node] = l
		h.wakeLocked()
		return
	}
	if placement == h.placement || l.about == *h.held {
		// About every partition we hold: a placement elsewhere (another region's
		// members) may differ, ours does not.
		a, b := h.have.Add(through), h.through.Add(through)
		if a || b {
			h.wakeLocked()
		}
		return
	}
	l.have.Add(through)
	if h.told == nil {
		h.told = make(map[crdt.NodeID]lesson)
	}
	if old, ok := h.told[through.Node]; ok && old.about == l.about && !old.have.Mark(through.Node).Less(through) {
		return
	}
	h.told[through.Node] = l
	h.wakeLocked()
}

// replan starts a new placement (fingerprint placement) under which this node holds the
// partitions held says, gaining those in gained: the base is not about them, and what
// was learnt about partitions not held before is dropped (their data may have been
// leftovers since dropped); a gain starts a new era. Knowledge of partitions held
// before and now stays.
func (h *haveState) replan(placement uint64, gained []int, held *partitionSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.replanLocked(placement, gained, held)
}

func (h *haveState) replanLocked(placement uint64, gained []int, held *partitionSet) {
	h.placement = placement
	if len(gained) > 0 {
		h.era = newEra(h.era)
	}
	var now partitionSet
	for _, p := range gained {
		h.gained.add(p)
		now.add(p)
	}
	if !h.through.IsZero() && h.held != nil {
		// What the Throughs told about the partitions held before stays true of those
		// still held: a node drops only data it does not hold.
		h.carried = append(h.carried, lesson{about: *h.held, have: h.through})
	}
	h.through = crdt.Bookmark{}
	h.held = held
	h.anyGained = false
	for i := range h.gained {
		h.gained[i] &= held[i]
		h.anyGained = h.anyGained || h.gained[i] != 0
	}
	for _, lessons := range []map[crdt.NodeID]lesson{h.told, h.partial} {
		for origin, l := range lessons {
			if l.keep(held, &now) {
				lessons[origin] = l
			} else {
				delete(lessons, origin)
			}
		}
	}
	kept := h.carried[:0]
	for _, l := range h.carried {
		if l.keep(held, &now) {
			kept = append(kept, l)
		}
	}
	if n := len(kept) - maxCarried; n > 0 {
		kept = append(kept[:0], kept[n:]...) // the oldest are the likeliest to be outgrown
	}
	clear(h.carried[len(kept):])
	h.carried = kept
	for peer, ls := range h.learnt {
		left := false
		for i := range ls {
			left = ls[i].keep(held, &now) || left
		}
		if left {
			h.learnt[peer] = ls
		} else {
			delete(h.learnt, peer) // about nothing held any more
		}
	}
}

// beginDrop records that a handoff round, which chose what to drop under the placement
// with fingerprint placement, is about to drop keys of the partitions in parts; it
// reports false, and records nothing, when the placement changed since (the round must
// not drop then: this node may hold those partitions now). Until endDrop, nothing
// vouches for a partition in parts that a new placement makes this node hold: a round
// may compare it while the strays are still here, and the drop then removes them.
func (h *haveState) beginDrop(placement uint64, parts *partitionSet) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if placement != h.placement {
		return false
	}
	h.dropping = *parts
	return true
}

// endDrop ends the drop begun by beginDrop: a partition of it that this node holds now
// (a placement gained it meanwhile) is gained again, in a new era, as if the drop were
// the gain — what was learnt of it since may have been about the keys dropped. It
// reports whether any was.
func (h *haveState) endDrop() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	var again []int
	if h.held != nil {
		for p := range crdt.Partitions {
			if h.dropping.has(p) && h.held.has(p) {
				again = append(again, p)
			}
		}
	}
	h.dropping = partitionSet{}
	if len(again) > 0 {
		h.replanLocked(h.placement, again, h.held)
	}
	return len(again) > 0
}

// droppingHeldLocked reports whether a drop in progress is about a partition held.
func (h *haveState) droppingHeldLocked() bool {
	if h.held == nil {
		return false
	}
	for i := range h.dropping {
		if h.dropping[i]&h.held[i] != 0 {
			return true
		}
	}
	return false
}

// maxCarried bounds the lessons carried over from earlier placements (haveState.carried):
// each change of placement adds one; dropping one only loses knowledge, which rounds and
// pushes teach again.
const maxCarried = 8

// keep trims l to the partitions in held but not in gained and reports whether any are
// left.
func (l *lesson) keep(held, gained *partitionSet) bool {
	left := false
	for w := range l.about {
		l.about[w] &= held[w] &^ gained[w]
		left = left || l.about[w] != 0
	}
	return left
}

// distrust is what we no longer believe of an origin's pushes: their Throughs, in the
// partitions of the changes of its we refused (all: in every partition).
// maxDistrusted bounds the origins distrusted at once (haveState.distrust): far more
// nodes than a cluster has.
const maxDistrusted = 1024

type distrust struct {
	epoch uint64 // of the latest refusal
	all   bool
	parts partitionSet
}

// distrust stops believing origin's pushes, in the partitions of the keys of its changes
// we refused (none: in every partition), until rounds with it, begun after this call,
// complete without refusals (trustAgainLocked says which end it where). A refused change
// (a field stamped too far ahead, say another node's it relays) leaves us without a write
// its Through counts; the other partitions' data came whole.
//
// At most maxDistrusted origins are distrusted at once: a push's sender names its origin
// itself, and one inventing origins would otherwise grow the set without end (an entry
// ends only with a round with its origin). Past the bound, the origin distrusted longest
// ago is trusted again; only a peer lying in valid messages pushes a real one out, which
// costs read-your-writes, as such a lie does anyway (docs/PROTOCOL.md).
func (h *haveState) distrust(origin crdt.NodeID, refused []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epoch++
	if _, ok := h.distrusted[origin]; !ok && len(h.distrusted) >= maxDistrusted {
		oldest, first := crdt.NodeID(0), true
		for id, d := range h.distrusted {
			if first || d.epoch < h.distrusted[oldest].epoch {
				oldest, first = id, false
			}
		}
		delete(h.distrusted, oldest)
		delete(h.partial, oldest)
	}
	d := h.distrusted[origin]
	d.epoch, d.all = h.epoch, d.all || len(refused) == 0
	d.parts.addHomes(refused)
	h.distrusted[origin] = d // what it told us before the refusal stands
}

// trustAgainLocked ends the distrust d of peer where a round that refused nothing
// (scope) makes its Throughs true again: in the partitions the round brought in full from
// the peer, which holds them (scope.full) — all it held there, its own writes included.
// A pull of one partition says nothing of another whose changes were refused, so there
// the distrust stands. In a partition the peer does not hold, no round with it compares
// it in full, and the distrust ends with any round that refused nothing, as it did before
// distrust was kept per partition (else the peer's Throughs would never again raise
// what we know we hold of it, and requests naming its writes would wait in vain).
func (h *haveState) trustAgainLocked(peer crdt.NodeID, d distrust, scope roundScope) {
	if scope.all || scope.compared == nil {
		delete(h.distrusted, peer)
		return
	}
	left := false
	for i := range d.parts {
		if d.all {
			d.parts[i] = ^uint64(0)
		}
		var ended uint64
		if scope.full != nil {
			ended = scope.full[i]
		}
		if scope.peerHeld != nil {
			ended |= ^scope.peerHeld[i]
		}
		d.parts[i] &^= ended
		if h.held == nil || d.parts[i]&h.held[i] != 0 {
			left = left || d.parts[i] != 0
		}
	}
	d.all = false
	if left {
		h.distrusted[peer] = d
	} else {
		delete(h.distrusted, peer)
	}
}

// roundStarts returns the epoch and era to pass to synced for a round beginning now.
func (h *haveState) roundStarts() (epoch, era uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.epoch, h.era
}

// roundScope is what a completed anti-entropy round compared: every partition we hold
// with a peer that knows of them all (all), or some partitions we hold (compared), of
// which the peer knows what it holds of those in full (nil sets: every partition).
type roundScope struct {
	all            bool
	compared, full *partitionSet
	// refused, when not nil, is the partitions of changes of the peer's this node refused
	// in the round: it teaches nothing about them, and leaves a distrust of the peer.
	refused *partitionSet
	// one: the round was a pull of one partition (Await's fetch), whose lesson is kept
	// beside the latest full round's rather than in its stead.
	one bool
	// peerHeld, when not nil, is the partitions the peer holds by this node's placement
	// (nil: every partition, or not sharded).
	peerHeld *partitionSet
}

// synced records a completed anti-entropy round with peer, begun at epoch in era, under
// the placement with fingerprint placement, when peer held have: the round leaves us
// holding all of it in the partitions of scope.full, and the peer's own writes there too
// (not in every partition compared: in one the peer does not hold, it may have handed off
// and dropped its own writes); when have covers the base, the gained partitions of
// scope.full join the base. It counts only under the current placement and era (a placement can
// come back, but what was dropped meanwhile does not). A distrust of peer from after the
// round began stands: the round may not have carried what was refused.
func (h *haveState) synced(peer crdt.NodeID, epoch, era uint64, have crdt.Bookmark, self crdt.NodeID, placement uint64, scope roundScope) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.distrusted[peer]; ok && d.epoch <= epoch && scope.refused == nil {
		h.trustAgainLocked(peer, d, scope)
	}
	if placement != h.placement || era != h.era {
		return
	}
	if r := scope.refused; r != nil {
		var compared, full partitionSet
		for i := range compared {
			compared[i], full[i] = ^uint64(0), ^uint64(0)
			if scope.compared != nil {
				compared[i] = scope.compared[i]
			}
			if scope.full != nil {
				full[i] = scope.full[i]
			}
			compared[i] &^= r[i]
			full[i] &^= r[i]
		}
		scope = roundScope{compared: &compared, full: &full, one: scope.one, peerHeld: scope.peerHeld}
	}
	if scope.all {
		if h.have.CoveredBy(have) {
			h.gained, h.anyGained = partitionSet{}, false // every partition held now knows at least the base
		}
		h.raiseLocked(have, self)
		return
	}
	if h.anyGained && h.have.CoveredBy(have) {
		// The peer held at least the base in the partitions it knows of, and so do we now.
		h.anyGained = false
		for i := range h.gained {
			h.gained[i] &^= scope.full[i]
			h.anyGained = h.anyGained || h.gained[i] != 0
		}
	}
	var full, own crdt.Bookmark
	raise(&full, have, self)
	own.Add(have.Mark(peer))
	ls := h.learnt[peer]
	i := 0
	if scope.one {
		i = 2 // beside what the latest full round taught, which stays true
	}
	ls[i], ls[i+1] = lesson{about: *scope.full, have: full}, lesson{about: *scope.full, have: own}
	h.learnt[peer] = ls
	h.wakeLocked()
}

// missing returns the marks of b not covered in partition p (AllPartitions: in every
// partition held), ignoring marks of self (ours are covered by the commit mark, or can
// never be: a bookmark from a former life of this node's data, or made up), and the
// channel that is closed when knowledge next rises.
func (h *haveState) missing(b crdt.Bookmark, self crdt.NodeID, p int) ([]crdt.Timestamp, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []crdt.Timestamp
	for _, ts := range b.Marks() {
		if ts.Node != self && !h.coversLocked(ts, p) {
			out = append(out, ts)
		}
	}
	return out, h.changed
}

func (h *haveState) coversLocked(ts crdt.Timestamp, p int) bool {
	if p == AllPartitions {
		if h.droppingHeldLocked() {
			return false // a partition held is losing keys to a handoff begun before it was gained
		}
		if h.through.Covers(ts) || !h.anyGained && h.have.Covers(ts) {
			return true // Throughs are about every partition held
		}
		if h.held == nil {
			return false // not sharded: the base is about every partition
		}
		// Every partition held, each by what covers it: the base those not gained,
		// lessons the others.
		var known partitionSet
		if h.have.Covers(ts) {
			for i := range known {
				known[i] = ^h.gained[i]
			}
		}
		h.lessonsCovering(ts, func(l *lesson) {
			for i := range known {
				known[i] |= l.about[i]
			}
		})
		return known.coversAll(h.held)
	}
	if h.held != nil && (!h.held.has(p) || h.dropping.has(p)) {
		// Not held (or held only since a handoff round began dropping keys of it):
		// pushes of it do not come here, and what was here may have been handed off.
		// The base and Throughs are about the partitions held, and every lesson is
		// trimmed to them: nothing vouches for p.
		return false
	}
	if (!h.anyGained || !h.gained.has(p)) && h.have.Covers(ts) || h.through.Covers(ts) {
		return true
	}
	found := false
	h.lessonsCovering(ts, func(l *lesson) { found = found || l.about.has(p) })
	return found
}

// lessonsCovering calls f with each lesson (learnt, told, partial, carried) that covers
// ts, about whichever partitions.
func (h *haveState) lessonsCovering(ts crdt.Timestamp, f func(*lesson)) {
	for _, ls := range h.learnt {
		for i := range ls {
			if ls[i].have.Covers(ts) {
				f(&ls[i])
			}
		}
	}
	for _, lessons := range []map[crdt.NodeID]lesson{h.told, h.partial} {
		if l, ok := lessons[ts.Node]; ok && l.have.Covers(ts) {
			f(&l)
		}
	}
	for i := range h.carried {
		if h.carried[i].have.Covers(ts) {
			f(&h.carried[i])
		}
	}
}

// knownIn returns what this node knows it holds in every one of the partitions of
// asked: per origin, the least over them of the best of what taught it about each
// (base knowledge, of a partition not gained; Throughs, carried or not; rounds), or
// nothing of an origin one of them knows nothing of. Ours are left out.
func (h *haveState) knownIn(asked *partitionSet) crdt.Bookmark {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out crdt.Bookmark
	first := true
	for p := range crdt.Partitions {
		if !asked.has(p) {
			continue
		}
		var k crdt.Bookmark
		if !h.anyGained || !h.gained.has(p) {
			k.Merge(h.have)
		}
		k.Merge(h.through)
		for _, l := range h.carried {
			if l.about.has(p) {
				k.Merge(l.have)
			}
		}
		for _, ls := range h.learnt {
			for i := range ls {
				if ls[i].about.has(p) {
					k.Merge(ls[i].have)
				}
			}
		}
		for _, lessons := range []map[crdt.NodeID]lesson{h.told, h.partial} {
			for _, l := range lessons {
				if l.about.has(p) {
					k.Merge(l.have)
				}
			}
		}
		if first {
			out, first = k, false
		} else {
			out = meet(out, k)
		}
		if out.IsZero() {
			break
		}
	}
	return out
}

// meet returns, per node, the earlier of a's and b's marks; a node missing in either is
// left out.
func meet(a, b crdt.Bookmark) crdt.Bookmark {
	var out crdt.Bookmark
	for _, ts := range a.Marks() {
		if o := b.Mark(ts.Node); !o.IsZero() {
			if o.Less(ts) {
				ts = o
			}
			out.Add(ts)
		}
	}
	return out
}

// base returns the base knowledge and the partitions it is not about.
func (h *haveState) base() (crdt.Bookmark, partitionSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gained
	for i := range g {
		g[i] |= h.dropping[i] // nor, while a handoff drops keys there, about those
	}
	return h.have.Clone(), g
}

// Have returns what this node holds: for each origin, itself included, a mark up to which
// it holds every write that origin stamped (with placement: in the partitions it held
// before its latest change of placement). The Bookmark is the caller's.
func (r *Replicator) Have() crdt.Bookmark {
	b, _ := r.have.base()
	b.Add(r.cfg.DB.Committed())
	return b
}

// maxKnownIn bounds the partitions haveOf answers about from what it learnt of each
// (haveState.knownIn, whose cost grows with them): Await pulls one.
const maxKnownIn = 8

// haveOf returns what this node knows it holds of the partitions in mask (nil: all) that
// it holds, and which those are (nil: all), with its own writes: the base knowledge, of
// the partitions it holds but those gained; or, when mask names only gained partitions,
// at most maxKnownIn of them (a pull of one partition, say, from a node that joined since
// or took over), what it knows of them all (haveState.knownIn).
func (r *Replicator) haveOf(mask []uint64) (crdt.Bookmark, []uint64) {
	b, gained := r.have.base()
	b.Add(r.cfg.DB.Committed())
	v := r.view.Load()
	if !v.sharded() {
		return b, nil // every partition is held, and known alike
	}
	about, asked := v.held(r.self), v.held(r.self)
	some := false
	for i := range about {
		if mask != nil && i < len(mask) {
			asked[i] &= mask[i]
		}
		about[i] = asked[i] &^ gained[i]
		some = some || about[i] != 0
	}
	if n := asked.count(); some || n == 0 || n > maxKnownIn {
		return b, about.words()
	}
	k := r.have.knownIn(asked)
	k.Add(r.cfg.DB.Committed())
	return k, asked.words()
}

// Covers reports at once, without waiting, whether this node holds everything b covers
// in partition p (AllPartitions: in every partition it holds).
func (r *Replicator) Covers(b crdt.Bookmark, p int) bool {
	if b.IsZero() {
		return true
	}
	m, _ := r.have.missing(b, r.self, p)
	return len(m) == 0
}

// ErrBehind is returned by Await when this node cannot show what a bookmark asks for: it
// did not arrive in time and no reachable node could supply it (its origin is cut off), or
// the bookmark is further ahead of this node's clock than MaxSkew allows.
var ErrBehind = errors.New("this node has not caught up with the bookmark")

// Awaited says how Await met a bookmark.
type Awaited int

const (
	Covered  Awaited = iota // held already
	Waited                  // held after waiting for replication
	Fetched                 // held after fetching from other nodes
	SetAside                // held but for marks nothing can bring, which were set aside
	Behind                  // not held: ErrBehind
)

var awaitedNames = [...]string{"covered", "waited", "fetched", "set_aside", "behind"}

// String returns the metric label of a.
func (a Awaited) String() string { return awaitedNames[a] }

// Await returns once this node holds everything b covers in partition p (AllPartitions:
// in every partition it holds; a request is about its caller's). It waits up to wait for
// replication to bring it; then it fetches what is missing by anti-entropy (pull only),
// from each missing mark's origin first, then from other live peers, until ctx ends or
// timeout (wait included) passes.
//
// Marks that cannot be waited for are set aside rather than refused: marks of this node
// (see haveState.missing), marks beyond what their origin itself reports holding (made up,
// or lost with a restored backup), and, once fetching did not help, marks older than
// forgetUnknownAfter of nodes not seen alive here for as long (gone, or made up). Otherwise, when ctx ends or the candidates
// are exhausted first, or when a mark is further ahead of local time than MaxSkew, Await
// returns ErrBehind.
func (r *Replicator) Await(ctx context.Context, b crdt.Bookmark, p int, wait, timeout time.Duration) (Awaited, error) {
	missing, changed := r.have.missing(b, r.self, p)
	if len(missing) == 0 {
		return r.awaited(Covered, time.Time{})
	}
	if p != AllPartitions && !r.HoldsPartition(p) {
		// Nothing vouches for a partition not held (coversLocked): waiting or pulling
		// cannot meet the bookmark here, and a pull would only copy leftovers to hand off.
		return r.awaited(Behind, time.Time{})
	}
	// Each waiting request holds a goroutine and wakes on every rise of what this node
	// holds: beyond maxAwaiting at once, the rest are told at once that the node is behind.
	if r.awaiting.Add(1) > maxAwaiting {
		r.awaiting.Add(-1)
		return r.awaited(Behind, time.Time{})
	}
	defer r.awaiting.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	limit := r.cfg.Now().Add(r.cfg.MaxSkew).UnixNano()
	for _, ts := range missing {
		if ts.Wall > limit {
			return r.awaited(Behind, start)
		}
	}
	if wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
	waiting:
		for {
			select {
			case <-changed:
			case <-timer.C:
				break waiting
			case <-ctx.Done():
				return r.awaited(Behind, start)
			}
			if missing, changed = r.have.missing(b, r.self, p); len(missing) == 0 {
				return r.awaited(Waited, start)
			}
		}
	}

	// Fetch from the origins and other live peers at once, each by a pull that began
	// after this call did (so after the bookmark's writes were acknowledged).
	set := make(map[crdt.Timestamp]bool) // marks set aside
	pending := func() []crdt.Timestamp {
		m, _ := r.have.missing(b, r.self, p)
		out := m[:0]
		for _, ts := range m {
			if !set[ts] {
				out = append(out, ts)
			}
		}
		return out
	}
	met := func() (Awaited, error) {
		if len(set) > 0 {
			return r.awaited(SetAside, start)
		}
		return r.awaited(Fetched, start)
	}
	type pulled struct {
		peer crdt.NodeID
		have crdt.Bookmark
		err  error
	}
	peers := r.fetchCandidates(missing, p)
	results := make(chan pulled, len(peers)) // buffered: a pull ends even when Await has
	for _, peer := range peers {
		go func() { // ends with ctx, which ends when Await returns
			have, err := r.fetchFrom(ctx, peer, p, start)
			results <- pulled{peer.ID, have, err}
		}()
	}
collect:
	for range peers {
		select {
		case res := <-results:
			if res.err == nil {
				for _, ts := range missing {
					if ts.Node == res.peer && res.have.Mark(res.peer).Less(ts) {
						set[ts] = true // beyond what its origin holds
					}
				}
			}
		case <-ctx.Done():
			break collect
		}
		if len(pending()) == 0 {
			return met()
		}
	}
	// Marks of nodes gone for longer than forgetUnknownAfter (or never seen alive here),
	// themselves older than that, are set aside: nothing can bring them any more.
	old := r.cfg.Now().Add(-forgetUnknownAfter)
	for _, ts := range pending() {
		if ts.Wall < old.UnixNano() && r.goneSince(ts.Node, old) {
			set[ts] = true
		}
	}
	if len(pending()) == 0 {
		return met()
	}
	r.log.Debug("bookmark not met", "missing", fmt.Sprint(pending()), "partition", p, "fetched_from", len(peers))
	return r.awaited(Behind, start)
}

// goneSince reports whether node is not a live peer and has not been one since t.
func (r *Replicator) goneSince(node crdt.NodeID, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, live := r.workers[node]; live {
		return false
	}
	r.have.mu.Lock()
	defer r.have.mu.Unlock()
	return r.have.lastLive[node].Before(t)
}

// forgetUnknownAfter is how long a node must have been gone (or never seen alive here),
// and how old its mark, for the mark to be set aside. Younger, it may be a node that joined
// a moment ago, one that is down for now, or one that went down before this node restarted;
// older, its writes have long reached every live node, or were lost with it.
const forgetUnknownAfter = 10 * time.Minute

// maxAwaiting bounds the requests that wait for a bookmark at once.
const maxAwaiting = 1024

// maxFetchPeers bounds the peers one Await fetches from.
const maxFetchPeers = 4

// fetchCandidates returns the live peers to fetch from: the origins of missing marks,
// then the holders of partition p (with placement), then other peers, at most
// maxFetchPeers in all.
func (r *Replicator) fetchCandidates(missing []crdt.Timestamp, p int) []Peer {
	var holders []Peer
	if p != AllPartitions {
		holders = r.Holders(p)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Peer
	seen := make(map[crdt.NodeID]bool)
	for _, ts := range missing {
		if w, ok := r.workers[ts.Node]; ok && !seen[ts.Node] {
			seen[ts.Node] = true
			out = append(out, w.peer)
		}
	}
	for _, h := range holders {
		if _, live := r.workers[h.ID]; live && !seen[h.ID] && len(out) < maxFetchPeers {
			seen[h.ID] = true
			out = append(out, h)
		}
	}
	for id, w := range r.workers { // map order: a random choice among the others
		if len(out) >= maxFetchPeers {
			break
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, w.peer)
		}
	}
	return out[:min(len(out), maxFetchPeers)]
}

func (r *Replicator) awaited(a Awaited, start time.Time) (Awaited, error) {
	if m := r.cfg.Metrics; m != nil {
		m.awaits[a].Inc()
		if !start.IsZero() {
			m.AwaitSeconds.Observe(time.Since(start).Seconds())
		}
	}
	if a == Behind {
		return a, ErrBehind
	}
	return a, nil
}

// fetchKey names a pull: from a peer, of one partition (AllPartitions: of every
// partition held).
type fetchKey struct {
	peer crdt.NodeID
	p    int
}

// fetch is one pull from a peer, shared by every Await that asks for it meanwhile.
type fetch struct {
	started time.Time
	done    chan struct{}
	have    crdt.Bookmark // what the peer held; valid once done, if err is nil
	err     error
}

// minFetchInterval spaces the pulls of one partition started from one peer: however many
// requests with bookmarks this node cannot meet arrive (a client may send made-up ones),
// it pulls each partition from each peer at most this often.
const minFetchInterval = 50 * time.Millisecond

// fetchFrom pulls partition p (AllPartitions: every partition held) from peer by
// anti-entropy and returns what the peer held. A pull of one partition is answered with
// what the peer knows of that partition, also when the peer itself gained it since (see
// haveOf): a node that joined, or took over from one that failed, learns it from the
// nodes that hold it, whatever became of the writes' origins. The pull began at or after
// since: a pull in flight that began earlier is waited out, one that began later is
// joined. Pulls of one partition from one peer start at most every minFetchInterval, and
// run on the replicator's own context, bounded by FetchTimeout, so a caller that gives up
// does not cut one short for the others.
func (r *Replicator) fetchFrom(ctx context.Context, peer Peer, p int, since time.Time) (crdt.Bookmark, error) {
	for {
		f, wait, err := r.startFetch(peer, p)
		if err != nil {
			return crdt.Bookmark{}, err
		}
		if f == nil {
			timer := time.NewTimer(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return crdt.Bookmark{}, ctx.Err()
			}
			continue
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return crdt.Bookmark{}, ctx.Err()
		}
		if !f.started.Before(since) {
			return f.have, f.err
		}
	}
}

// startFetch returns the pull of partition p from peer to wait for: one in flight (which
// may have begun before the caller's), or a new one; or, when the last began less than
// minFetchInterval ago, nil and how long to wait before asking again.
func (r *Replicator) startFetch(peer Peer, p int) (*fetch, time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.ctx == nil {
		return nil, 0, errors.New("replicator closed")
	}
	if err := r.cfg.Guard.Admit(peer.Name); err != nil {
		return nil, 0, err // a peer that sent invalid replies: not asked again yet
	}
	h := &r.have
	h.mu.Lock()
	defer h.mu.Unlock()
	sharded := r.view.Load().sharded()
	if !sharded {
		p = AllPartitions // every node holds every partition: one pull serves them all
	}
	key := fetchKey{peer.ID, p}
	if f, ok := h.fetching[key]; ok {
		return f, 0, nil
	}
	now := time.Now()
	if wait := h.lastFetch[key].Add(minFetchInterval).Sub(now); wait > 0 {
		return nil, wait, nil
	}
	f := &fetch{started: now, done: make(chan struct{})}
	h.fetching[key] = f
	h.lastFetch[key] = now
	var only *partitionSet
	if p != AllPartitions {
		only = new(partitionSet)
		only.add(p)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		fctx, cancel := context.WithTimeout(r.ctx, r.cfg.FetchTimeout)
		defer cancel()
		res, err := r.syncIn(fctx, peer, true, only)
		have := res.have
		if err == nil && !res.complete {
			err = errors.New("anti-entropy with " + peer.Name + " did not complete")
		}
		f.have, f.err = have, err
		h.mu.Lock()
		delete(h.fetching, key)
		h.mu.Unlock()
		close(f.done)
		r.cfg.Metrics.fetched(err)
	}()
	return f, 0, nil
}
