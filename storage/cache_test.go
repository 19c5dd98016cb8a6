package storage

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

func TestRecordCache(t *testing.T) {
	ctx := context.Background()
	cached := func(db *DB, key string) bool {
		db.cache.mu.RLock()
		defer db.cache.mu.RUnlock()
		_, ok := db.cache.items[key]
		return ok
	}
	t.Run("ReadsOwnWrites", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		merge(t, db, key, newUser(db, "alice"))
		mustRecord(t, db, key)
		if !cached(db, key) {
			t.Fatal("record not cached after a read")
		}
		var edit crdt.Map
		edit.Set(crdt.FieldEmail, []byte("new@example.com"), db.Clock().Next())
		want := merge(t, db, key, edit)
		if got, ok := mustRecord(t, db, key); !ok || !got.Equal(want) {
			t.Errorf("Record after a write = %v (ok=%v), want the written state", got, ok)
		}
		// A remote write to a cached record is seen too.
		var remote crdt.Map
		remote.Set(crdt.FieldFirstName, []byte("Alice"), crdt.Timestamp{Wall: db.Clock().Next().Wall + 1, Node: 99})
		if _, err := db.ApplyRemote(ctx, []Change{{Key: key, Map: remote}}); err != nil {
			t.Fatal(err)
		}
		got, _ := mustRecord(t, db, key)
		if v, _ := got.Get(crdt.FieldFirstName); string(v) != "Alice" {
			t.Errorf("Record after ApplyRemote: first name %q, want Alice", v)
		}
	})
	t.Run("FillsMissesBesideHits", func(t *testing.T) {
		db := MustOpenDB(t)
		a, b := crdt.UserKey("a"), crdt.UserKey("b")
		merge(t, db, a, newUser(db, "alice"))
		merge(t, db, b, newUser(db, "bob"))
		mustRecord(t, db, a)
		if _, ok, err := db.Records(ctx, b, a); err != nil || !ok[0] || !ok[1] {
			t.Fatalf("Records = %v, %v", ok, err)
		}
		if !cached(db, a) || !cached(db, b) {
			t.Errorf("cached a=%v b=%v after reading both; want both", cached(db, a), cached(db, b))
		}
	})
	t.Run("Deletes", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		user, short, long := crdt.UserKey("u1"), crdt.SessionKey("short"), crdt.SessionKey("long")
		merge(t, db, user, newUser(db, "alice"))
		merge(t, db, short, newSession(db, "u1", hour))
		merge(t, db, long, newSession(db, "u1", 2*hour))
		if _, ok, err := db.Records(ctx, short, long, user); err != nil || !ok[0] || !ok[1] || !ok[2] {
			t.Fatalf("Records = %v, %v", ok, err)
		}
		clk.Add(hour)
		if n, err := db.Sweep(ctx, clk.Now()); n != 1 || err != nil {
			t.Fatalf("Sweep = %d, %v; want 1", n, err)
		}
		if _, ok := mustRecord(t, db, short); ok || cached(db, short) {
			t.Errorf("swept session: Record ok=%v, cached=%v; want neither", ok, cached(db, short))
		}
		merge(t, db, user, crdt.EraseUser(db.Clock().Next()))
		if _, ok := mustRecord(t, db, long); ok {
			t.Error("session of an erased user still read")
		}
	})
	t.Run("CopiesAreOwned", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		want := merge(t, db, key, newUser(db, "alice"))
		m, _ := mustRecord(t, db, key)
		m.Set(crdt.FieldEmail, []byte("mine@example.com"), db.Clock().Next())
		m.Prune(func(string, crdt.Field) bool { return true })
		if got, _ := mustRecord(t, db, key); !got.Equal(want) {
			t.Error("editing a returned record changed the cached one")
		}
	})
	t.Run("Bounded", func(t *testing.T) {
		db := MustOpenDB(t, Options{RecordCache: 4})
		want := map[string]crdt.Map{}
		for i := range 10 {
			key := crdt.UserKey("u" + strconv.Itoa(i))
			want[key] = merge(t, db, key, newUser(db, "user"+strconv.Itoa(i)))
		}
		for range 3 {
			for key, w := range want {
				if got, ok := mustRecord(t, db, key); !ok || !got.Equal(w) {
					t.Fatalf("Record(%q) differs from what was written", key)
				}
			}
		}
		if n := len(db.cache.items); n != 4 {
			t.Errorf("cache holds %d records, want its bound 4", n)
		}
	})
	t.Run("Disabled", func(t *testing.T) {
		db := MustOpenDB(t, Options{RecordCache: -1})
		key := crdt.UserKey("u1")
		merge(t, db, key, newUser(db, "alice"))
		if _, ok := mustRecord(t, db, key); !ok || cached(db, key) {
			t.Errorf("Record ok=%v, cached=%v; want found and not cached", ok, cached(db, key))
		}
	})
}

