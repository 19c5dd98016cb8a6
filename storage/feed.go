package storage

import (
	"bytes"
	"context"
	"fmt"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// The change feed numbers writes: every commit that changes a key (a local write or a
// remote one) gives it the next position, stored both in the feed bucket (seq → key) and
// in front of the key's value. A key's latest position is the one its value carries;
// earlier positions of the same key, and positions of deleted keys, are stale. Stale
// positions are skipped by readers and collected a few at a time by every commit that
// writes, twice as fast as they are created, so the feed holds about one position per key
// (at most about twice as many) without any commit paying for a random delete.

// nextSeq takes the next feed position.
func (b *batch) nextSeq() uint64 {
	b.head++
	b.writes++
	return b.head
}

func (b *batch) feedPut(seq uint64, key string) error {
	return b.feed.get().Put(putUint(seq), []byte(key))
}

// storedValue returns the stored value of a replication key, or nil.
func storedValue(records, log *bolt.Bucket, key string) []byte {
	if conv, id, ok := ParseLogKey(key); ok {
		return log.Get(id.AppendBinary(convPrefix(conv)))
	}
	return records.Get([]byte(key))
}

// collectFeed examines up to budget feed positions from where the previous commit left
// off, deletes the stale ones and wraps around at the head.
func (b *batch) collectFeed(budget int) error {
	gc := getUint(b.meta.get().Get(metaGC))
	var dead [][]byte
	c := b.feed.get().Cursor()
	k, v := c.Seek(putUint(gc + 1))
	for n := 0; k != nil && n < budget; k, v = c.Next() {
		n++
		gc = getUint(k)
		var sv []byte
		if bytes.HasPrefix(v, []byte(logPrefix)) {
			sv = storedValue(b.records.get().Bucket, b.log.get().Bucket, string(v))
		} else {
			sv = b.records.get().Get(v) // a record key: spare the conversions
		}
		if sv == nil || getUint(sv[:seqLen]) != gc {
			dead = append(dead, bytes.Clone(k))
		}
	}
	if k == nil {
		gc = 0
	}
	if err := deleteKeys(b.feed.get(), dead); err != nil {
		return err
	}
	return b.meta.get().Put(metaGC, putUint(gc))
}

// FeedSeq returns the head of the change feed: the position of the latest committed
// change. Positions start at 1 and only grow.
func (db *DB) FeedSeq() uint64 { return db.head.Load() }

// ChangesSince returns, in feed order, up to limit keys (limit ≤ 0: no limit) changed at
// a position after seq, each with its current state, and the position to pass next time.
// Each key appears once, at its latest position: a key changed again after the call will
// come again. Deleted keys (swept, erased) do not appear; every replica derives those
// deletions itself. It reads the feed from seq on and never scans the store. The changes
// are the caller's.
func (db *DB) ChangesSince(ctx context.Context, seq uint64, limit int) ([]Change, uint64, error) {
	var out []Change
	next := seq
	err := db.view(ctx, func(btx *bolt.Tx) error {
		records, log := btx.Bucket(bucketRecords), btx.Bucket(bucketLog)
		c := btx.Bucket(bucketFeed).Cursor()
		for k, v := c.Seek(putUint(seq + 1)); k != nil; k, v = c.Next() {
			pos := getUint(k)
			ch, at, ok, err := readChange(records, log, string(v))
			if err != nil {
				return err
			}
			next = pos
			if !ok || at != pos {
				continue
			}
			out = append(out, ch)
			if limit > 0 && len(out) == limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, seq, err
	}
	return out, next, nil
}

// Changes returns the current state of each of keys (replication keys: record keys or
// LogKey values) that is held here, in the order given; absent keys are skipped. The
// changes are the caller's.
func (db *DB) Changes(ctx context.Context, keys []string) ([]Change, error) {
	var out []Change
	err := db.view(ctx, func(btx *bolt.Tx) error {
		records, log := btx.Bucket(bucketRecords), btx.Bucket(bucketLog)
		for _, key := range keys {
			ch, _, ok, err := readChange(records, log, key)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, ch)
			}
		}
		return nil
	})
	return out, err
}

// readChange returns the current state of a replication key and its feed position.
func readChange(records, log *bolt.Bucket, key string) (Change, uint64, bool, error) {
	v := storedValue(records, log, key)
	if v == nil {
		return Change{}, 0, false, nil
	}
	if len(v) < seqLen {
		return Change{}, 0, false, fmt.Errorf("key %q: corrupt value", key)
	}
	pos := getUint(v[:seqLen])
	if conv, id, ok := ParseLogKey(key); ok {
		return Change{Key: key, Conv: conv, Entry: crdt.Entry{ID: id, Data: bytes.Clone(v[seqLen:])}}, pos, true, nil
	}
	m, _, err := decodeRecord(key, v)
	if err != nil {
		return Change{}, 0, false, err
	}
	return Change{Key: key, Map: m}, pos, true, nil
}
