package cluster

import (
	"context"
	"log/slog"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// Handoff: a node stores keys it does not hold when placement moved their partitions
// away from it, or when it accepted writes for partitions it never held. It offers them
// to their holders and drops them only once every holder in its own region confirmed
// holding the same state, so no key is ever held by nobody: until then it keeps them,
// and keeps offering. Holders in other regions get them from their region's holders by
// anti-entropy, as they get everything.

// handoff runs handoff rounds until ctx ends: after each placement change and
// periodically. The Replicator's Start runs it; it returns when ctx ends.
func (r *Replicator) handoff(ctx context.Context) {
	timer := time.NewTimer(r.jitter())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.replanned:
		}
		if err := r.HandoffRound(ctx); err != nil && ctx.Err() == nil {
			r.log.Debug("handoff round failed", slog.Any("err", err))
		}
		timer.Reset(r.jitter())
	}
}

// HandoffStatus is what a node stores without holding it, as of its latest handoff round.
type HandoffStatus struct {
	Partitions int // partitions with keys this node stores and does not hold
	Keys       int // those keys
	Dropped    int // keys dropped since start, their holders having confirmed them
}

// Handoff returns the state of handoff as of the latest round.
func (r *Replicator) Handoff() HandoffStatus {
	r.handoffMu.Lock()
	defer r.handoffMu.Unlock()
	return r.handoffStatus
}

// HandoffRound offers every key this node stores without holding it (nor, while it is
// joining, going to hold it) to the holders of its homes in this node's region, and
// drops the keys all of them confirmed. A holder that lacks a key, or holds it
// differently, is pushed our state (and we merge theirs), and the key waits for the next
// round. Keys whose holders are not all live peers now are kept. It returns the first
// error; the keys it could not offer wait.
func (r *Replicator) HandoffRound(ctx context.Context) error {
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
	mine := keep.held(r.self)
	d := r.cfg.DB.Digest()
	peers := r.livePeers()
	var (
		status    HandoffStatus
		first     error
		confirmed = map[string]map[crdt.NodeID]bool{} // key → holders that confirmed it
		offered   = map[string]uint64{}               // key → the hash offered
	)
	for p := range crdt.Partitions {
		if d.Leaf(p) == 0 || mine.has(p) {
			continue
		}
		pairs, err := r.cfg.DB.LeafPairs(ctx, p)
		if err != nil {
			return err
		}
		var extra []storage.KeyHash
		for _, kh := range pairs {
			if !keep.holds(r.self, kh.Key) {
				extra = append(extra, kh)
			}
		}
		if len(extra) == 0 {
			continue // every key of the leaf has another home we hold
		}
		status.Partitions++
		for _, kh := range extra {
			if _, seen := offered[kh.Key]; !seen {
				status.Keys++
			}
			offered[kh.Key] = kh.Hash
		}
		for _, m := range v.table.Owners(r.cfg.Region, p) {
			peer, ok := peers[m.ID]
			if !ok {
				continue // not confirmable now; kept
			}
			got, err := r.offer(ctx, peer, p, extra)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				if first == nil {
					first = err
				}
				continue
			}
			for _, key := range got {
				if confirmed[key] == nil {
					confirmed[key] = map[crdt.NodeID]bool{}
				}
				confirmed[key][m.ID] = true
			}
		}
	}
	var drop []storage.KeyHash
	for key, hash := range offered {
		if allConfirmed(v, r.cfg.Region, key, confirmed[key]) {
			drop = append(drop, storage.KeyHash{Key: key, Hash: hash})
		}
	}
	if len(drop) > 0 {
		n, err := r.cfg.DB.Drop(ctx, drop)
		if err != nil {
			return err
		}
		status.Dropped = n
		r.log.Debug("dropped keys their holders confirmed", "keys", n, "offered", len(offered))
		if r.cfg.Metrics != nil {
			r.cfg.Metrics.Dropped.Add(float64(n))
		}
	}
	r.handoffMu.Lock()
	status.Dropped += r.handoffStatus.Dropped
	r.handoffStatus = status
	r.handoffMu.Unlock()
	return first
}

// allConfirmed reports whether every holder of key's homes in region confirmed it.
func allConfirmed(v *view, region, key string, by map[crdt.NodeID]bool) bool {
	for _, p := range crdt.KeyHomes(key).Append(make([]int, 0, 2)) {
		owners := v.table.Owners(region, p)
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

// offer compares keys of leaf p with peer (only those: LeafPairs.Only), merges the
// peer's differing states, pushes ours where the peer lacks them or differs, and returns
// the keys the peer holds exactly as offered.
func (r *Replicator) offer(ctx context.Context, peer Peer, p int, keys []storage.KeyHash) ([]string, error) {
	var same []string
	pairsOf := func(int) ([]storage.KeyHash, error) { return keys, nil }
	for req, err := range leafRequests([]int{p}, r.budget(), pairsOf) {
		if err != nil {
			return nil, err
		}
		for i := range req.Leaves {
			req.Leaves[i].Only = true
		}
		req.Version = peer.Proto
		rep, err := r.cfg.Transport.Leaves(ctx, peer, req)
		if err == nil {
			err = checkLeavesReply(req, rep)
		}
		if err != nil {
			return nil, r.replyErr(peer, "leaves", err)
		}
		if len(rep.Changes) > 0 {
			res, err := r.cfg.DB.ApplyRemote(ctx, rep.Changes)
			if err != nil {
				return nil, err
			}
			r.count(res)
		}
		want := make(map[string]bool, len(rep.Want))
		for _, k := range rep.Want {
			want[k] = true
		}
		var give []string
		for _, lp := range req.Leaves {
			for _, kh := range lp.Pairs {
				if want[kh.Key] {
					give = append(give, kh.Key)
				} else {
					same = append(same, kh.Key)
				}
			}
		}
		if len(give) > 0 {
			changes, err := r.cfg.DB.Changes(ctx, give)
			if err != nil {
				return nil, err
			}
			if err := r.pushEach(ctx, peer, changes); err != nil {
				return nil, err
			}
		}
	}
	return same, nil
}

// livePeers returns the live peers by ID.
func (r *Replicator) livePeers() map[crdt.NodeID]Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[crdt.NodeID]Peer, len(r.workers))
	for id, w := range r.workers {
		out[id] = w.peer
	}
	return out
}
