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

// TestFailedOnFullDisk: a full disk fails the DB (ErrFailed, the cause wrapped, Failed
// closed), whether the data file is what cannot grow (new records) or the log (records
// overwritten in place, so the data file needs no room: the log used to cut each record
// off and refuse each write for ever, and the DB never failed); every later write and
// read of the file fails with it, and the DB opened again once there is room holds every
// write it acknowledged and nothing else. The files are on a tmpfs of their own, so the
// test needs the right to mount one (root).
func TestFailedOnFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name   string
		keys   int // records written, round robin
		size   int // bytes of each
		before int // writes before the disk fills
	}{
		{"DataFileGrows", 10000, 3000, 100},
		{"LogFills", 4, 300, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := disktest.Mount(t, "24m")
			path := filepath.Join(dir, "full.db")
			db, err := Open(path, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx := context.Background()
			acked := map[string]crdt.Timestamp{} // key → its last acknowledged write
			write := func(i int) error {
				name := fmt.Sprintf("user%05d", i%tc.keys)
				var at crdt.Timestamp
				err := db.Update(ctx, func(tx *Tx) error {
					at = db.Clock().Next()
					_, err := tx.Merge(crdt.UserKey(name), crdt.NewUser(name, strings.Repeat("h", tc.size), nil, at))
					return err
				})
				if err == nil {
					acked[crdt.UserKey(name)] = at
				}
				return err
			}
			for i := range tc.before {
				if err := write(i); err != nil {
					t.Fatal(err)
				}
			}

			filler := filepath.Join(dir, "filler")
			disktest.Fill(t, filler)
			var failure error
			for i := tc.before; i < 100000 && failure == nil; i++ {
				failure = write(i)
			}
			if !errors.Is(failure, ErrFailed) || !errors.Is(failure, syscall.ENOSPC) {
				t.Fatalf("a write on a full disk: %v; want ErrFailed wrapping ENOSPC", failure)
			}
			select {
			case <-db.Failed():
			case <-time.After(10 * time.Second):
				t.Fatal("Failed not closed after the failure")
			}
			if err := write(100000); !errors.Is(err, ErrFailed) {
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
			for key, at := range acked {
				m, ok, err := db.Record(ctx, key)
				if err != nil || !ok || m.Version() != at {
					t.Errorf("%s after reopening: version %v, found %v, %v; want its last acknowledged write %v", key, m.Version(), ok, err, at)
				}
			}
			if err := write(100001); err != nil {
				t.Errorf("a write after reopening with room: %v", err)
			}
		})
	}
}
