package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
)

// What each node holds. With Config.Replicas 0 every node holds every partition and
// replication is all-to-all. With Replicas N, each region's live members share the
// partitions by placement.Table, N holders per partition in each region, and:
//
//   - a push carries a change only to peers that hold one of its homes (crdt.KeyHomes),
//     in any region;
//   - anti-entropy with a peer compares only the partitions the peer holds that this
//     node holds or has data in (a leftover from an earlier placement, or a write it
//     accepted for others): the digest request carries that set as a mask, and both
//     sides compare the masked digests;
//   - what a node knows it holds (bookmarks; see bookmarks.go) is valid for one
//     placement only: a push's Through counts when sender and receiver agree on the
//     placement (its fingerprint), an anti-entropy round's Have when the round covered
//     every partition this node holds, and a change of placement forgets what the old
//     one taught.

// view is one placement as the replicator uses it. Immutable.
type view struct {
	table       *placement.Table // nil: every node holds everything
	fingerprint uint64           // 0 when table is nil
}

// newView returns the placement of self and peers with replicas holders per partition
// and region (0: all). Joining peers, and self when selfJoining, hold nothing yet.
func newView(self Peer, peers []Peer, replicas int, selfJoining bool) *view {
	if replicas <= 0 {
		return &view{}
	}
	ms := make([]placement.Member, 0, len(peers)+1)
	if !selfJoining {
		ms = append(ms, placement.Member{Name: self.Name, ID: self.ID, Region: self.Region})
	}
	for _, p := range peers {
		if !p.Joining {
			ms = append(ms, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
		}
	}
	t := placement.New(ms, replicas)
	h := fnv.New64a()
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(replicas)))
	for _, m := range t.Members() { // sorted: the fingerprint does not depend on order
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(m.ID)))
		h.Write([]byte(m.Name))
		h.Write([]byte{0})
		h.Write([]byte(m.Region))
		h.Write([]byte{0})
	}
	return &view{table: t, fingerprint: h.Sum64() | 1} // never 0: 0 is "everyone holds everything"
}

// sharded reports whether nodes hold parts of the data.
func (v *view) sharded() bool { return v.table != nil }

// holds reports whether node holds one of key's homes.
func (v *view) holds(node crdt.NodeID, key string) bool {
	if v.table == nil {
		return true
	}
	h := crdt.KeyHomes(key)
	if v.table.Owns(node, h.First()) {
		return true
	}
	s, ok := h.Second()
	return ok && v.table.Owns(node, s)
}

// partitionSet is a set of partitions, a bit each.
type partitionSet [crdt.Partitions / 64]uint64

func (s *partitionSet) add(p int)       { s[p>>6] |= 1 << (p & 63) }
func (s *partitionSet) has(p int) bool  { return s[p>>6]&(1<<(p&63)) != 0 }
func (s *partitionSet) words() []uint64 { return s[:] }

// count returns how many partitions s holds.
func (s *partitionSet) count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// addHomes adds the partitions of keys' homes (crdt.KeyHomes).
func (s *partitionSet) addHomes(keys []string) {
	for _, k := range keys {
		homes := crdt.KeyHomes(k)
		s.add(homes.First())
		if p, ok := homes.Second(); ok {
			s.add(p)
		}
	}
}
func (s *partitionSet) coversAll(o *partitionSet) bool {
	for i := range s {
		if o[i]&^s[i] != 0 {
			return false
		}
	}
	return true
}

// held returns the partitions node holds by this placement (all of them when not
// sharded).
func (v *view) held(node crdt.NodeID) *partitionSet {
	var s partitionSet
	if v.table == nil {
		for i := range s {
			s[i] = ^uint64(0)
		}
		return &s
	}
	for _, p := range v.table.Partitions(node) {
		s.add(p)
	}
	return &s
}

// heldWords returns the partitions node holds, as a mask for the wire; nil when every
// node holds everything.
func (v *view) heldWords(node crdt.NodeID) []uint64 {
	if v.table == nil {
		return nil
	}
	return v.held(node).words()
}

