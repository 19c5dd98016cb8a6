package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

func kvPut(db *DB, fields map[string]string, expires time.Time) crdt.Map {
	fs := make(map[string][]byte, len(fields))
	for k, v := range fields {
		fs[k] = []byte(v)
	}
	return crdt.KVPut(fs, expires, db.Clock().Next())
}

func TestKVRecords(t *testing.T) {
	t.Run("SweptAtKeepTime", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		ctx := context.Background()
		short, long := crdt.KVKey("shop", "short"), crdt.KVKey("shop", "long")
		merge(t, db, short, kvPut(db, map[string]string{"a": "1"}, clk.Now().Add(hour)))
		merge(t, db, long, kvPut(db, map[string]string{"a": "1"}, clk.Now().Add(2*hour)))
		merge(t, db, crdt.SessionKey("s"), newSession(db, "u1", hour))
		// Moving long's expiry back keeps it until the latest expiry written: a patch
		// from a node that had not seen the move may still arrive.
		merge(t, db, long, crdt.KVPatch(nil, nil, clk.Now().Add(30*time.Minute), db.Clock().Next()))
		clk.Add(hour)
		if n, err := db.Sweep(ctx, clk.Now()); n != 2 || err != nil {
			t.Fatalf("Sweep=%d, %v, want the session and short", n, err)
		}
		if _, ok := mustRecord(t, db, short); ok {
			t.Error("short still stored after its keep time")
		}
		m, ok := mustRecord(t, db, long)
		if !ok {
			t.Fatal("long swept before its keep time")
		}
		if crdt.ReadKV(&m).LiveAt(clk.Now()) {
			t.Error("long live after its expiry")
		}
		clk.Add(hour)
		if n, _ := db.Sweep(ctx, clk.Now()); n != 1 {
			t.Errorf("Sweep=%d, want long", n)
		}
	})
	t.Run("PastKeepNeverStored", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		key := crdt.KVKey("shop", "k")
		merge(t, db, key, kvPut(db, map[string]string{"a": "1"}, clk.Now().Add(-time.Second)))
		if _, ok := mustRecord(t, db, key); ok {
			t.Error("a record past its keep time was stored")
		}
		res, err := db.ApplyRemote(context.Background(), []Change{{Key: key, Map: crdt.KVPut(nil, clk.Now(), ts(9, clk.Now().UnixNano()))}})
		if err != nil || res.Dropped != 1 {
			t.Errorf("ApplyRemote of an expired record: %+v, %v, want dropped", res, err)
		}
		// Fields with no keep time: not a record of the schema, not stored.
		var junk crdt.Map
		junk.Set("v/a", []byte("1"), ts(9, clk.Now().UnixNano()))
		if res, err := db.ApplyRemote(context.Background(), []Change{{Key: key, Map: junk}}); err != nil || res.Applied != 0 {
			t.Errorf("ApplyRemote of a record without keep time: %+v, %v", res, err)
		}
		if _, ok := mustRecord(t, db, key); ok {
			t.Error("a record without keep time was stored")
		}
	})
	t.Run("DeleteStaysAgainstLaterWrites", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		key := crdt.KVKey("shop", "k")
		merge(t, db, key, kvPut(db, map[string]string{"a": "1", "b": "2"}, clk.Now().Add(hour)))
		merge(t, db, key, crdt.KVDelete(clk.Now().Add(10*time.Minute), db.Clock().Next()))
		// A put and a patch stamped after the delete (a late commit from a node that
		// had not seen it, whose clock runs ahead), with a later expiry.
		late := ts(9, clk.Now().Add(time.Second).UnixNano())
		res, err := db.ApplyRemote(context.Background(), []Change{{Key: key, Map: crdt.KVPut(map[string][]byte{"c": []byte("3")}, clk.Now().Add(3*hour), late)}})
		if err != nil || res.Applied != 1 {
			t.Fatalf("ApplyRemote late put: %+v, %v", res, err)
		}
		merge(t, db, key, crdt.KVPatch(map[string][]byte{"d": []byte("4")}, nil, time.Time{}, db.Clock().Next()))
		m, ok := mustRecord(t, db, key)
		if !ok {
			t.Fatal("tombstone not stored")
		}
		v := crdt.ReadKV(&m)
		if !v.Deleted || v.Fields != nil || !v.Keep.Equal(clk.Now().Add(3*hour)) {
			t.Errorf("after late writes: %+v, want deleted, no fields, kept until the late expiry", v)
		}
		if _, _, names := crdt.KVSize(&m); names != 0 {
			t.Errorf("tombstone stores %d value fields, want none", names)
		}
		clk.Add(3 * hour)
		if n, _ := db.Sweep(context.Background(), clk.Now()); n != 1 {
			t.Errorf("Sweep=%d, want the tombstone", n)
		}
	})
	t.Run("PutCompacts", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		key := crdt.KVKey("shop", "k")
		for i := range 50 {
			merge(t, db, key, kvPut(db, map[string]string{fmt.Sprint("f", i): "1"}, clk.Now().Add(hour)))
		}
		m, _ := mustRecord(t, db, key)
		if _, _, names := crdt.KVSize(&m); names != 1 || m.Len() != 4 {
			t.Errorf("after 50 puts of other fields: %d value fields, %d fields (%q), want 1 and 4", names, m.Len(), m.Names())
		}
		// A remote field of the wrong kind, or not of the schema, is not stored.
		var junk crdt.Map
		now := clk.Now().UnixNano()
		junk.Raise("v/f49", 7, ts(9, now))
		junk.SetFlag("keep", ts(9, now))
		junk.Set("user", []byte("u1"), ts(9, now))
		if _, err := db.ApplyRemote(context.Background(), []Change{{Key: key, Map: junk}}); err != nil {
			t.Fatal(err)
		}
		after, _ := mustRecord(t, db, key)
		if !after.Equal(m) {
			t.Errorf("junk changed the record: %q", after.Names())
		}
	})
}

