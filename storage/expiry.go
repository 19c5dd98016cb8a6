package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"time"
)

// sweepChunk bounds the sessions one Sweep commit deletes, so that a large backlog does
// not hold up other writers for long.
const sweepChunk = 1000

// Sweep deletes the session records whose absolute expiry is at or before now, and the
// key-value records whose keep time is (crdt.KVKeepNanos), reading the expiry index from
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