// TestRecordCacheStaleFill checks the generation rule: a read that began before a commit
// was published cannot fill the cache with the state it read.
func TestRecordCacheStaleFill(t *testing.T) {
	c := newRecordCache(8)
	var old, cur crdt.Map
	old.Set("f", []byte("old"), crdt.Timestamp{Wall: 1, Node: 1})
	cur.Set("f", []byte("new"), crdt.Timestamp{Wall: 2, Node: 1})

	_, hit, gen := c.get("k") // a reader misses and goes to read "old" from the file
	if hit {
		t.Fatal("hit in an empty cache")
	}
	c.publish(map[string]*crdt.Map{"k": &cur}) // a commit writes "new" meanwhile
	c.fill("k", old, gen)
	if _, hit, _ := c.get("k"); hit {
		t.Fatal("a fill that raced a publish was cached")
	}

	// A fill that lands before the publish is overwritten by it.
	_, _, gen = c.get("k")
	c.fill("k", old, gen)
	c.publish(map[string]*crdt.Map{"k": &cur})
	if m, hit, _ := c.get("k"); !hit || !m.Equal(cur) {
		t.Fatalf("after publish: hit=%v state=%v; want the published state", hit, m)
	}
	c.publish(map[string]*crdt.Map{"k": nil})
	if _, hit, _ := c.get("k"); hit {
		t.Fatal("a deleted record is still cached")
	}
}

// TestRecordCacheConcurrent checks that no read returns a state older than a write
// acknowledged before the read began, while writers and readers race on a few records.
func TestRecordCacheConcurrent(t *testing.T) {
	db := MustOpenDB(t, Options{Logger: discardLogger()})
	ctx := context.Background()
	const keys, writes, readers = 4, 100, 6
	acked := make([]atomic.Int64, keys)
	key := func(i int) string { return crdt.UserKey("u" + strconv.Itoa(i)) }

	var wg sync.WaitGroup
	var writersDone atomic.Int32
	errs := make(chan error, keys+readers)
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer writersDone.Add(1)
			for n := int64(1); n <= writes; n++ {
				err := db.Update(ctx, func(tx *Tx) error {
					var m crdt.Map
					m.Raise("n", n, db.Clock().Next())
					_, err := tx.Merge(key(k), m)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				acked[k].Store(n)
			}
		}()
	}
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; writersDone.Load() < keys; i++ {
				a, b := (r+i)%keys, (r+i+1)%keys
				wantA, wantB := acked[a].Load(), acked[b].Load()
				ms, _, err := db.Records(ctx, key(a), key(b))
				if err != nil {
					errs <- err
					return
				}
				if got := ms[0].MaxOf("n"); got < wantA {
					errs <- fmt.Errorf("read %s: n=%d after %d was acknowledged", key(a), got, wantA)
					return
				}
				if got := ms[1].MaxOf("n"); got < wantB {
					errs <- fmt.Errorf("read %s: n=%d after %d was acknowledged", key(b), got, wantB)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
