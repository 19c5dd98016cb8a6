package edge

import (
	"context"
	"fmt"
	"sync"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// removedNodes is the set of node IDs removed from the cluster for good
// (crdt.RemovedPrefix): loaded from the store at start, and added to as such records
// commit, written here (removeMember) or replicated. Membership leaves those nodes out of
// the peers, and the sync server refuses their requests (cluster.Guard.SetRemoved). A
// node that finds its own ID in the set, or that a peer refuses as removed, must stop:
// gone is closed then (Node.Removed). Safe for concurrent use.
type removedNodes struct {
	mu      sync.RWMutex
	self    crdt.NodeID
	ids     map[crdt.NodeID]struct{}
	onAdd   func() // called after a node ID is added (membership re-reads its peers); must not block
	persist func() // records this node's own removal durably (see refused)

	once, refusal sync.Once
	gone          chan struct{}
}

func newRemovedNodes() *removedNodes {
	return &removedNodes{ids: make(map[crdt.NodeID]struct{}), gone: make(chan struct{})}
}

// maxRemovedLoad bounds the removed-node records read at start; an operator removes a
// node per machine lost, so this is never near.
const maxRemovedLoad = 1 << 16

// load sets this node's ID and reads the removed nodes' records from db.
func (r *removedNodes) load(ctx context.Context, db *storage.DB) error {
	r.mu.Lock()
	r.self = db.NodeID()
	r.mu.Unlock()
	keys, _, more, err := db.RecordsUnder(ctx, crdt.RemovedPrefix, maxRemovedLoad)
	if err != nil {
		return fmt.Errorf("read removed nodes: %w", err)
	}
	if more {
		return fmt.Errorf("read removed nodes: more than %d records under %s", maxRemovedLoad, crdt.RemovedPrefix)
	}
	for _, k := range keys {
		if id, ok := crdt.ParseRemovedKey(k); ok {
			r.add(id)
		}
	}
	return nil
}

// has reports whether id was removed.
func (r *removedNodes) has(id crdt.NodeID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.ids[id]
	return ok
}

// isSelfRemoved reports whether this node learned that it was removed.
func (r *removedNodes) isSelfRemoved() bool {
	select {
	case <-r.gone:
		return true
	default:
		return false
	}
}

// add records id as removed.
func (r *removedNodes) add(id crdt.NodeID) {
	r.mu.Lock()
	_, had := r.ids[id]
	r.ids[id] = struct{}{}
	self, onAdd := r.self, r.onAdd
	r.mu.Unlock()
	if id == self {
		r.selfRemoved()
	}
	if !had && onAdd != nil {
		onAdd()
	}
}

// setPersist sets persist; before the node can be refused (refused reads it once).
func (r *removedNodes) setPersist(persist func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.persist = persist
}

// setOnAdd sets onAdd. A removal that commits before it is set is taken in by
// membership's own first reading of its peers, or its next periodic one.
func (r *removedNodes) setOnAdd(onAdd func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onAdd = onAdd
}

// selfRemoved records that this node was removed: gone is closed.
func (r *removedNodes) selfRemoved() { r.once.Do(func() { close(r.gone) }) }

// refused is called when a peer refuses this node as removed (cluster.ErrRemoved). The
// node's store may lack its own removal record (it was gone when the record was written,
// and no peer sends anything to a removed node), so it writes that record first, on a
// goroutine of its own that ends once the write does (persist is bounded), so that the
// next Start refuses this data directory; then gone is closed. Must not block.
func (r *removedNodes) refused() {
	r.refusal.Do(func() {
		r.mu.RLock()
		persist := r.persist
		r.mu.RUnlock()
		go func() {
			if persist != nil {
				persist()
			}
			r.selfRemoved()
		}()
	})
}

// changed is the part of storage's commit hook that notes removed-node records.
func (r *removedNodes) changed(changes []storage.Change) {
	for i := range changes {
		if id, ok := crdt.ParseRemovedKey(changes[i].Key); ok {
			r.add(id)
		}
	}
}

// Removed is closed once this node learns that it was removed from the cluster for good
// (sessiond members remove) while it was gone: its ID is recorded removed, or a peer
// refused its sync requests as a removed node's. It must then stop, and must not start
// again with its data directory, which Start then refuses: wipe it, and the node joins
// under a new ID.
func (n *Node) Removed() <-chan struct{} { return n.removed.gone }
