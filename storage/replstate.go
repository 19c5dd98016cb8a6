package storage

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// metaReplication is the meta key of replication's own state (SaveReplicationState).
var metaReplication = []byte("replication_state")

// maxReplicationState bounds SaveReplicationState's value: replication keeps its floors
// there, a few dozen bytes for each of crdt.Partitions partitions.
const maxReplicationState = 1 << 20

// SaveReplicationState durably stores value, state of replication's own that must
// survive a restart (edge/cluster keeps its floors there), in place of the value saved
// before. Storage does not read it. A backup restored under a new identity (Reidentify)
// starts without it. It fails on a value over 1 MiB.
func (db *DB) SaveReplicationState(ctx context.Context, value []byte) error {
	if len(value) > maxReplicationState {
		return fmt.Errorf("storage: replication state of %d bytes, more than %d", len(value), maxReplicationState)
	}
	value = bytes.Clone(value)
	return db.Update(ctx, func(tx *Tx) error {
		return tx.b.meta.get().Put(metaReplication, value)
	})
}

// ReplicationState returns the value SaveReplicationState saved last, or nil. The slice
// is the caller's.
func (db *DB) ReplicationState(ctx context.Context) ([]byte, error) {
	var out []byte
	err := db.view(ctx, func(btx *bolt.Tx) error {
		out = bytes.Clone(btx.Bucket(bucketMeta).Get(metaReplication))
		return nil
	})
	return out, err
}
