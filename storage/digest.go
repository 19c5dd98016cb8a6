package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// The digest covers every replicated key: each record (key, Map encoding) and each log
// entry (LogKey, Entry encoding) contributes crdt.PairHash to the leaf of each of its
// homes (crdt.KeyHomes: the leaves are the placement partitions). The in-memory digest
// changes only after a commit is durable, by the XOR of the pair hashes the commit
// removed and added. The leaves bucket (leaf(2) key → ∅) lists the keys of each leaf, a
// key with two homes under both; it changes only when a key is created or deleted, so
// updates cost it nothing, and LeafPairs hashes the values it lists.

// leafScheme names how keys map to leaves; a file indexed under another scheme has its
// leaves bucket rebuilt on Open (it is derived state). 2: leaves are crdt.KeyHomes.
const leafScheme = 2

// indexLeaves adds key to the leaves index under each of its homes, or removes it.
func indexLeaves(leaves kvWriter, key string, add bool) error {
	h := crdt.KeyHomes(key)
	for _, p := range h.Append(make([]int, 0, 2)) {
		k := append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(key)), uint16(p)), key...)
		var err error
		if add {
			err = leaves.Put(k, present)
		} else {
			err = leaves.Delete(k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// rebuildLeaves empties the leaves index and lists every stored key in it again.
func rebuildLeaves(btx *bolt.Tx) error {
	if err := btx.DeleteBucket(bucketLeaves); err != nil {
		return fmt.Errorf("drop leaves: %w", err)
	}
	leaves, err := btx.CreateBucket(bucketLeaves)
	if err != nil {
		return fmt.Errorf("create leaves: %w", err)
	}
	err = btx.Bucket(bucketRecords).ForEach(func(k, _ []byte) error {
		return indexLeaves(leaves, string(k), true)
	})
	if err != nil {
		return err
	}
	return btx.Bucket(bucketLog).ForEach(func(k, _ []byte) error {
		i := len(k) - crdt.EntryIDSize
		if i < 1 || k[i-1] != 0 {
			return fmt.Errorf("corrupt log key %x", k)
		}
		id, _ := crdt.DecodeEntryID(k[i:])
		return indexLeaves(leaves, LogKey(string(k[:i-1]), id), true)
	})
}

// Digest returns a copy of the digest of every replicated key held here, as of the
// latest durable commit. The copy is the caller's.
func (db *DB) Digest() crdt.Digest {
	db.dmu.RLock()
	defer db.dmu.RUnlock()
	return db.digest
}

// KeyHash is one key of a digest leaf with its pair hash.
type KeyHash struct {
	Key  string
	Hash uint64
}

// LeafPairs returns the keys of digest leaf leaf held here with their pair hashes, in key
// order, read through the leaf index. A peer whose leaf differs sends its own list; the
// keys whose hashes differ are the ones to exchange. It fails on a leaf outside
// [0, crdt.DigestLeaves).
func (db *DB) LeafPairs(ctx context.Context, leaf int) ([]KeyHash, error) {
	if leaf < 0 || leaf >= crdt.DigestLeaves {
		return nil, fmt.Errorf("leaf %d out of range", leaf)
	}
	var out []KeyHash
	err := db.view(ctx, func(btx *bolt.Tx) error {
		records, log := btx.Bucket(bucketRecords), btx.Bucket(bucketLog)
		prefix := binary.BigEndian.AppendUint16(nil, uint16(leaf))
		c := btx.Bucket(bucketLeaves).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			key := string(k[len(prefix):])
			h, ok, err := pairHash(records, log, key)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("leaf index names missing key %q", key)
			}
			out = append(out, KeyHash{Key: key, Hash: h})
		}
		return nil
	})
	return out, err
}

// pairHash returns the digest pair hash of a stored replication key.
func pairHash(records, log *bolt.Bucket, key string) (uint64, bool, error) {
	v := storedValue(records, log, key)
	if v == nil {
		return 0, false, nil
	}
	if len(v) < seqLen {
		return 0, false, fmt.Errorf("key %q: corrupt value", key)
	}
	if _, id, ok := ParseLogKey(key); ok {
		return crdt.PairHash(key, crdt.Entry{ID: id, Data: v[seqLen:]}.AppendBinary(nil)), true, nil
	}
	return crdt.PairHash(key, v[seqLen:]), true, nil
}

// rebuildDigest computes the digest from the stored values in one sequential pass, and
// in the same pass the apps' usage (usage.go) into *apps. It hashes stored bytes and
// decodes nothing but the field that names a record's app.
func rebuildDigest(btx *bolt.Tx, d *crdt.Digest, apps *map[string]AppUsage) error {
	err := btx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
		if len(v) < seqLen {
			return fmt.Errorf("record %q: corrupt value", k)
		}
		key := string(k)
		d.Toggle(key, crdt.PairHash(key, v[seqLen:]))
		addUsage(apps, key, v[seqLen:], 1)
		return nil
	})
	if err != nil {
		return err
	}
	var buf []byte
	return btx.Bucket(bucketLog).ForEach(func(k, v []byte) error {
		i := len(k) - crdt.EntryIDSize
		if i < 1 || k[i-1] != 0 || len(v) < seqLen {
			return fmt.Errorf("corrupt log key %x", k)
		}
		id, _ := crdt.DecodeEntryID(k[i:])
		key := LogKey(string(k[:i-1]), id)
		buf = crdt.Entry{ID: id, Data: v[seqLen:]}.AppendBinary(buf[:0])
		d.Toggle(key, crdt.PairHash(key, buf))
		return nil
	})
}
