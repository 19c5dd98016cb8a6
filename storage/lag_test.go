package storage

import (
	"context"
	"errors"
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
	done := make(chan error, 1)
	go func() {
		done <- db.Update(context.Background(), func(tx *Tx) error {
			close(inFn)
			<-proceed
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
