package storage

import (
	"context"

	bolt "go.etcd.io/bbolt"
)

// Keys returns how many replicated keys this node stores: records and log entries. It
// walks the two buckets' pages (bbolt's Bucket.Stats), so it costs a read transaction
// proportional to the file's size: for metrics scrapes, not for requests.
func (db *DB) Keys(ctx context.Context) (int, error) {
	n := 0
	err := db.view(ctx, func(btx *bolt.Tx) error {
		n = btx.Bucket(bucketRecords).Stats().KeyN + btx.Bucket(bucketLog).Stats().KeyN
		return nil
	})
	return n, err
}
