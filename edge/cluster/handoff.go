package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
	"github.com/sessiond/sessiond/storage"
)

// Handoff: a node stores keys it does not hold when placement moved their partitions
// away from it, or when it accepted writes for partitions it never held. It offers them
// to their holders and drops them only once every holder in its region confirmed
// holding the same state, so no key is ever held by nobody: until then it keeps them,
// and keeps offering. Holders in other regions get them from their region's holders by
// anti-entropy, as they get everything — but for a key that carries a write of this
// node's own (or carried one that another node's write has since replaced; markOwn):
// its pushes to another region's holder may never have delivered it, and once it is
// dropped, this node's rounds with that holder cannot bring it while its pushes'
// Through still counts it (bookmarks.go). Such a key waits for the holders of
// every region, and not only those of the placement over the live peers but also those
// of the placement over every member, joining and down ones too (SetMembership): a holder
// that failed, or that a partition hides, comes back holding what it held, without what
// it missed, and a joining node that caught up before the write takes its share without
// it; such keys wait for them (or for membership to forget a failed one).
//
// A round offers each holder all its leaves at once: one offer per holder, in as few
// requests as the message budget allows. It never waits on one peer for long: each call
// of an offer is bounded by Config.OfferTimeout, and a peer that does not answer in time
// is offered nothing more in that round, so a peer that hangs costs a round one timeout,
// and the other holders' keys are confirmed and dropped all the same; a peer whose
// request fails at once (a lost message, a refusal) still gets the offer's next
// requests. Keys a holder did not confirm are kept until it confirms them in a later
// round (confirmations gather over rounds, for as long as the key and the placement stay
// as they were: Replicator.confirmedBefore), and a round that failed is tried again soon
// (handoffRetry), not only at the next periodic one.

// DefaultOfferTimeout is Config.OfferTimeout's default.
const DefaultOfferTimeout = 10 * time.Second

// errOfferTimeout marks a call of an offer that the holder did not answer within
// Config.OfferTimeout.
var errOfferTimeout = errors.New("no answer within the offer timeout")

// timedOut returns err, marked errOfferTimeout when call, the context of one call
// derived from ctx with the offer timeout, ended by its own deadline.
func timedOut(ctx, call context.Context, err error) error {
	if err != nil && ctx.Err() == nil && errors.Is(call.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", errOfferTimeout, err)
	}
	return err
}

// handoffRetry is the wait before a failed handoff round is tried again; it doubles with
// each failure in a row, up to the periodic round's period (Config.AntiEntropyEvery).
// Over a lossy network most rounds of a busy node fail somewhere, so the retries stay
// few: a handful per run of failures before the periodic pace resumes.
const handoffRetry = 250 * time.Millisecond

// handoff runs handoff rounds until ctx ends: after each placement change, periodically,
// and soon after a round that failed. The Replicator's Start runs it; it returns when
// ctx ends.
func (r *Replicator) handoff(ctx context.Context) {
	timer := time.NewTimer(r.jitter())
	defer timer.Stop()
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.replanned:
		}
		next := r.jitter()
		if err := r.HandoffRound(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, handoffRetry), next)
			next = backoff
			r.log.Debug("handoff round failed", slog.Any("err", err), "retry_in", next)
		} else {
			backoff = 0
		}
		timer.Reset(next) // a tick that fired during the round is not received (Go 1.23 timers)
	}
}

// HandoffStatus is what a node stores without holding it, as of its latest handoff round.
type HandoffStatus struct {
	Partitions int // partitions with keys this node stores and does not hold
	Keys       int // those keys
	Dropped    int // keys dropped since start, their holders having confirmed them
}

// Handoff returns the state of handoff as of the latest round: what the round found
// stored without being held, less what it dropped. A round publishes what it found
// before it offers anything, so a round held up by its peers does not leave an older
// figure standing. Safe for concurrent use.
func (r *Replicator) Handoff() HandoffStatus {
	r.handoffMu.Lock()
	defer r.handoffMu.Unlock()
	return r.handoffStatus
}

// setHandoff publishes what a round found stored without being held, and adds dropped
// to the keys dropped since start.
func (r *Replicator) setHandoff(partitions, keys, dropped int) {
	r.handoffMu.Lock()
	defer r.handoffMu.Unlock()
	r.handoffStatus.Partitions, r.handoffStatus.Keys = partitions, keys
	r.handoffStatus.Dropped += dropped
}

// strayLeaf is a digest leaf with the keys this node stores there without holding them.
type strayLeaf struct {
	leaf  int
	extra []storage.KeyHash
}

