package storage

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// blockCommitter occupies the committer with a function that waits until release is
// called, so that requests queued meanwhile are committed as one batch.
func blockCommitter(t *testing.T, db *DB) (release func()) {
	t.Helper()
	started, gate := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- db.Update(context.Background(), func(*Tx) error {
			close(started)
			<-gate
			return nil
		})
	}()
	<-started
	return func() {
		close(gate)
		if err := <-done; err != nil {
			t.Errorf("blocking Update: %v", err)
		}
	}
}

// waitQueued waits until n requests are queued for the committer.
func waitQueued(db *DB, n int) {
	for len(db.reqs) < n {
		runtime.Gosched()
	}
}

func TestUpdate(t *testing.T) {
	t.Run("ReadsOwnWrites", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		update(t, db, func(tx *Tx) error {
			if _, ok, err := tx.Record(key); ok || err != nil {
				t.Errorf("Record before Merge = %v, %v; want absent", ok, err)
			}
			if _, err := tx.Merge(key, newUser(db, "alice")); err != nil {
				return err
			}
			m, ok, err := tx.Record(key)
			if !ok || err != nil || crdt.ReadUser("u1", &m).Username != "alice" {
				t.Errorf("Record after Merge = %v, %v, %v", ok, err, crdt.ReadUser("u1", &m))
			}
			return nil
		})
		if _, ok := mustRecord(t, db, key); !ok {
			t.Error("record not stored")
		}
	})
	t.Run("ErrDiscardsWrites", func(t *testing.T) {
		db := MustOpenDB(t)
		errBoom := errors.New("boom")
		err := db.Update(context.Background(), func(tx *Tx) error {
			if _, err := tx.Merge(crdt.UserKey("u1"), newUser(db, "alice")); err != nil {
				return err
			}
			if _, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2", Body: "x"}); err != nil {
				return err
			}
			return errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Update = %v, want errBoom", err)
		}
		if _, ok := mustRecord(t, db, crdt.UserKey("u1")); ok {
			t.Error("write of a failed function was stored")
		}
		if st, _ := db.Stats(context.Background()); st != (Stats{}) || db.FeedSeq() != 0 {
			t.Errorf("Stats = %+v, FeedSeq = %d after a failed function", st, db.FeedSeq())
		}
	})
	t.Run("ErrIsolatedInBatch", func(t *testing.T) {
		db := MustOpenDB(t)
		var batches []int
		db.opts.OnCommit = func(cs []Change) { batches = append(batches, len(cs)) }
		release := blockCommitter(t, db)
		const n = 10
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				errs[i] = db.Update(context.Background(), func(tx *Tx) error {
					if _, err := tx.Merge(crdt.UserKey(fmt.Sprint("u", i)), newUser(db, fmt.Sprint("n", i))); err != nil {
						return err
					}
					if i%3 == 0 {
						return fmt.Errorf("fail %d", i)
					}
					return nil
				})
			})
		}
		waitQueued(db, n)
		release()
		wg.Wait()
		for i, err := range errs {
			_, ok := mustRecord(t, db, crdt.UserKey(fmt.Sprint("u", i)))
			if failed := i%3 == 0; (err != nil) != failed || ok == failed {
				t.Errorf("request %d: err = %v, stored = %v", i, err, ok)
			}
		}
		if len(batches) != 1 || batches[0] != 6 {
			t.Errorf("OnCommit calls with %v changes, want one call with 6", batches)
		}
	})
	t.Run("ErrCanceledBeforeRun", func(t *testing.T) {
		db := MustOpenDB(t)
		release := blockCommitter(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		ran := false
		errc := make(chan error, 1)
		go func() { errc <- db.Update(ctx, func(*Tx) error { ran = true; return nil }) }()
		waitQueued(db, 1)
		cancel()
		release()
		if err := <-errc; !errors.Is(err, context.Canceled) || ran {
			t.Errorf("Update = %v, ran = %v; want context.Canceled, not run", err, ran)
		}
		ctx, cancel = context.WithCancel(context.Background())
		cancel()
		if err := db.Update(ctx, func(*Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
			t.Errorf("Update with a done ctx = %v, ran = %v", err, ran)
		}
	})
	t.Run("ErrTxClosed", func(t *testing.T) {
		db := MustOpenDB(t)
		var kept *Tx
		update(t, db, func(tx *Tx) error { kept = tx; return nil })
		if _, err := kept.Merge("u/x", newUser(db, "x")); !errors.Is(err, errTxClosed) {
			t.Errorf("Merge after return = %v", err)
		}
		if _, _, err := kept.Record("u/x"); !errors.Is(err, errTxClosed) {
			t.Errorf("Record after return = %v", err)
		}
		if _, err := kept.Append("a:b", crdt.Message{From: "a", To: "b"}); !errors.Is(err, errTxClosed) {
			t.Errorf("Append after return = %v", err)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		db := MustOpenDB(t)
		const writers, each = 16, 20
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					key := crdt.UserKey(fmt.Sprintf("w%d-%d", w, i))
					if err := db.Update(context.Background(), func(tx *Tx) error {
						_, err := tx.Merge(key, newUser(db, key))
						return err
					}); err != nil {
						t.Errorf("Update: %v", err)
					}
				}
			})
		}
		wg.Wait()
		if st, _ := db.Stats(context.Background()); st.Users != writers*each {
			t.Errorf("Stats.Users = %d, want %d", st.Users, writers*each)
		}
		if got := db.FeedSeq(); got != writers*each {
			t.Errorf("FeedSeq = %d, want %d", got, writers*each)
		}
	})
}

