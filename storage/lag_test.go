package storage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// holdOpen runs a write of key under the committer's hand: its function, on the
// committer, lets the test queue more requests (queue, which must leave n queued) before
// it returns, so that the batch after it is acknowledged while those wait and the
// committer does not flush. It returns the write's error.
func holdOpen(t *testing.T, db *DB, key string, n int, queue func()) error {
	t.Helper()
	inFn, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- db.Update(context.Background(), func(tx *Tx) error {
			once.Do(func() { // it may run again (TestRewind)
				close(inFn)
				<-proceed
			})
			_, err := tx.Merge(key, newUser(db, key))
			return err
		})
	}()
	<-inFn
	queue()
	waitQueued(db, n)
	close(proceed)
	return <-done
}

// inFile reports whether key is in the file's committed state, read without waiting for
// the committer (not settle).
func inFile(t *testing.T, db *DB, key string) bool {
	t.Helper()
	var ok bool
	if err := db.bolt.View(func(btx *bolt.Tx) error {
		ok = btx.Bucket(bucketRecords).Get([]byte(key)) != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestReadWaitsForFlush: a write acknowledged while more writers wait is in the log and
// the committer's open transaction, not yet in the file; a read of the file begun then
// waits until the committer commits it, and sees it.
func TestReadWaitsForFlush(t *testing.T) {
	db := MustOpenDB(t)
	k := crdt.UserKey("u1")
	started, gate, blocked := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	if err := holdOpen(t, db, k, 1, func() {
		go func() {
			blocked <- db.Update(context.Background(), func(*Tx) error {
				close(started)
				<-gate
				return nil
			})
		}()
	}); err != nil {
		t.Fatal(err)
	}
	// k's write is acknowledged; the committer runs the blocking request in the same
	// transaction.
	<-started
	if inFile(t, db, k) {
		t.Fatal("the acknowledged write is in the file already: nothing to wait for")
	}
	read := make(chan error, 1)
	var m crdt.Map
	var ok bool
	go func() {
		var err error
		m, ok, err = db.Record(context.Background(), k)
		read <- err
	}()
	for db.lag.waiters.Load() == 0 {
		runtime.Gosched()
	}
	select {
	case err := <-read:
		t.Fatalf("the read returned (%v) before the committer flushed", err)
	default:
	}
	close(gate)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if email, _ := m.Get(crdt.FieldEmail); !ok || string(email) != k+"@example.com" {
		t.Fatalf("read email %q, present %v: want the acknowledged write", email, ok)
	}
	if !inFile(t, db, k) {
		t.Fatal("the write is not in the file after the read waited for it")
	}
}

// TestRewind: a batch that fails while the open transaction carries acknowledged batches
// rolls the transaction back and puts them back from their log records; the failing
// request's error is its own and the others commit.
func TestRewind(t *testing.T) {
	db := MustOpenDB(t)
	k1, k3 := crdt.UserKey("u1"), crdt.UserKey("u3")
	huge := crdt.UserKey(strings.Repeat("x", bolt.MaxKeySize+1)) // bbolt refuses it when applied
	var wg sync.WaitGroup
	var errBad, err3 error
	if err := holdOpen(t, db, k1, 2, func() {
		wg.Go(func() {
			errBad = db.Update(context.Background(), func(tx *Tx) error {
				// A write the API could not make: the merged record moved under a key too
				// long for bbolt, which refuses it only when the batch applies it.
				bad := crdt.UserKey("bad")
				if _, err := tx.Merge(bad, newUser(db, "bad")); err != nil {
					return err
				}
				tx.recs[huge], tx.order = tx.recs[bad], []string{huge}
				delete(tx.recs, bad)
				return nil
			})
		})
		wg.Go(func() {
			err3 = db.Update(context.Background(), func(tx *Tx) error { _, err := tx.Merge(k3, newUser(db, k3)); return err })
		})
	}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errBad == nil || !strings.Contains(errBad.Error(), "apply") || errors.Is(errBad, db.failed) {
		t.Errorf("the write bbolt refuses: %.100v, want its own apply error", errBad)
	}
	if err3 != nil {
		t.Errorf("the write beside it: %v", err3)
	}
	if db.failed != nil {
		t.Fatalf("DB failed: %v", db.failed)
	}
	settled(t, db)
	for _, k := range []string{k1, k3} {
		if !inFile(t, db, k) {
			t.Errorf("%s not in the file", k)
		}
	}
	if inFile(t, db, huge) {
		t.Error("the refused write is in the file")
	}
}

// TestFlushFails: a write acknowledged whose commit to the file then fails comes back on
// the next Open (from the log), and meanwhile reads of the file fail rather than return
// the older state, before Close and after it.
func TestFlushFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	db, err := Open(path, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	k1, k2 := crdt.UserKey("u1"), crdt.UserKey("u2")
	merge(t, db, k1, newUser(db, k1))
	settled(t, db)
	if err := db.Update(ctx, func(tx *Tx) error {
		// On the committer: take the data file away from bbolt, so that its commit to
		// the file fails after the record is synced (the log is a file of its own).
		if err := tx.b.db.file.Close(); err != nil {
			return err
		}
		_, err := tx.Merge(k2, newUser(db, k2))
		return err
	}); err != nil {
		t.Fatalf("the write: %v", err)
	}
	if err := db.settle(ctx); err == nil {
		t.Error("settle after a failed flush: nil, want the failure")
	}
	if _, _, err := db.Records(ctx, k2); err == nil {
		t.Error("Records after a failed flush: nil error")
	}
	if err := db.Close(); err == nil {
		t.Error("Close after a failed flush: nil, want the failure")
	}
	if err := db.settle(ctx); err == nil {
		t.Error("settle after Close of a failed DB: nil, want the failure")
	}
	db2, err := Open(path, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	for _, k := range []string{k1, k2} {
		if _, ok := mustRecord(t, db2, k); !ok {
			t.Errorf("%s lost after reopen", k)
		}
	}
}

// TestRecordBufferSized: a small group commit after a large one is not given a record
// buffer of the large one's size (every group commit has its own, kept until the flush).
func TestRecordBufferSized(t *testing.T) {
	db := MustOpenDB(t)
	big := newUser(db, "big")
	big.Set(crdt.FieldAddress, make([]byte, 600<<10), db.Clock().Next())
	merge(t, db, crdt.UserKey("big"), big)
	for i := range 3 {
		merge(t, db, crdt.UserKey("small"), newUser(db, fmt.Sprint("small", i)))
	}
	var given int
	update(t, db, func(tx *Tx) error {
		given = cap(tx.b.ops.buf)
		return nil
	})
	if given > 64<<10 {
		t.Errorf("a small group commit after small ones is given a %d KiB record buffer", given>>10)
	}
}

// TestReadYourWritesConcurrent: writers read back their own acknowledged writes through
// the cache and the file, while group commits overlap, checkpoints come often and the
// memory map grows.
func TestReadYourWritesConcurrent(t *testing.T) {
	for _, cache := range []int{-1, 0} {
		t.Run(fmt.Sprint("RecordCache", cache), func(t *testing.T) {
			db := MustOpenDB(t, Options{RecordCache: cache, WALLimit: 64 << 10, mmapInitial: 64 << 10})
			ctx := context.Background()
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := range 400 {
						key := crdt.UserKey(fmt.Sprintf("w%d-%d", w, i%50))
						name := fmt.Sprintf("w%d-%d-%d", w, i%50, i)
						if err := db.Update(ctx, func(tx *Tx) error {
							_, err := tx.Merge(key, newUser(db, name))
							return err
						}); err != nil {
							t.Error(err)
							return
						}
						ms, ok, err := db.Records(ctx, key)
						if err != nil {
							t.Error(err)
							return
						}
						if email, _ := ms[0].Get(crdt.FieldEmail); !ok[0] || string(email) != name+"@example.com" {
							t.Errorf("Records(%s) after its write: %q, want %q", key, email, name+"@example.com")
							return
						}
						keys, ms2, _, err := db.RecordsUnder(ctx, key, 1)
						if err != nil || len(keys) != 1 {
							t.Errorf("RecordsUnder(%s): %v %v", key, keys, err)
							return
						}
						if email, _ := ms2[0].Get(crdt.FieldEmail); string(email) != name+"@example.com" {
							t.Errorf("RecordsUnder(%s) after its write: %q, want %q", key, email, name+"@example.com")
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
