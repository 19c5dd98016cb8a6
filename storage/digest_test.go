package storage

import (
	"context"
	"slices"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

func TestDigest(t *testing.T) {
	db := MustOpenDB(t)
	empty := db.Digest()
	if empty.Root() != 0 {
		t.Fatalf("empty digest root = %x", empty.Root())
	}
	key := crdt.UserKey("a")
	m := merge(t, db, key, newUser(db, "a"))
	d := db.Digest()
	var want crdt.Digest
	want.Toggle(key, crdt.PairHash(key, m.AppendBinary(nil)))
	if d != want {
		t.Errorf("digest root %x, want %x", d.Root(), want.Root())
	}
	d.Toggle("x", 1) // a copy: the DB's is untouched
	if db.Digest() != want {
		t.Error("modifying the returned digest changed the DB's")
	}
	db2 := mustReopen(t, db, Options{})
	if db2.Digest() != want {
		t.Error("digest not rebuilt on Open")
	}
}

func TestLeafPairs(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	update(t, db, func(tx *Tx) error {
		for _, u := range []string{"a", "b", "c", "d", "e"} {
			if _, err := tx.Merge(crdt.UserKey(u), newUser(db, u)); err != nil {
				return err
			}
		}
		_, err := tx.Append("a:b", crdt.Message{From: "a", To: "b"})
		return err
	})
	cs := allChanges(t, db)
	d := db.Digest()
	for _, c := range cs {
		leaf := crdt.KeyHomes(c.Key).First()
		pairs, err := db.LeafPairs(ctx, leaf)
		if err != nil {
			t.Fatal(err)
		}
		var x uint64
		found := false
		for _, p := range pairs {
			x ^= p.Hash
			if p.Key == c.Key {
				found = true
				var enc []byte
				if c.Conv != "" {
					enc = c.Entry.AppendBinary(nil)
				} else {
					enc = c.Map.AppendBinary(nil)
				}
				if p.Hash != crdt.PairHash(c.Key, enc) {
					t.Errorf("LeafPairs hash of %q = %x, want %x", c.Key, p.Hash, crdt.PairHash(c.Key, enc))
				}
			}
		}
		if !found || x != d.Leaf(leaf) {
			t.Errorf("leaf %d: %q found = %v, XOR %x, digest leaf %x", leaf, c.Key, found, x, d.Leaf(leaf))
		}
	}
	for _, leaf := range []int{-1, crdt.DigestLeaves} {
		if _, err := db.LeafPairs(ctx, leaf); err == nil {
			t.Errorf("LeafPairs(%d) succeeded", leaf)
		}
	}
}

// TestLeafIndexRebuilt: a file whose leaf index was built under another scheme (an older
// release hashed whole keys) has it rebuilt on Open, with every key under its homes.
func TestLeafIndexRebuilt(t *testing.T) {
	db := MustOpenDB(t)
	update(t, db, func(tx *Tx) error {
		for _, u := range []string{"a", "b", "c"} {
			if _, err := tx.Merge(crdt.UserKey(u), newUser(db, u)); err != nil {
				return err
			}
		}
		_, err := tx.Append("a:b", crdt.Message{From: "a", To: "b"})
		return err
	})
	// Make it look like the older scheme: one entry per key, under leaf 7, no scheme mark.
	settled(t, db)
	err := db.bolt.Update(func(btx *bolt.Tx) error {
		if err := btx.DeleteBucket(bucketLeaves); err != nil {
			return err
		}
		leaves, err := btx.CreateBucket(bucketLeaves)
		if err != nil {
			return err
		}
		for _, c := range allChanges(t, db) {
			if err := leaves.Put(append([]byte{0, 7}, c.Key...), present); err != nil {
				return err
			}
		}
		return btx.Bucket(bucketMeta).Delete(metaLeaves)
	})
	if err != nil {
		t.Fatal(err)
	}
	db = mustReopen(t, db, Options{})
	checkInvariants(t, db) // every key under each of its homes, nothing else
	for _, c := range allChanges(t, db) {
		for _, leaf := range crdt.KeyHomes(c.Key).Append(nil) {
			pairs, err := db.LeafPairs(context.Background(), leaf)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(pairs, func(p KeyHash) bool { return p.Key == c.Key }) {
				t.Errorf("LeafPairs(%d) lacks %q after the rebuild", leaf, c.Key)
			}
		}
	}
}