func TestKVRange(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	type pos struct {
		p   int
		key string
	}
	var want []pos
	update(t, db, func(tx *Tx) error {
		for i := range 300 {
			for _, app := range []string{"shop", "shopx", "blog"} {
				k := fmt.Sprintf("key%03d", i)
				if _, err := tx.Merge(crdt.KVKey(app, k), kvPut(db, map[string]string{"a": "1"}, clk.Now().Add(hour))); err != nil {
					return err
				}
				if app == "shop" {
					want = append(want, pos{crdt.KeyHomes(crdt.KVKey(app, k)).First(), k})
				}
			}
		}
		return nil
	})
	slices.SortFunc(want, func(a, b pos) int {
		if a.p != b.p {
			return a.p - b.p
		}
		return strings.Compare(a.key, b.key)
	})
	list := func(from int, after string, held func(int) bool, limit int) []pos {
		var got []pos
		err := db.KVRange(ctx, "shop", from, after, held, func(p int, key string, m crdt.Map) bool {
			if v := crdt.ReadKV(&m); v.Fields["a"] == nil {
				t.Errorf("%q: fields %q", key, v.Fields)
			}
			got = append(got, pos{p, key})
			return len(got) < limit
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := list(0, "", nil, 1000); !slices.Equal(got, want) {
		t.Fatalf("all: %d keys, want %d in partition order (first %v)", len(got), len(want), got[:min(3, len(got))])
	}
	// Paging from the last position seen gives the same order, with nothing skipped.
	var paged []pos
	for from, after := 0, ""; ; {
		page := list(from, after, nil, 7)
		paged = append(paged, page...)
		if len(page) < 7 {
			break
		}
		from, after = page[len(page)-1].p, page[len(page)-1].key
	}
	if !slices.Equal(paged, want) {
		t.Errorf("paged: %d keys, want %d", len(paged), len(want))
	}
	// Only the partitions held.
	even := func(p int) bool { return p%2 == 0 }
	got := list(0, "", even, 1000)
	wantEven := slices.DeleteFunc(slices.Clone(want), func(x pos) bool { return !even(x.p) })
	if !slices.Equal(got, wantEven) {
		t.Errorf("even partitions: %d keys, want %d", len(got), len(wantEven))
	}
	if err := db.KVRange(ctx, "a/b", 0, "", nil, func(int, string, crdt.Map) bool { return true }); err == nil {
		t.Error("KVRange accepted an app name with '/'")
	}
}

// TestOpenMigratesKeepIndex: a file that a build of format 2 or 3 left, holding
// key-value records (format 2) or subjects' records (format 3) with keep times that newer
// nodes replicated to it but that it did not list in the expiry index, is migrated: the
// records are listed, and swept when their keep time passes.
func TestOpenMigratesKeepIndex(t *testing.T) {
	for _, tc := range []struct {
		from     uint64
		steps    string
		unlisted []string // the prefixes whose records the old build did not list
	}{
		{2, "2→3,3→4", []string{crdt.KVPrefix, crdt.UserPrefix}},
		{3, "3→4", []string{crdt.UserPrefix}},
	} {
		t.Run(fmt.Sprintf("From%d", tc.from), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv.db")
			clk := newTestClock()
			db, err := Open(path, Options{Logger: testLogger(t), Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				keep := clk.Now().Add(time.Duration(i+1) * time.Minute)
				merge(t, db, crdt.KVKey("shop", fmt.Sprint(i)), kvPut(db, map[string]string{"a": "1"}, keep))
				subject := crdt.NewSubject("shop", fmt.Sprint(i), db.Clock().Next())
				subject.Merge(crdt.KeepSubjectUntil(keep, db.Clock().Next()))
				merge(t, db, crdt.UserKey(crdt.SubjectID("shop", fmt.Sprint(i))), subject)
				merge(t, db, crdt.SessionKey(fmt.Sprint(i)), newSession(db, "u1", hour))
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			setMeta(t, path, func(btx *bolt.Tx) error {
				if err := btx.Bucket(bucketMeta).Put(metaFormat, putUint(tc.from)); err != nil {
					return err
				}
				ix := btx.Bucket(bucketExpiry)
				var drop [][]byte
				_ = ix.ForEach(func(k, _ []byte) error {
					for _, prefix := range tc.unlisted {
						if strings.HasPrefix(string(k[8:]), prefix) {
							drop = append(drop, slices.Clone(k))
						}
					}
					return nil
				})
				if len(drop) != 10*len(tc.unlisted) {
					t.Errorf("%d records indexed, want %d", len(drop), 10*len(tc.unlisted))
				}
				for _, k := range drop {
					if err := ix.Delete(k); err != nil {
						return err
					}
				}
				return nil
			})
			var steps []string
			db, err = Open(path, Options{Logger: testLogger(t), Now: clk.Now, OnMigrate: func(from, to uint64) {
				steps = append(steps, fmt.Sprintf("%d→%d", from, to))
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if got := strings.Join(steps, ","); got != tc.steps {
				t.Errorf("migration steps %q, want %s", got, tc.steps)
			}
			checkInvariants(t, db)
			clk.Add(5 * time.Minute)
			if n, _ := db.Sweep(context.Background(), clk.Now()); n != 10 {
				t.Errorf("Sweep after 5 minutes=%d, want 5 key-value and 5 subject records", n)
			}
			checkInvariants(t, db)
		})
	}
}
