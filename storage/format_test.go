package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// fillFile writes users, sessions and a conversation to a new file at path and closes
// it; it returns the file's digest and counters.
func fillFile(tb testing.TB, path string) (crdt.Digest, Stats) {
	tb.Helper()
	db, err := Open(path, Options{Logger: testLogger(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range 20 {
		merge(tb, db, crdt.UserKey(fmt.Sprintf("u%d", i)), newUser(db, fmt.Sprintf("user%d", i)))
		merge(tb, db, crdt.SessionKey(fmt.Sprintf("s%d", i)), newSession(db, fmt.Sprintf("u%d", i), time.Hour))
		update(tb, db, func(tx *Tx) error {
			_, err := tx.Append(crdt.ConversationID("u1", "u2"), crdt.Message{From: "u1", To: "u2", Body: fmt.Sprint(i)})
			return err
		})
	}
	checkInvariants(tb, db)
	d := db.Digest()
	st, _ := db.Stats(context.Background())
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	return d, st
}

// downgradeToFormat1 rewrites a closed file as the first release left it: format 1, no
// leaf scheme, no seq_floor bucket, a leaves index of another scheme (here: empty), and
// no write-ahead log.
func downgradeToFormat1(tb testing.TB, path string) {
	tb.Helper()
	if err := os.Remove(path + walSuffix); err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	setMeta(tb, path, func(btx *bolt.Tx) error {
		meta := btx.Bucket(bucketMeta)
		if err := meta.Put(metaFormat, putUint(1)); err != nil {
			return err
		}
		if err := meta.Delete(metaLeaves); err != nil {
			return err
		}
		if err := btx.DeleteBucket(bucketSeqFloor); err != nil {
			return err
		}
		if err := btx.DeleteBucket(bucketLeaves); err != nil {
			return err
		}
		_, err := btx.CreateBucket(bucketLeaves)
		return err
	})
}

// setMeta changes a closed data file with fn, and removes its write-ahead log, whose
// checkpoint the change would contradict.
func setMeta(tb testing.TB, path string, fn func(btx *bolt.Tx) error) {
	tb.Helper()
	if err := os.Remove(path + walSuffix); err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	if err := bdb.Update(fn); err != nil {
		tb.Fatal(err)
	}
	if err := bdb.Close(); err != nil {
		tb.Fatal(err)
	}
}

// fileFormat reads a closed file's format.
func fileFormat(tb testing.TB, path string) uint64 {
	tb.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	defer bdb.Close()
	var v uint64
	_ = bdb.View(func(btx *bolt.Tx) error {
		v = getUint(btx.Bucket(bucketMeta).Get(metaFormat))
		return nil
	})
	return v
}

func TestOpenMigratesFormat1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	digest, stats := fillFile(t, path)
	downgradeToFormat1(t, path)
	var steps []string
	db, err := Open(path, Options{Logger: testLogger(t), OnMigrate: func(from, to uint64) {
		steps = append(steps, fmt.Sprintf("%d→%d", from, to))
	}})
	if err != nil {
		t.Fatalf("Open format 1: %v", err)
	}
	if got := strings.Join(steps, ","); got != "1→2,2→3,3→4" {
		t.Errorf("migration steps %q, want 1→2,2→3,3→4", got)
	}
	checkInvariants(t, db) // the leaves index is complete again
	if got := db.Digest(); got != digest {
		t.Errorf("digest root %x after migration, want %x", got.Root(), digest.Root())
	}
	if st, _ := db.Stats(context.Background()); st != stats {
		t.Errorf("Stats %+v after migration, want %+v", st, stats)
	}
	// The migrated file takes writes like any other.
	merge(t, db, crdt.UserKey("new"), newUser(db, "newcomer"))
	checkInvariants(t, db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if f := fileFormat(t, path); f != FormatVersion {
		t.Errorf("format %d after migration, want %d", f, FormatVersion)
	}
	if _, err := Check(path); err != nil {
		t.Errorf("Check after migration: %v", err)
	}
}

func TestOpenRefusesNewerFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	fillFile(t, path)
	setMeta(t, path, func(btx *bolt.Tx) error {
		return btx.Bucket(bucketMeta).Put(metaFormat, putUint(FormatVersion+1))
	})
	_, err := Open(path, Options{Logger: testLogger(t)})
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Found != FormatVersion+1 || fe.Supported != FormatVersion {
		t.Fatalf("Open = %v, want a FormatError for format %d", err, FormatVersion+1)
	}
	for _, v := range []string{fmt.Sprint(FormatVersion + 1), fmt.Sprint(FormatVersion)} {
		if !strings.Contains(err.Error(), "format "+v) {
			t.Errorf("error %q does not name format %s", err, v)
		}
	}
	if f := fileFormat(t, path); f != FormatVersion+1 {
		t.Errorf("refused file's format changed to %d", f)
	}
	if _, err := Check(path); !errors.As(err, &fe) {
		t.Errorf("Check = %v, want a FormatError", err)
	}
}

// migrateChildEnv switches the test binary into TestMigrationKilled's child: it names
// the format-1 file to open, and the child stops in the middle of the migration.
const migrateChildEnv = "STORAGE_MIGRATE_CHILD"

// TestMigrationKilled kills a process with SIGKILL while it migrates a format-1 file,
// after the migration's work and before its commit, and checks that the file is still a
// consistent format-1 file, which the next Open migrates with nothing lost.
func TestMigrationKilled(t *testing.T) {
	if path := os.Getenv(migrateChildEnv); path != "" {
		_, err := Open(path, Options{OnMigrate: func(from, to uint64) {
			fmt.Printf("migrating %d %d\n", from, to)
			select {} // until killed
		}})
		fmt.Fprintln(os.Stderr, "child: Open returned:", err)
		os.Exit(2)
	}
	if testing.Short() {
		t.Skip("runs a child process")
	}
	path := filepath.Join(t.TempDir(), "old.db")
	digest, stats := fillFile(t, path)
	downgradeToFormat1(t, path)
	cmd := exec.Command(os.Args[0], "-test.run=^TestMigrationKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), migrateChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "migrating 1 2") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child not killed by SIGKILL mid-migration: %v", cmd.ProcessState)
	}
	if f := fileFormat(t, path); f != 1 {
		t.Fatalf("format %d after a kill during migration, want 1 (the old format, untouched)", f)
	}
	db, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after the kill: %v", err)
	}
	defer db.Close()
	checkInvariants(t, db)
	if got := db.Digest(); got != digest {
		t.Errorf("digest root %x, want %x", got.Root(), digest.Root())
	}
	if st, _ := db.Stats(context.Background()); st != stats {
		t.Errorf("Stats %+v, want %+v", st, stats)
	}
}
