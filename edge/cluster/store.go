package cluster

import (
	"context"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// Store is what replication needs of a node's replica: its identity, its digest and the
// keys of a digest leaf, its change feed, the changes of given keys, the merge of remote
// changes, and the dropping of keys handed off. *storage.DB implements it; the methods'
// contracts are storage's. Implementations must be safe for concurrent use.
type Store interface {
	NodeID() crdt.NodeID
	// Committed returns a mark up to which every write of this node is committed.
	Committed() crdt.Timestamp
	Digest() crdt.Digest
	LeafPairs(ctx context.Context, leaf int) ([]storage.KeyHash, error)
	FeedSeq() uint64
	ChangesSince(ctx context.Context, seq uint64, limit int) ([]storage.Change, uint64, error)
	Changes(ctx context.Context, keys []string) ([]storage.Change, error)
	ApplyRemote(ctx context.Context, changes []storage.Change) (storage.ApplyResult, error)
	Overtaken(key string) (crdt.Timestamp, bool)
	Replaced(ctx context.Context, keys []string) (map[string]crdt.Timestamp, error)
	Drop(ctx context.Context, pairs []storage.KeyHash) (int, error)
}

var _ Store = (*storage.DB)(nil)
