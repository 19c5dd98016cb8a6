package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// Key-value records (crdt.KVPrefix) are listed in the expiry index beside sessions,
// under their keep time (keepIndexKey), so Sweep drops them once it has passed; a record
// already past it is never stored (see Tx.Merge). Listing an app's keys reads the leaves
// index, which lists every key under its partition: by partition, then key.

// KVRange visits the key-value records of app's namespace held here, in the order of
// their partition (crdt.KeyHomes), then key, from just after key after of partition from
// (after "" starts at the partition's first key), skipping the partitions for which held
// returns false. visit receives each record's partition, its key within the namespace
// and its stored state — expired and deleted records included, until Sweep drops them —
// and returns false to stop. It runs inside a read transaction: it must be quick and not
// call the DB. The Maps are visit's to keep.
func (db *DB) KVRange(ctx context.Context, app string, from int, after string, held func(p int) bool,
	visit func(p int, key string, m crdt.Map) bool) error {
	if app == "" || strings.ContainsAny(app, "/\x00") {
		return fmt.Errorf("kv range: invalid app %q", app)
	}
	prefix := crdt.KVAppPrefix(app)
	return db.view(ctx, func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketLeaves).Cursor()
		records := btx.Bucket(bucketRecords)
		for p := max(from, 0); p < crdt.Partitions; p++ {
			if held != nil && !held(p) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			pre := append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(prefix)), uint16(p)), prefix...) // #nosec G115 -- p < Partitions
			var k []byte
			if p == from && after != "" {
				start := append(slices.Clip(pre), after...)
				if k, _ = c.Seek(start); bytes.Equal(k, start) {
					k, _ = c.Next()
				}
			} else {
				k, _ = c.Seek(pre)
			}
			for ; k != nil && len(k) > len(pre) && bytes.HasPrefix(k, pre); k, _ = c.Next() {
				key := string(k[2:])
				m, ok, err := decodeRecord(key, records.Get(k[2:]))
				if err != nil {
					return err
				}
				if !ok {
					continue
				}
				if !visit(p, key[len(prefix):], m) {
					return nil
				}
			}
		}
		return nil
	})
}