func TestOnCommit(t *testing.T) {
	var got [][]Change
	db := MustOpenDB(t, Options{OnCommit: func(cs []Change) { got = append(got, cs) }})
	key := crdt.UserKey("u1")
	u := newUser(db, "alice")
	update(t, db, func(tx *Tx) error {
		if _, err := tx.Merge(key, u); err != nil {
			return err
		}
		// A second write of the same key in the batch is reported once, with its final state.
		m := crdt.Map{}
		m.Set(crdt.FieldFirstName, []byte("Alice"), db.Clock().Next())
		if _, err := tx.Merge(key, m); err != nil {
			return err
		}
		_, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2", Body: "hi"})
		return err
	})
	merge(t, db, key, u) // no change: no call
	if len(got) != 1 || len(got[0]) != 2 {
		t.Fatalf("OnCommit calls = %v, want one with 2 changes", got)
	}
	stored, _ := mustRecord(t, db, key)
	if c := got[0][0]; c.Key != key || !c.Map.Equal(stored) {
		t.Errorf("change 0 = %q %v, want the stored user record", c.Key, crdt.ReadUser("u1", &c.Map))
	}
	if c := got[0][1]; c.Conv != "u1:u2" || c.Key != LogKey(c.Conv, c.Entry.ID) {
		t.Errorf("change 1 = %+v, want the log entry", c)
	}
}

// TestOnBatch: every durable group commit is reported once, after its writers were
// answered, with the writes it committed (a function's own error is not one), its log
// record and its sync, and whether the bbolt transaction was committed to the file after
// it (not while more writers wait: the next batch joins it); one that reached WALLimit
// reports its checkpoint.
func TestOnBatch(t *testing.T) {
	reports := make(chan BatchStats, 1024)
	db := MustOpenDB(t, Options{WALLimit: 64 << 10, OnBatch: func(s BatchStats) { reports <- s }})
	next := func() BatchStats {
		t.Helper()
		select {
		case s := <-reports:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no batch reported")
			return BatchStats{}
		}
	}
	settled(t, db)
	for len(reports) > 0 {
		<-reports // Open's
	}

	// Three writers queued behind a blocked commit share the next one; one of them fails.
	release := blockCommitter(t, db)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := range 3 {
		wg.Go(func() {
			errs <- db.Update(context.Background(), func(tx *Tx) error {
				if i == 2 {
					return errors.New("no")
				}
				_, err := tx.Merge(crdt.UserKey(fmt.Sprint("u", i)), newUser(db, fmt.Sprint("user", i)))
				return err
			})
		})
	}
	waitQueued(db, 3)
	release()
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d of 3 writes failed, want 1", failed)
	}
	if s := next(); s.Writes != 1 || s.Flush != 0 {
		t.Errorf("the blocking commit, with writers waiting behind it: %+v, want one write and no flush", s)
	}
	if s := next(); s.Writes != 2 || s.LogBytes <= 0 || s.Sync <= 0 || s.Duration < s.Sync || s.Flush <= 0 || s.Checkpoint {
		t.Errorf("batch of two writes and a failure, nobody waiting after it: %+v, want a flush", s)
	}

	// Past WALLimit, a commit checkpoints and says so.
	checkpoints := 0
	for i := 0; checkpoints == 0 && i < 100; i++ {
		merge(t, db, crdt.UserKey(fmt.Sprint("big", i)), newUser(db, fmt.Sprint("big", i, strings.Repeat("x", 4000))))
		if next().Checkpoint {
			checkpoints++
		}
	}
	if checkpoints != 1 {
		t.Errorf("checkpoints reported while the log passed 64 KiB: %d, want 1", checkpoints)
	}
}
