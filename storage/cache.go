package storage

import (
	"sync"

	"github.com/sessiond/sessiond/crdt"
)

// recordCache keeps the decoded state of records recently read by Record and Records, so
// that the records nearly every request reads — the caller's session and user — are
// decoded once per change instead of once per request. It holds at most max records and
// evicts one at random (Go's map order) to make room.
//
// It never serves a state older than the last commit published to it:
//
//   - After each durable commit, and before any of its writers is answered, the
//     committer replaces or drops every cached record the commit wrote or deleted
//     (publish). A writer therefore reads its own acknowledged write, and so does
//     everyone after it.
//   - A reader that misses reads bbolt and then fills the cache only if no commit was
//     published since it looked (gen unchanged). A read that began before a commit and
//     fills after its publish is refused; one that fills before the publish is
//     overwritten by it, since the publish replaces every cached key the commit wrote.
//
// Cached maps are shared (crdt.Map.Share): readers get the cached state itself, without a
// copy, and whoever changes a Map it got — a reader, or the committer merging into a
// record it took from the cache — copies its fields first, so a cached state never
// changes. The committer stores the maps of its batch the same way.
type recordCache struct {
	max int

	mu    sync.RWMutex
	gen   uint64              // bumped by every publish
	items map[string]crdt.Map // record key → state; guarded by mu
}

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, items: make(map[string]crdt.Map)}
}

// get returns the cached state of key (shared: see recordCache), or false and the
// generation to pass to fill after reading the record from bbolt.
func (c *recordCache) get(key string) (m crdt.Map, hit bool, gen uint64) {
	c.mu.RLock()
	m, hit = c.items[key]
	gen = c.gen
	c.mu.RUnlock()
	return m, hit, gen
}

// fill caches m, the stored state of key read after get returned gen, unless a commit
// was published since. m must be shared (crdt.Map.Share) with whoever else holds it.
func (c *recordCache) fill(key string, m crdt.Map, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen || c.max <= 0 {
		return
	}
	if _, ok := c.items[key]; !ok && len(c.items) >= c.max {
		for k := range c.items {
			delete(c.items, k)
			break
		}
	}
	c.items[key] = m
}

// publish applies a durable commit's record writes: for each key written, its state
// after the commit, or nil if the commit deleted it. Keys not cached stay uncached.
func (c *recordCache) publish(writes map[string]*crdt.Map) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for key, m := range writes {
		if _, ok := c.items[key]; !ok {
			continue
		}
		if m == nil {
			delete(c.items, key)
		} else {
			c.items[key] = m.Share()
		}
	}
}
