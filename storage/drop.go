package storage

import (
	"bytes"
	"context"
	"fmt"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// Dropping what this node no longer holds. When placement moves a partition away from a
// node (or the node accepted writes for partitions it never held), the node keeps the
// keys until their holders confirm they have them, then drops them with Drop. A drop is
// not a deletion of data: nothing is replicated, no tombstone is written, the keys live
// on at their holders; this node just stops storing them, with everything derived from
// them (indexes, counters, digest). A key that changed after its holders confirmed it
// (a write arrived meanwhile) is kept, to be confirmed again.
//
// A conversation's entries are dropped together, when every entry the node stores of it
// is confirmed: indexes and cursors are per conversation. The highest sequence number
// this node gave its own entries in a dropped conversation is remembered (the seq_floor
// bucket), so that an entry it appends to it later never reuses one: two entries with the
// same origin and sequence number resolve to one of them everywhere.

// seqFloor returns the highest sequence number this node issued in conv before a drop.
func seqFloor(floors *bolt.Bucket, conv string) uint64 {
	if floors == nil {
		return 0
	}
	return getUint(floors.Get([]byte(conv)))
}

// Drop stops storing keys, each given with the pair hash its holders confirmed
// (LeafPairs' hash): a record is deleted if its stored hash is still that one; a
// conversation's entries only if every entry stored of it is listed with its stored
// hash. It returns how many keys it dropped. Keys not stored are ignored.
func (db *DB) Drop(ctx context.Context, pairs []KeyHash) (int, error) {
	confirmed := make(map[string]uint64, len(pairs))
	convs := make(map[string]bool)
	for _, p := range pairs {
		confirmed[p.Key] = p.Hash
		if conv, _, ok := ParseLogKey(p.Key); ok {
			convs[conv] = true
		}
	}
	dropped := 0
	err := db.Update(ctx, func(tx *Tx) error {
		dropped = 0
		b := tx.b
		records, log := b.records.get(), b.log.get()
		for key, h := range confirmed {
			if _, _, isEntry := ParseLogKey(key); isEntry {
				continue
			}
			cur, ok, err := pairHash(records.Bucket, log.Bucket, key)
			if err != nil {
				return err
			}
			if ok && cur == h {
				tx.deletes = append(tx.deletes, key)
				dropped++
			}
		}
	convs:
		for conv := range convs {
			prefix := convPrefix(conv)
			var n int
			c := log.Cursor()
			for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				e, err := decodeStoredEntry(prefix, k, v)
				if err != nil {
					return err
				}
				lk := LogKey(conv, e.ID)
				if h, ok := confirmed[lk]; !ok || h != crdt.PairHash(lk, e.AppendBinary(nil)) {
					continue convs
				}
				n++
			}
			if n > 0 {
				tx.dropConvs = append(tx.dropConvs, conv)
				dropped += n
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("drop: %w", err)
	}
	return dropped, nil
}

// dropConv deletes a conversation this node no longer holds, remembering the highest
// sequence number it gave its own entries there.
func (b *batch) dropConv(conv string) error {
	st, ok, err := loadConv(b.convs.get().Bucket, conv)
	if err != nil || !ok {
		return err
	}
	if err := b.deleteEntries(conv); err != nil {
		return err
	}
	return b.forgetConv(conv, st)
}