// strays returns the leaves where this node stores keys that keep (the placement it
// holds by, or will once joined) gives it no home of, with those keys, and how many
// distinct keys they are (a key with two homes lies in two leaves). It reads only the
// local file.
func (r *Replicator) strays(ctx context.Context, keep *view) ([]strayLeaf, int, error) {
	mine := keep.held(r.self)
	d := r.cfg.DB.Digest()
	var out []strayLeaf
	seen := map[string]bool{}
	for p := range crdt.Partitions {
		if d.Leaf(p) == 0 || mine.has(p) {
			continue
		}
		pairs, err := r.cfg.DB.LeafPairs(ctx, p)
		if err != nil {
			return nil, 0, err
		}
		var extra []storage.KeyHash
		for _, kh := range pairs {
			if !keep.holds(r.self, kh.Key) {
				extra = append(extra, kh)
				seen[kh.Key] = true
			}
		}
		if len(extra) > 0 { // else every key of the leaf has another home we hold
			out = append(out, strayLeaf{leaf: p, extra: extra})
		}
	}
	return out, len(seen), nil
}

// HandoffRound offers every key this node stores without holding it (nor, while it is
// joining, going to hold it) to the holders of its homes in this node's region (a key
// with a write of its own: in every region, joining and down members counted; see
// confirmers), and drops the keys all of them confirmed. A holder that lacks a key, or
// holds it differently, is pushed our state (and we merge theirs), and the key waits for
// the next round. Keys whose holders are not all live peers now (one is down) are kept,
// and so are those of a holder that failed an offer: each call of an offer is bounded by
// Config.OfferTimeout, and a holder that timed out is offered nothing more this round,
// while the others still are. It publishes what it found (Handoff) before offering, and
// again after dropping. It returns the first error; the keys it could not offer wait.
// Rounds run one at a time.
func (r *Replicator) HandoffRound(ctx context.Context) error {
	r.roundMu.Lock() // one round at a time: a round run by hand waits for the loop's
	defer r.roundMu.Unlock()
	v := r.view.Load()
	if !v.sharded() {
		return nil
	}
	// A joining node holds nothing yet, but keeps what it will hold once it has joined
	// (it is catching up on it): handing that off would only make it fetch it again.
	keep := v
	r.mu.Lock()
	if r.joining {
		keep = newView(r.selfPeer(), r.peers, r.cfg.Replicas, false)
	}
	r.mu.Unlock()
	leaves, keys, err := r.strays(ctx, keep)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	r.setHandoff(len(leaves), keys, 0)
	if len(leaves) == 0 {
		return nil
	}
	r.mu.Lock() // both lists as one SetMembership left them
	peers, down := r.livePeersLocked(), slices.Clone(r.down)
	r.mu.Unlock()
	others := slices.Collect(maps.Values(peers))
	who := newConfirmers(v.table, r.cfg.Region, slices.Concat(others, down), r.cfg.Replicas)
	var (
		first     error
		confirmed = map[string]map[crdt.NodeID]bool{} // key → holders that confirmed it
		offered   = map[string]uint64{}               // key → the hash offered
		plan      = map[crdt.NodeID][]strayLeaf{}     // confirmer → the leaves to offer it
		order     []crdt.NodeID                       // the confirmers, in the order found
	)
	if r.confirmedUnder != v.fingerprint {
		r.confirmedBefore, r.confirmedUnder = nil, v.fingerprint
	}
	for _, sl := range leaves {
		for _, kh := range sl.extra {
			offered[kh.Key] = kh.Hash
			if c, ok := r.confirmedBefore[kh.Key]; ok && c.hash == kh.Hash {
				confirmed[kh.Key] = c.by
			}
		}
		anyOwn, err := r.markOwn(ctx, sl.extra, who.own)
		if err != nil {
			return fmt.Errorf("handoff: %w", err)
		}
		for _, m := range who.of(sl.leaf, anyOwn) {
			if _, ok := peers[m.ID]; !ok {
				continue // not confirmable now; kept
			}
			if plan[m.ID] == nil {
				order = append(order, m.ID)
			}
			plan[m.ID] = append(plan[m.ID], sl)
		}
	}
	// One offer per holder, of every leaf it is a confirmer of: a round costs a call per
	// holder (and per budget's worth of keys), not one per partition and holder.
	for _, id := range order {
		peer := peers[id]
		got, err := r.offer(ctx, peer, plan[id])
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if first == nil {
				first = fmt.Errorf("handoff to %s: %w", peer.Name, err)
			}
		}
		for _, key := range got {
			if confirmed[key] == nil {
				confirmed[key] = map[crdt.NodeID]bool{}
			}
			confirmed[key][id] = true
		}
	}
	var drop []storage.KeyHash
	r.confirmedBefore = make(map[string]confirmation, len(offered))
	for key, hash := range offered {
		if who.allConfirmed(key, confirmed[key]) {
			drop = append(drop, storage.KeyHash{Key: key, Hash: hash})
		} else if len(confirmed[key]) > 0 {
			r.confirmedBefore[key] = confirmation{hash: hash, by: confirmed[key]}
		}
	}
	if len(drop) == 0 {
		return first
	}
	// What to drop was decided under v. If this node has gained some of those partitions
	// since (a holder failed), a round may already have compared them with the strays
	// still here and taught that this node holds them: dropping would leave it vouching
	// for writes it no longer has. So drop only while the placement is still v (the next
	// round, which the replan wakes, offers again), and fence the drop against a replan
	// that races it (haveState.beginDrop/endDrop).
	var parts partitionSet
	for _, kh := range drop {
		parts.addHomes([]string{kh.Key})
	}
	if !r.have.beginDrop(v.fingerprint, &parts) {
		return first
	}
	n, err := r.cfg.DB.Drop(ctx, drop)
	if r.have.endDrop() {
		r.syncAll() // partitions gained again: learn them anew
	}
	if err != nil {
		return err
	}
	r.log.Debug("dropped keys their holders confirmed", "keys", n, "offered", len(offered))
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.Dropped.Add(float64(n))
	}
	// What is left: read again, as a key that changed since it was offered, or a
	// conversation not wholly confirmed, stays.
	left, leftKeys, err := r.strays(ctx, keep)
	if err != nil {
		r.setHandoff(len(leaves), max(keys-n, 0), n) // every key dropped was one offered
		return fmt.Errorf("handoff: %w", err)
	}
	r.setHandoff(len(left), leftKeys, n)
	return first
}

