package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestOpen(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		db := MustOpenDB(t)
		if db.NodeID() == 0 {
			t.Fatal("NodeID = 0")
		}
		if db.Clock().Node() != db.NodeID() {
			t.Errorf("Clock().Node() = %s, want %s", db.Clock().Node(), db.NodeID())
		}
		if st, _ := db.Stats(context.Background()); st != (Stats{}) {
			t.Errorf("Stats = %+v, want zero", st)
		}
		if db.FeedSeq() != 0 {
			t.Errorf("FeedSeq = %d, want 0", db.FeedSeq())
		}
		// Commits skip bbolt's syncs only because the log is synced first, and recovery
		// restores meta pages only because the freelist is not stored.
		if !db.bolt.NoFreelistSync {
			t.Error("bbolt NoFreelistSync not set: a restored checkpoint would meet a stale freelist")
		}
		if _, err := os.Stat(db.Path() + walSuffix); err != nil {
			t.Errorf("write-ahead log beside the data file: %v", err)
		}
	})
	t.Run("NodeIDKept", func(t *testing.T) {
		db := MustOpenDB(t)
		id := db.NodeID()
		merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
		db2 := mustReopen(t, db, Options{})
		if db2.NodeID() != id {
			t.Errorf("NodeID after reopen = %s, want %s", db2.NodeID(), id)
		}
		if _, ok := mustRecord(t, db2, crdt.UserKey("u1")); !ok {
			t.Error("record lost across reopen")
		}
		if st, _ := db2.Stats(context.Background()); st.Users != 1 {
			t.Errorf("Stats.Users after reopen = %d, want 1", st.Users)
		}
		checkInvariants(t, db2)
	})
	t.Run("FreshNodeIDs", func(t *testing.T) {
		a, b := MustOpenDB(t), MustOpenDB(t)
		if a.NodeID() == b.NodeID() {
			t.Errorf("two files share node ID %s", a.NodeID())
		}
	})
	t.Run("ErrLocked", func(t *testing.T) {
		db := MustOpenDB(t)
		start := time.Now()
		_, err := Open(db.Path(), Options{Timeout: 200 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), "in use by another process") {
			t.Fatalf("Open of a locked file: err = %v, want one saying it is in use by another process", err)
		}
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Errorf("Open gave up after %s, before its timeout", d)
		}
	})
	t.Run("ErrNotBolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "junk.db")
		if err := os.WriteFile(path, bytes.Repeat([]byte("junk"), 2048), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); err == nil {
			t.Fatal("Open of a junk file succeeded")
		}
	})
}

func TestClose(t *testing.T) {
	db := MustOpenDB(t)
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	err := db.Update(context.Background(), func(*Tx) error { return nil })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Update after Close: err = %v, want ErrClosed", err)
	}
	if _, err := db.ApplyRemote(context.Background(), []Change{{Key: "u/x", Map: crdt.NewUser("x", "", nil, ts(1, 1))}}); !errors.Is(err, ErrClosed) {
		t.Errorf("ApplyRemote after Close: err = %v, want ErrClosed", err)
	}
}

// TestCloseWaitsForWrites checks that writes queued before Close are committed, not lost.
func TestCloseWaitsForWrites(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "data.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- db.Update(context.Background(), func(tx *Tx) error {
				_, err := tx.Merge(crdt.UserKey(string(rune('a'+i%26))+strings.Repeat("x", i)), newUser(db, "n"))
				return err
			})
		}()
	}
	acked := 0
	for range n / 2 {
		if <-errs == nil {
			acked++
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for range n - n/2 {
		switch err := <-errs; {
		case err == nil:
			acked++
		case !errors.Is(err, ErrClosed):
			t.Errorf("Update during Close: %v", err)
		}
	}
	db2, err := Open(db.Path(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if st, _ := db2.Stats(context.Background()); st.Users != acked {
		t.Errorf("after reopen %d users, %d writes acknowledged", st.Users, acked)
	}
}

// TestClockPersisted checks that the HLC resumes past its stored high-water mark even
// when the wall clock went back across the restart.
func TestClockPersisted(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	var last crdt.Timestamp
	for range 3 {
		last = db.Clock().Next()
	}
	merge(t, db, crdt.UserKey("u1"), crdt.NewUser("alice", "", nil, last))
	clk.Add(-time.Hour) // the wall clock steps back an hour across the restart
	db2 := mustReopen(t, db, Options{Now: clk.Now})
	if next := db2.Clock().Next(); !last.Less(next) {
		t.Errorf("after reopen Next() = %s, want after %s", next, last)
	}
	// Remote timestamps near the real (stepped-back) time are still accepted.
	res, err := db2.ApplyRemote(context.Background(), []Change{{Key: "u/r", Map: crdt.NewUser("r", "", nil, ts(7, clk.Now().UnixNano()))}})
	if err != nil || res.Applied != 1 {
		t.Errorf("ApplyRemote = %+v, %v; want 1 applied", res, err)
	}
}

func TestBackup(t *testing.T) {
	db := MustOpenDB(t)
	merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
	update(t, db, func(tx *Tx) error {
		_, err := tx.Append(crdt.ConversationID("u1", "u2"), crdt.Message{From: "u1", To: "u2", Body: "hi"})
		return err
	})
	var buf bytes.Buffer
	n, err := db.Backup(&buf, nil)
	if err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Errorf("Backup returned %d, wrote %d bytes", n, buf.Len())
	}
	path := filepath.Join(t.TempDir(), "restored.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	restored, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open backup: %v", err)
	}
	defer restored.Close()
	checkInvariants(t, restored)
	if restored.NodeID() != db.NodeID() {
		t.Errorf("restored NodeID = %s, want %s", restored.NodeID(), db.NodeID())
	}
	if _, ok := mustRecord(t, restored, crdt.UserKey("u1")); !ok {
		t.Error("backup lacks the user record")
	}
	if got, want := restored.Digest(), db.Digest(); got != want {
		t.Errorf("backup digest root %x, want %x", got.Root(), want.Root())
	}
	if st, _ := restored.Stats(context.Background()); st != (Stats{Users: 1, Messages: 1}) {
		t.Errorf("backup Stats = %+v", st)
	}
}
