package storage

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
)

// TestReplicationState: the value saved last is what a reopened file returns; a value
// over the bound is refused and the one before stays.
func TestReplicationState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	db, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := db.ReplicationState(ctx); err != nil || st != nil {
		t.Fatalf("a new file's state: %q, %v", st, err)
	}
	for _, v := range []string{"first", "second"} {
		if err := db.SaveReplicationState(ctx, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.SaveReplicationState(ctx, make([]byte, maxReplicationState+1)); err == nil {
		t.Error("a state over the bound was saved")
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if st, err := db.ReplicationState(ctx); err != nil || !bytes.Equal(st, []byte("second")) {
		t.Errorf("after reopening: %q, %v; want %q", st, err, "second")
	}
}
