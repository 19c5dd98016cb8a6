package storage

import (
	"bytes"
	"strings"
	"sync"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// contestedNames is the set of usernames whose claim record names more than one account:
// names registered concurrently in partitioned parts of the cluster, a rare event. It
// only grows (a claim is never withdrawn), so readers can trust a name's absence from it.
// Safe for concurrent use.
type contestedNames struct {
	mu    sync.RWMutex
	names map[string]struct{}
}

func (c *contestedNames) has(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.names[name]
	return ok
}

// note adds the name of claim record key (state m) if m names more than one account.
func (c *contestedNames) note(key string, m *crdt.Map) {
	if m.Len() < 2 || len(crdt.Claimants(m)) < 2 {
		return
	}
	name := strings.TrimPrefix(key, crdt.ClaimPrefix)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names == nil {
		c.names = make(map[string]struct{})
	}
	c.names[strings.Clone(name)] = struct{}{}
}

// load notes every contested name among the stored claim records.
func (c *contestedNames) load(btx *bolt.Tx) error {
	cur := btx.Bucket(bucketRecords).Cursor()
	prefix := []byte(crdt.ClaimPrefix)
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		m, _, err := decodeRecord(string(k), v)
		if err != nil {
			return err
		}
		c.note(string(k), &m)
	}
	return nil
}

// Contested reports whether the claim record of username, as this node holds it, names
// more than one account. A name that is not contested belongs to its one claimant, so a
// caller can skip reading its claim record. Once a contested claim record is committed
// here, Contested reports true for it (possibly from just before the commit). Safe for
// concurrent use; it allocates nothing.
func (db *DB) Contested(username string) bool { return db.contested.has(username) }
