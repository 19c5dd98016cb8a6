package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage/disktest"
)

// TestFailedOnFullDisk: a commit that finds the disk full fails the DB (ErrFailed, the
// cause wrapped, Failed closed), every later write and read of the file fails with it,
// and the DB opened again once there is room holds every write it acknowledged. The file
// is on a tmpfs of its own, so the test needs the right to mount one (root).
func TestFailedOnFullDisk(t *testing.T) {
	dir := disktest.Mount(t, "24m")
	path := filepath.Join(dir, "full.db")
	db, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	write := func(i int) (string, error) {
		key := crdt.UserKey(fmt.Sprintf("user%05d", i))
		return key, db.Update(ctx, func(tx *Tx) error {
			_, err := tx.Merge(key, crdt.NewUser(fmt.Sprintf("user%05d", i), strings.Repeat("h", 3000), nil, db.Clock().Next()))
			return err
		})
	}
	var acked []string
	for i := range 10 {
		key, err := write(i)
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, key)
	}

	filler := filepath.Join(dir, "filler")
	disktest.Fill(t, filler)
	var failure error
	for i := 10; i < 10000 && failure == nil; i++ {
		key, err := write(i)
		if err == nil {
			acked = append(acked, key)
		}
		failure = err
	}
	if !errors.Is(failure, ErrFailed) || !errors.Is(failure, syscall.ENOSPC) {
		t.Fatalf("a write on a full disk: %v; want ErrFailed wrapping ENOSPC", failure)
	}
	select {
	case <-db.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("Failed not closed after a failed commit")
	}
	if _, err := write(10000); !errors.Is(err, ErrFailed) {
		t.Errorf("a write after the failure: %v, want ErrFailed", err)
	}
	if _, _, err := db.ChangesSince(ctx, 0, 1); !errors.Is(err, ErrFailed) {
		t.Errorf("a read of the file after the failure: %v, want ErrFailed", err)
	}
	if err := db.Close(); !errors.Is(err, ErrFailed) {
		t.Errorf("Close after the failure: %v, want ErrFailed", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open again with room: %v", err)
	}
	defer db.Close()
	_, ok, err := db.Records(ctx, acked...)
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range acked {
		if !ok[i] {
			t.Errorf("acknowledged write of %s lost", key)
		}
	}
	if _, err := write(10001); err != nil {
		t.Errorf("a write after reopening with room: %v", err)
	}
}