// confirmation is what handoff rounds learnt of one stray key: the holders that
// confirmed holding it exactly as this node stores it (hash).
type confirmation struct {
	hash uint64
	by   map[crdt.NodeID]bool
}

// confirmers are the members whose confirmation a stray key needs before it is dropped:
// the holders of its homes in this node's region, by the placement over the live
// members; for a key with a write of this node's own (own), in every region, by that
// placement and by the placement over every member, joining or down.
type confirmers struct {
	live, known *placement.Table
	region      string
	own         map[string]bool
}

// newConfirmers returns the confirmers of a node of region by live, the placement over
// the live members, and more, other members (joining ones, and those membership sees
// failed), with replicas holders per partition. A member of more named as one of live is
// left out.
func newConfirmers(live *placement.Table, region string, more []Peer, replicas int) confirmers {
	c := confirmers{live: live, known: live, region: region, own: make(map[string]bool)}
	ms := live.Members()
	n := len(ms)
	for _, p := range more {
		if !slices.ContainsFunc(ms, func(m placement.Member) bool { return m.Name == p.Name }) {
			ms = append(ms, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
		}
	}
	if len(ms) > n {
		c.known = placement.New(ms, replicas)
	}
	return c
}

// of returns the confirmers of partition p: its live holders in this node's region, or,
// everywhere, its holders in every region of either placement, each once.
func (c confirmers) of(p int, everywhere bool) []placement.Member {
	if !everywhere {
		return c.live.Owners(c.region, p)
	}
	var out []placement.Member
	for _, t := range [...]*placement.Table{c.live, c.known} {
		for _, region := range t.Regions() {
			for _, m := range t.Owners(region, p) {
				if !slices.ContainsFunc(out, func(o placement.Member) bool { return o.ID == m.ID }) {
					out = append(out, m)
				}
			}
		}
		if c.known == c.live {
			break
		}
	}
	return out
}

// allConfirmed reports whether every confirmer of key's homes confirmed it (by).
func (c confirmers) allConfirmed(key string, by map[crdt.NodeID]bool) bool {
	for _, p := range crdt.KeyHomes(key).Append(make([]int, 0, 2)) {
		owners := c.of(p, c.own[key])
		if len(owners) == 0 {
			return false
		}
		for _, m := range owners {
			if !by[m.ID] {
				return false
			}
		}
	}
	return true
}

// markOwn adds to own those of keys (the strays of one leaf: their records are read a
// leaf at a time) that carry, or carried, a write of this node's own, and reports
// whether any does. A key carries one when its state shows it (see ownSince); it carried
// one when storage remembers a write of ours there that the state lost (DB.Replaced: a
// remote write replaced it, or an erasure marker purged it), which it does in the file,
// across restarts, for as long as the key is stored: the write the state no longer
// shows is still one this node's pushes vouch for, and what replaced it may not have
// reached every holder either. A conversation's entries are judged together: a message
// of ours that an erasure marker purged leaves only the marker, which is then as much
// ours as the message was.
func (r *Replicator) markOwn(ctx context.Context, keys []storage.KeyHash, own map[string]bool) (bool, error) {
	names := make([]string, len(keys))
	for i, kh := range keys {
		names[i] = kh.Key
	}
	changes, err := r.cfg.DB.Changes(ctx, names)
	if err != nil {
		return false, err
	}
	replaced, err := r.cfg.DB.Replaced(ctx, names)
	if err != nil {
		return false, err
	}
	owned := make(map[string]bool) // ownGroup → carries or carried a write of ours
	for _, c := range changes {
		if _, ok := r.ownSince(c, crdt.Timestamp{}); ok {
			owned[ownGroup(c.Key)] = true
		}
	}
	for key := range replaced {
		owned[ownGroup(key)] = true
	}
	found := false
	for _, c := range changes {
		if owned[ownGroup(c.Key)] {
			own[c.Key], found = true, true
		}
	}
	return found, nil
}

// ownGroup returns what key is judged with in markOwn: the key itself, or for a message
// log entry its conversation (no record key starts with convGroup).
func ownGroup(key string) string {
	if conv, _, ok := storage.ParseLogKey(key); ok {
		return convGroup + conv
	}
	return key
}

// convGroup prefixes a conversation's group in markOwn.
const convGroup = "\x00conv "

// offer compares the keys of leaves with peer (only those: LeafPairs.Only), merges the
// peer's differing states, pushes ours where the peer lacks them or differs, and returns
// the keys the peer holds exactly as offered. Leaves too many for one message go in
// several requests. Each call to the peer is bounded by Config.OfferTimeout; waiting for
// the move rate is not. A request that fails at once (a lost message, a refusal) leaves
// its keys unconfirmed and the next request is still made; one that timed out ends the
// offer, as the peer would likely cost a timeout per request. It returns the keys
// confirmed, in every request made, and the first error.
func (r *Replicator) offer(ctx context.Context, peer Peer, leaves []strayLeaf) ([]string, error) {
	var (
		same  []string
		first error
	)
	extra := make(map[int][]storage.KeyHash, len(leaves))
	ids := make([]int, len(leaves))
	for i, sl := range leaves {
		extra[sl.leaf], ids[i] = sl.extra, sl.leaf
	}
	pairsOf := func(leaf int) ([]storage.KeyHash, error) { return extra[leaf], nil }
	for req, err := range leafRequests(ids, r.budget(), pairsOf) {
		if err != nil {
			return same, err
		}
		got, err := r.offerRequest(ctx, peer, req)
		same = append(same, got...)
		first = cmp.Or(first, err)
		if err != nil && (ctx.Err() != nil || errors.Is(err, errOfferTimeout)) {
			return same, first
		}
	}
	return same, first
}

// offerRequest makes one request of an offer (see offer) and returns the keys peer holds
// exactly as offered: those its reply compared equal, also when applying its differing
// states or pushing ours then fails (the error is returned with them).
func (r *Replicator) offerRequest(ctx context.Context, peer Peer, req LeavesRequest) ([]string, error) {
	for i := range req.Leaves {
		req.Leaves[i].Only = true
	}
	req.Version = peer.Proto
	cctx, cancel := context.WithTimeout(ctx, r.cfg.OfferTimeout)
	rep, err := r.cfg.Transport.Leaves(cctx, peer, req)
	err = timedOut(ctx, cctx, err)
	cancel()
	if err == nil {
		err = checkLeavesReply(req, rep)
	}
	if err != nil {
		return nil, r.replyErr(peer, "leaves", err)
	}
	want := make(map[string]bool, len(rep.Want))
	for _, k := range rep.Want {
		want[k] = true
	}
	var same, give []string
	for _, lp := range req.Leaves {
		for _, kh := range lp.Pairs {
			if want[kh.Key] {
				give = append(give, kh.Key)
			} else {
				same = append(same, kh.Key)
			}
		}
	}
	if len(rep.Changes) > 0 {
		res, err := r.cfg.DB.ApplyRemote(ctx, rep.Changes)
		if err != nil {
			return same, err
		}
		r.count(res)
	}
	if len(give) > 0 {
		changes, err := r.cfg.DB.Changes(ctx, give)
		if err != nil {
			return same, err
		}
		if err := r.pushEach(ctx, peer, changes, r.cfg.OfferTimeout); err != nil {
			return same, err
		}
	}
	return same, nil
}

// syncAll makes every worker run an anti-entropy round soon.
func (r *Replicator) syncAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		poke(w.sync)
	}
}

// livePeers returns the live peers by ID.
func (r *Replicator) livePeers() map[crdt.NodeID]Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.livePeersLocked()
}

// livePeersLocked is livePeers with r.mu held.
func (r *Replicator) livePeersLocked() map[crdt.NodeID]Peer {
	out := make(map[crdt.NodeID]Peer, len(r.workers))
	for id, w := range r.workers {
		out[id] = w.peer
	}
	return out
}
