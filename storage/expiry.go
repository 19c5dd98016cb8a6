package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// keepIndexKey returns the expiry index key of a record kept until keep (Unix
// nanoseconds): a key-value record (crdt.KVKeepNanos) or a subject's record
// (crdt.SubjectKeepNanos).
func keepIndexKey(key string, keep int64) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(key)), uint64(keep)), key...) // #nosec G115 -- a stored keep is after now, so positive
}

// indexKeep moves the expiry index entry of the record key from keep time old to now; 0
// is no entry.
func (b *batch) indexKeep(key string, old, now int64) error {
	if old == now {
		return nil
	}
	ix := b.expiry.get()
	if old != 0 {
		if err := ix.Delete(keepIndexKey(key, old)); err != nil {
			return err
		}
	}
	if now != 0 {
		return ix.Put(keepIndexKey(key, now), present)
	}
	return nil
}

// migrateKeepIndex returns a migration that lists in the expiry index every record under
// prefix with a keep time (keepOf): records that a build of an older format stored,
// relayed by newer nodes during a rolling upgrade, without indexing them.
func migrateKeepIndex(prefix string, keepOf func(*crdt.Map) int64) func(*bolt.Tx) error {
	return func(btx *bolt.Tx) error {
		expiry := btx.Bucket(bucketExpiry)
		c := btx.Bucket(bucketRecords).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			m, ok, err := decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			if keep := keepOf(&m); ok && keep > 0 {
				if err := expiry.Put(keepIndexKey(string(k), keep), present); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// sweepChunk bounds the sessions one Sweep commit deletes, so that a large backlog does
// not hold up other writers for long.
const sweepChunk = 1000

// Sweep deletes the session records whose absolute expiry is at or before now, and the
// key-value and subject records whose keep time is (crdt.KVKeepNanos,
// crdt.SubjectKeepNanos), reading the expiry index from
// its oldest end, and returns how many it deleted. Idle expiry is not swept (see the
// package documentation). Every node sweeps on its own with no coordination; a swept
// record that arrives again is dropped on arrival, so all nodes end without it.
func (db *DB) Sweep(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for {
		n := 0
		err := db.Update(ctx, func(tx *Tx) error {
			n = 0
			b := tx.b
			limit := binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()))
			var keys []string
			c := b.expiry.get().Cursor()
			for k, _ := c.First(); k != nil && len(keys) < sweepChunk; k, _ = c.Next() {
				if len(k) < 8 || bytes.Compare(k[:8], limit) > 0 {
					break
				}
				keys = append(keys, string(k[8:]))
			}
			tx.deletes, n = keys, len(keys)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < sweepChunk {
			if total > 0 {
				db.log.Info("swept expired records", attrCount, total)
			}
			return total, nil
		}
	}
}