// syncMask returns what self compares with peer in an anti-entropy round: the
// partitions peer holds that self holds or has data in (a non-empty leaf of d). It
// returns nil when not sharded: everything.
func (v *view) syncMask(self, peer crdt.NodeID, d *crdt.Digest) *partitionSet {
	if v.table == nil {
		return nil
	}
	theirs, mine := v.held(peer), v.held(self)
	var m partitionSet
	for p := range crdt.Partitions {
		if theirs.has(p) && (mine.has(p) || d.Leaf(p) != 0) {
			m.add(p)
		}
	}
	return &m
}

// Sharded reports whether nodes hold parts of the data, so that a request may have to be
// served by another node (Config.Replicas > 0).
func (r *Replicator) Sharded() bool { return r.view.Load().sharded() }

// HoldsPartition reports whether this node holds partition p by the current placement.
func (r *Replicator) HoldsPartition(p int) bool {
	v := r.view.Load()
	return v.table == nil || v.table.Owns(r.self, p)
}

// Holders returns the live peers that hold partition p, in the order to ask them: this
// node's region first, in placement order, then the other regions', by name of region.
// The slice is the caller's.
func (r *Replicator) Holders(p int) []Peer {
	v := r.view.Load()
	if v.table == nil {
		return nil
	}
	peers := r.livePeers()
	var out []Peer
	add := func(region string) {
		for _, m := range v.table.Owners(region, p) {
			if pr, ok := peers[m.ID]; ok {
				out = append(out, pr)
			}
		}
	}
	add(r.cfg.Region)
	var regions []string
	for _, m := range v.table.Members() {
		if m.Region != r.cfg.Region && (len(regions) == 0 || regions[len(regions)-1] != m.Region) {
			regions = append(regions, m.Region)
		}
	}
	for _, region := range regions {
		add(region)
	}
	return out
}

// Share returns how many partitions node holds by the current placement (every one
// without placement), its region's ideal share, and false for a node not in it (not
// alive here).
func (r *Replicator) Share(node crdt.NodeID, region string) (int, float64, bool) {
	v := r.view.Load()
	if v.table == nil {
		return crdt.Partitions, crdt.Partitions, true
	}
	n := v.table.Share(node)
	return n, v.table.Ideal(region), n > 0
}

// HoldsKey reports whether this node holds one of key's homes by the current placement.
func (r *Replicator) HoldsKey(key string) bool { return r.view.Load().holds(r.self, key) }

// ReadRecords reads records this node does not hold from nodes that do: for each key,
// the holders of its first home, in Holders order, until one answers. It returns the
// states of the keys found (a key absent from the map exists nowhere the holder knows
// of), or an error when every holder of some key failed. Nothing read is stored here.
func (r *Replicator) ReadRecords(ctx context.Context, keys []string) (map[string]crdt.Map, error) {
	out := make(map[string]crdt.Map, len(keys))
	byPartition := map[int][]string{}
	for _, k := range keys {
		p := crdt.KeyHomes(k).First()
		byPartition[p] = append(byPartition[p], k)
	}
	for p, ks := range byPartition {
		var req LeavesRequest
		for _, k := range ks {
			// A range that holds exactly k: the holder sends its state, as to a replica
			// that lacks it.
			req.Leaves = append(req.Leaves, LeafPairs{Leaf: p, From: k, To: k + "\x00"})
		}
		var err error
		read := false
		for _, peer := range r.Holders(p) {
			var rep LeavesReply
			if rep, err = r.cfg.Transport.Leaves(ctx, peer, req); err != nil {
				if ctx.Err() != nil {
					return nil, err
				}
				continue
			}
			for _, c := range rep.Changes {
				if c.Conv == "" && slices.Contains(ks, c.Key) {
					out[c.Key] = c.Map
				}
			}
			read = !rep.Truncated
			break
		}
		if !read {
			if err == nil {
				err = errors.New("no holder answered in full")
			}
			return nil, fmt.Errorf("read records of partition %d: %w", p, err)
		}
	}
	return out, nil
}
