package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

func TestBackupInfo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "src.db")
	_, stats := fillFile(t, path)
	db, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var (
		buf  bytes.Buffer
		info SnapshotInfo
	)
	n, err := db.Backup(&buf, func(i SnapshotInfo) error {
		if buf.Len() != 0 {
			t.Error("begin called after bytes were written")
		}
		info = i
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != n || n != int64(buf.Len()) {
		t.Errorf("info.Size %d, Backup returned %d, wrote %d", info.Size, n, buf.Len())
	}
	if info.Stats != stats || info.Node != db.NodeID() || info.Format != FormatVersion || info.Clock != db.Committed() {
		t.Errorf("info %+v, want stats %+v, node %s, format %d, clock %s", info, stats, db.NodeID(), FormatVersion, db.Committed())
	}

	stop := errors.New("stop")
	buf.Reset()
	if n, err := db.Backup(&buf, func(SnapshotInfo) error { return stop }); err != stop || n != 0 || buf.Len() != 0 {
		t.Errorf("Backup with a failing begin = %d, %v, wrote %d; want 0, the begin's error, nothing", n, err, buf.Len())
	}
}

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "src.db")
	_, stats := fillFile(t, path)
	info, err := Check(path)
	if err != nil || info.Stats != stats {
		t.Fatalf("Check = %+v, %v; want stats %+v", info, err, stats)
	}

	t.Run("ErrCounters", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "bad.db")
		copyFile(t, path, p)
		setMeta(t, p, func(btx *bolt.Tx) error {
			return btx.Bucket(bucketMeta).Put(metaUsers, putUint(uint64(stats.Users+1)))
		})
		if _, err := Check(p); err == nil {
			t.Error("Check accepted counters that do not match the file")
		}
	})
	t.Run("ErrMissingBucket", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "bad.db")
		copyFile(t, path, p)
		setMeta(t, p, func(btx *bolt.Tx) error { return btx.DeleteBucket(bucketFeed) })
		if _, err := Check(p); err == nil {
			t.Error("Check accepted a file without its feed bucket")
		}
	})
	t.Run("ErrForeign", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "foreign.db")
		bdb, err := bolt.Open(p, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = bdb.Update(func(btx *bolt.Tx) error { _, err := btx.CreateBucket([]byte("other")); return err })
		bdb.Close()
		if _, err := Check(p); err == nil {
			t.Error("Check accepted a bbolt file of another program")
		}
	})
	t.Run("ErrNotBolt", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "junk.db")
		if err := os.WriteFile(p, bytes.Repeat([]byte("junk"), 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Check(p); err == nil {
			t.Error("Check accepted junk")
		}
	})
	// A backup anyone can alter, checksums included: meta pages naming pages past the
	// file's end made bbolt read outside its memory map, which kills the process.
	for name, set := range map[string]func(m []byte){
		"ErrFreelistOutside": func(m []byte) { binary.LittleEndian.PutUint64(m[32:], 1<<20) },
		"ErrRootOutside":     func(m []byte) { binary.LittleEndian.PutUint64(m[16:], 1<<20) },
		"ErrPagesOutside":    func(m []byte) { binary.LittleEndian.PutUint64(m[40:], 1<<40) },
		"ErrPageSize":        func(m []byte) { binary.LittleEndian.PutUint32(m[8:], 1<<20) },
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "altered.db")
			copyFile(t, path, p)
			b := mustRead(t, p)
			ps := int(binary.LittleEndian.Uint32(b[16+8:]))
			for i := range 2 {
				m := b[i*ps+16 : i*ps+16+64]
				set(m)
				h := fnv.New64a()
				h.Write(m[:56])
				binary.LittleEndian.PutUint64(m[56:], h.Sum64())
				if _, ok := parseMeta(b[i*ps:]); !ok {
					t.Fatalf("meta page %d does not validate after the change", i)
				}
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Check(p); err == nil || !strings.Contains(err.Error(), "outside the file") {
				t.Errorf("Check = %v, want the meta pages refused", err)
			}
		})
	}
}

func TestReidentify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "src.db")
	digest, stats := fillFile(t, path)
	orig, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	copyFile(t, path, copyPath)
	setMeta(t, copyPath, func(btx *bolt.Tx) error {
		return btx.Bucket(bucketSeqFloor).Put([]byte("u1\x00u2"), putUint(99))
	})
	old, fresh, err := Reidentify(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	if old != orig.Node || fresh == old || fresh == 0 {
		t.Fatalf("Reidentify = %s, %s; want the old ID %s and a new one", old, fresh, orig.Node)
	}
	db, err := Open(copyPath, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	checkInvariants(t, db)
	if db.NodeID() != fresh {
		t.Errorf("NodeID %s, want %s", db.NodeID(), fresh)
	}
	if got := db.Digest(); got != digest {
		t.Errorf("digest root %x, want the original's %x", got.Root(), digest.Root())
	}
	if st, _ := db.Stats(context.Background()); st != stats {
		t.Errorf("Stats %+v, want %+v", st, stats)
	}
	// The new identity stamps after everything the file holds, and numbers its own
	// entries from 1 in a conversation the old identity wrote to.
	if next := db.Clock().Next(); !orig.Clock.Less(next) || next.Node != fresh {
		t.Errorf("first timestamp %s, want after %s and from %s", next, orig.Clock, fresh)
	}
	var e crdt.Entry
	update(t, db, func(tx *Tx) error {
		var err error
		e, err = tx.Append(crdt.ConversationID("u1", "u2"), crdt.Message{From: "u2", To: "u1", Body: "from the copy"})
		return err
	})
	if e.ID.Seq != 1 || e.ID.Origin() != fresh {
		t.Errorf("first entry of the copy %v, want seq 1 from %s", e.ID, fresh)
	}
	if _, _, err := Reidentify(filepath.Join(t.TempDir(), "absent.db")); err == nil {
		t.Error("Reidentify of a missing file succeeded")
	}
}

func copyFile(tb testing.TB, from, to string) {
	tb.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		tb.Fatal(err)
	}
}
