package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
	"pgregory.net/rapid"
)

// dumpBuckets returns every key and value of every bucket of the file, as
// "bucket\x00key" → value.
func dumpBuckets(tb testing.TB, bdb *bolt.DB) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := bdb.View(func(btx *bolt.Tx) error {
		for _, name := range allBuckets {
			err := btx.Bucket(name).ForEach(func(k, v []byte) error {
				out[string(name)+"\x00"+string(k)] = string(v)
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("dump: %v", err)
	}
	return out
}

// diffDumps describes how got differs from want, or returns "".
func diffDumps(got, want map[string]string) string {
	var d []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("missing %q", k))
		} else if g != v {
			d = append(d, fmt.Sprintf("%q = %x, want %x", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("extra %q", k))
		}
	}
	if len(d) == 0 {
		return ""
	}
	slices.Sort(d)
	return fmt.Sprintf("%d differences, e.g. %v", len(d), d[:min(5, len(d))])
}

// copyDB copies db's data file and its log, as they are now, into a new directory and
// returns the copy's path: what a crash at this moment would leave on disk, if the page
// cache survived (SIGKILL). db must not be committing.
func copyDB(tb testing.TB, db *DB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "copy.db")
	for _, suffix := range []string{"", walSuffix} {
		b, err := os.ReadFile(db.Path() + suffix)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path+suffix, b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return path
}

// checkReplay checks that the write-ahead log records every write: it opens a copy of
// db's files as a crash would leave them — Open restores the last checkpoint, replays
// the log and checkpoints — and compares every bucket with db's. Every test that opens
// a DB with MustOpenDB runs it at its end, so every kind of write the tests make is
// checked: one written around the log would be missing from the copy.
func checkReplay(tb testing.TB, db *DB) {
	tb.Helper()
	settled(tb, db)
	want := dumpBuckets(tb, db.bolt)
	db2, err := Open(copyDB(tb, db), Options{Logger: discardLogger(), Now: db.opts.Now})
	if err != nil {
		tb.Fatalf("open a copy of the files: %v", err)
	}
	defer db2.Close()
	if d := diffDumps(dumpBuckets(tb, db2.bolt), want); d != "" {
		tb.Errorf("replaying the write-ahead log: %s", d)
	}
}

// testWAL writes a log with a header and records of payloads and returns its bytes.
func testWAL(epoch uint64, payloads ...[]byte) []byte {
	metas := bytes.Repeat([]byte{7}, 2*4096)
	b := walHeader{epoch: epoch, pageSize: 4096, metas: metas}.encode()
	for i, p := range payloads {
		b = appendWALRecord(b, epoch, uint64(i+1), p)
	}
	return b
}

func TestParseWAL(t *testing.T) {
	recs := [][]byte{[]byte("first"), bytes.Repeat([]byte("second"), 100), {}, []byte("fourth")}
	full := testWAL(3, recs...)
	hdr := len(testWAL(3))
	// Offsets of each record's start, and the end.
	offs := []int{hdr}
	for _, r := range recs {
		offs = append(offs, offs[len(offs)-1]+walRecordHead+len(r))
	}
	check := func(t *testing.T, data []byte, want int) {
		t.Helper()
		l, err := parseWAL(data)
		if err != nil {
			t.Fatalf("parseWAL: %v", err)
		}
		if len(l.records) != want {
			t.Fatalf("records = %d, want %d", len(l.records), want)
		}
		for i := range want {
			if !bytes.Equal(l.records[i], recs[i]) {
				t.Errorf("record %d = %q, want %q", i, l.records[i], recs[i])
			}
		}
		if l.header.epoch != 3 {
			t.Errorf("epoch = %d, want 3", l.header.epoch)
		}
	}
	t.Run("OK", func(t *testing.T) { check(t, full, 4) })
	t.Run("Empty", func(t *testing.T) { check(t, testWAL(3), 0) })
	t.Run("TornTail", func(t *testing.T) {
		// Every cut inside the last record leaves the first three.
		for cut := offs[3] + 1; cut < len(full); cut++ {
			check(t, full[:cut], 3)
		}
		check(t, full[:offs[3]], 3)
	})
	t.Run("ZeroTail", func(t *testing.T) {
		// The preallocated rest of the file, and a record torn into it.
		data := append(bytes.Clone(full), make([]byte, 1<<16)...)
		check(t, data, 4)
		for _, cut := range []int{offs[3] + 3, offs[3] + walRecordHead, len(full) - 1} {
			data := append(bytes.Clone(full[:cut]), make([]byte, 1<<16)...)
			check(t, data, 3)
		}
	})
	t.Run("TornTailGarbage", func(t *testing.T) {
		// The last record's bytes partly lost: zeros or garbage in its place.
		for _, fill := range []byte{0, 0xff} {
			data := bytes.Clone(full)
			for i := offs[3] + 5; i < len(data); i++ {
				data[i] = fill
			}
			check(t, data, 3)
		}
	})
	t.Run("ErrCorruptRecord", func(t *testing.T) {
		// A flipped bit in a record that a valid one follows is corruption, wherever it is.
		for rec := range 3 {
			for _, at := range []int{offs[rec], offs[rec] + 4, offs[rec] + 8, offs[rec] + walRecordHead, offs[rec+1] - 1} {
				if at >= offs[rec+1] {
					continue
				}
				data := bytes.Clone(full)
				data[at] ^= 0x10
				if _, err := parseWAL(data); !errors.Is(err, ErrCorruptWAL) {
					t.Errorf("record %d, byte %d flipped: err = %v, want ErrCorruptWAL", rec+1, at, err)
				}
			}
		}
	})
	t.Run("CorruptLastRecordIsTail", func(t *testing.T) {
		data := bytes.Clone(full)
		data[len(data)-1] ^= 1
		check(t, data, 3)
	})
	t.Run("ErrCorruptHeader", func(t *testing.T) {
		for _, at := range []int{0, 7, 8, 20, 100, hdr - 1} {
			data := bytes.Clone(full)
			data[at] ^= 1
			if _, err := parseWAL(data); err == nil {
				t.Errorf("header byte %d flipped: no error", at)
			}
		}
		if _, err := parseWAL(full[:hdr-1]); !errors.Is(err, ErrCorruptWAL) {
			t.Errorf("short header: err = %v, want ErrCorruptWAL", err)
		}
	})
	t.Run("OtherEpochIgnored", func(t *testing.T) {
		// A record valid in another log is not valid in this one.
		data := append(testWAL(3, recs[0]), appendWALRecord(nil, 2, 2, recs[1])...)
		check(t, data, 1)
	})
}

// TestWALOpsRoundTrip checks that any sequence of puts and deletes decodes to itself.
func TestWALOpsRoundTrip(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		var o walOps
		var want []walOp
		n := rapid.IntRange(0, 50).Draw(rt, "n")
		for range n {
			op := walOp{
				op:     byte(rapid.IntRange(walPut, walDelete).Draw(rt, "op")),
				bucket: byte(rapid.IntRange(0, len(allBuckets)-1).Draw(rt, "bucket")),
				key:    rapid.SliceOfN(rapid.Byte(), 1, 300).Draw(rt, "key"),
			}
			if op.op == walPut {
				op.value = rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(rt, "value")
				o.put(op.bucket, op.key, op.value)
			} else {
				o.delete(op.bucket, op.key)
			}
			want = append(want, op)
		}
		var got []walOp
		err := decodeWALOps(o.buf, func(op walOp) error {
			got = append(got, op)
			return nil
		})
		if err != nil {
			rt.Fatalf("decode: %v", err)
		}
		if len(got) != len(want) {
			rt.Fatalf("decoded %d operations, want %d", len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.op != w.op || g.bucket != w.bucket || !bytes.Equal(g.key, w.key) || !bytes.Equal(g.value, w.value) {
				rt.Fatalf("operation %d = %+v, want %+v", i, g, w)
			}
		}
		if len(o.buf) > 0 {
			cut := rapid.IntRange(1, len(o.buf)).Draw(rt, "cut")
			// A cut payload either decodes to a prefix or fails; it never panics.
			_ = decodeWALOps(o.buf[:len(o.buf)-cut], func(walOp) error { return nil })
		}
	})
}

// TestBucketOrder pins allBuckets' order: a bucket's index is its number in the log.
func TestBucketOrder(t *testing.T) {
	want := []string{"meta", "records", "log", "log_seq", "convs", "user_convs", "user_sessions", "expiry", "erased", "feed", "leaves", "seq_floor", "replaced"}
	for i, name := range allBuckets {
		if i >= len(want) || string(name) != want[i] {
			t.Fatalf("allBuckets[%d] = %q: the log numbers buckets by this order; append new ones", i, name)
		}
	}
}

// TestReplay writes through the log without checkpoints, crashes (a copy of the files),
// and checks that the copy opens with every write, twice over: a crash during recovery
// replays the same log onto the same checkpoint again.
func TestReplay(t *testing.T) {
	db := MustOpenDB(t, Options{WALLimit: 1 << 40})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(testSeed(t)), 1))
	users := map[string]bool{}
	for i := range 300 {
		key := crdt.UserKey(fmt.Sprintf("u%d", rng.IntN(50)))
		users[key] = true
		merge(t, db, key, newUser(db, fmt.Sprintf("name%d", i)))
		if i%7 == 0 {
			update(t, db, func(tx *Tx) error {
				_, err := tx.Append(crdt.ConversationID("a", "b"), crdt.Message{From: "a", To: "b", Body: fmt.Sprint(i)})
				return err
			})
		}
	}
	// Checkpoints come every few MiB of page writes, so the log holds some of them.
	settled(t, db)
	if db.wal.seq < 20 {
		t.Fatalf("%d records in the log: too few to test replay", db.wal.seq)
	}
	want := dumpBuckets(t, db.bolt)
	path := copyDB(t, db)
	walBytes, err := os.ReadFile(path + walSuffix)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		// Put back the log as the crash left it: the first Open replaced it.
		if err := os.WriteFile(path+walSuffix, walBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		db2, err := Open(path, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		if d := diffDumps(dumpBuckets(t, db2.bolt), want); d != "" {
			t.Errorf("round %d: %s", round, d)
		}
		checkInvariants(t, db2)
		if st, _ := db2.Stats(ctx); st.Users != len(users) {
			t.Errorf("round %d: Users = %d, want %d", round, st.Users, len(users))
		}
		if err := db2.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCheckpoint writes past a small log limit and checks that the log stays bounded,
// every checkpoint starts a new epoch, and a crash after many checkpoints loses nothing.
func TestCheckpoint(t *testing.T) {
	db := MustOpenDB(t, Options{WALLimit: 16 << 10})
	for i := range 500 {
		merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i%40)), newUser(db, fmt.Sprintf("name%d", i)))
		settled(t, db)
		if db.wal.size > 16<<10+64<<10 {
			t.Fatalf("log of %d bytes, limit 16 KiB", db.wal.size)
		}
	}
	if db.epoch < 5 {
		t.Errorf("epoch = %d after writing far past the limit: no checkpoints", db.epoch)
	}
	if _, err := os.Stat(db.Path() + walTempSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary log left behind: %v", err)
	}
}

// TestWALStale: a log whose data file was deleted (a wipe) is not applied to a new file,
// and a missing log (a file from before the log) is not an error.
func TestWALStale(t *testing.T) {
	t.Run("DataFileDeleted", func(t *testing.T) {
		db := MustOpenDB(t)
		merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
		path := copyDB(t, db)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		db2, err := Open(path, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer db2.Close()
		if st, _ := db2.Stats(context.Background()); st.Users != 0 {
			t.Errorf("Users = %d in a fresh file, want 0", st.Users)
		}
		if db2.NodeID() == db.NodeID() {
			t.Error("fresh file kept the old node ID")
		}
	})
	t.Run("NoLog", func(t *testing.T) {
		db := MustOpenDB(t)
		merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
		path := filepath.Join(t.TempDir(), "data.db")
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(db.Path())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		db2, err := Open(path, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer db2.Close()
		if _, ok := mustRecord(t, db2, crdt.UserKey("u1")); !ok {
			t.Error("record lost")
		}
	})
	t.Run("ErrCorruptLog", func(t *testing.T) {
		db := MustOpenDB(t, Options{WALLimit: 1 << 40})
		for i := range 3 {
			merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i)), newUser(db, fmt.Sprintf("n%d", i)))
		}
		path := copyDB(t, db)
		b, err := os.ReadFile(path + walSuffix)
		if err != nil {
			t.Fatal(err)
		}
		l, err := parseWAL(b)
		if err != nil || len(l.records) != 3 {
			t.Fatalf("parseWAL: %d records, %v", len(l.records), err)
		}
		_, hdr, _ := decodeWALHeader(b)
		b[hdr+walRecordHead+3] ^= 0x40 // in the first record's payload
		if err := os.WriteFile(path+walSuffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if db2, err := Open(path, Options{Logger: testLogger(t)}); !errors.Is(err, ErrCorruptWAL) {
			if err == nil {
				db2.Close()
			}
			t.Fatalf("Open with a corrupt record in the middle: err = %v, want ErrCorruptWAL", err)
		}
	})
}

// mappedSize returns the size of bbolt's memory map (its unexported datasz).
func mappedSize(db *DB) int64 {
	return reflect.ValueOf(db.bolt).Elem().FieldByName("datasz").Int()
}

// TestRemap grows a file far past a small memory map: every remap must happen while the
// anchor is released (a remap waits for every read transaction, the anchor included),
// and the committer's lower bound of the map's size must hold.
func TestRemap(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		db := MustOpenDB(t, Options{mmapInitial: 32 << 10, WALLimit: 1 << 40})
		for i := range 200 {
			m := newUser(db, fmt.Sprintf("user%d", i))
			m.Set(crdt.FieldAddress, bytes.Repeat([]byte{'a'}, 2000), db.Clock().Next())
			merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i)), m)
			update(t, db, func(tx *Tx) error {
				if low, real := db.mapLow, mappedSize(db); low > real {
					t.Errorf("write %d: map size at least %d, but it is %d", i, low, real)
				}
				return nil
			})
		}
		if n := mappedSize(db); n < 512<<10 {
			t.Fatalf("map of %d bytes: the file did not grow past the initial map", n)
		}
	})
	t.Run("Watchdog", func(t *testing.T) {
		// The estimate says no commit comes near the map's end: the remaps block on the
		// anchor until the watchdog releases it.
		db := MustOpenDB(t, Options{mmapInitial: 32 << 10, WALLimit: 1 << 40, watchdog: time.Millisecond})
		update(t, db, func(tx *Tx) error {
			tx.b.db.mapLow = 1 << 62 // on the committer, which owns it
			return nil
		})
		settled(t, db)
		epoch := db.epoch
		for i := range 100 {
			m := newUser(db, fmt.Sprintf("user%d", i))
			m.Set(crdt.FieldAddress, bytes.Repeat([]byte{'a'}, 2000), db.Clock().Next())
			merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i)), m)
		}
		settled(t, db)
		if db.epoch == epoch {
			t.Error("no checkpoint: the watchdog never released the anchor")
		}
		if n := mappedSize(db); n < 128<<10 {
			t.Fatalf("map of %d bytes: the file did not grow past the initial map", n)
		}
	})
}

// TestFileBounded: between checkpoints the anchor keeps bbolt from reusing pages, so
// checkpoints must also come when the file grows (grown), not only when the log is full:
// here the log never is.
func TestFileBounded(t *testing.T) {
	db := MustOpenDB(t, Options{WALLimit: 1 << 40})
	for i := range 3000 {
		merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i%300)), newUser(db, fmt.Sprintf("name%d", i)))
	}
	settled(t, db)
	st, err := os.Stat(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	// 3,000 commits rewrite about 100 MiB of pages; bbolt grows the file 16 MiB at a time.
	if st.Size() > 48<<20 {
		t.Errorf("data file of %d MiB after 3,000 small writes", st.Size()>>20)
	}
	t.Logf("data file %d MiB, %d checkpoints", st.Size()>>20, db.epoch-1)
}

// TestWALOtherFile: a backup put in place of the data file of a node that crashed,
// without removing the log, is refused, not overwritten with the log's checkpoint;
// without the log it opens. A node stopped cleanly leaves no log (Close), so a backup
// put in its place opens as it is.
func TestWALOtherFile(t *testing.T) {
	db := MustOpenDB(t, Options{WALLimit: 1}) // a checkpoint after every commit
	merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
	var backup bytes.Buffer
	if _, err := db.Backup(&backup, nil); err != nil {
		t.Fatal(err)
	}
	// Later writes and checkpoints move the log's checkpoint past the backup.
	for i := range 5 {
		merge(t, db, crdt.UserKey(fmt.Sprintf("u%d", i+2)), newUser(db, fmt.Sprintf("n%d", i)))
	}
	checkReplay(t, db)
	crashed := mustRead(t, db.Path()+walSuffix) // the log a crash would have left
	ps := db.bolt.Info().PageSize
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(db.Path() + walSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a log after Close: %v", err)
	}
	if tx, ok := newestTxid(mustRead(t, db.Path())[:2*ps], ps); !ok || tx < 5 {
		t.Fatalf("newest transaction %d (valid %v), want at least 5", tx, ok)
	}
	if err := os.WriteFile(db.Path(), backup.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db.Path()+walSuffix, crashed, 0o600); err != nil {
		t.Fatal(err)
	}
	if db2, err := Open(db.Path(), Options{Logger: testLogger(t)}); err == nil {
		db2.Close()
		t.Fatal("Open of a restored backup beside a newer log succeeded")
	} else {
		t.Logf("Open: %v", err)
	}
	if err := os.Remove(db.Path() + walSuffix); err != nil {
		t.Fatal(err)
	}
	db2, err := Open(db.Path(), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open of the backup alone: %v", err)
	}
	defer db2.Close()
	if st, _ := db2.Stats(context.Background()); st.Users != 1 {
		t.Errorf("Users = %d in the backup, want 1", st.Users)
	}
}

func mustRead(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestWALExtend appends records across several chunks of written-ahead zeros and reads
// them back; then it puts the log in the state a failed extension leaves (records past
// the zeros) and checks that the next extension starts after the records rather than
// writing zeros over them; and it checks that a record larger than a chunk is written
// once, not zeroed first.
func TestWALExtend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	w, err := createWAL(path, walHeader{epoch: 3, pageSize: 4096, metas: make([]byte, 2*4096)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.f.Close()
	var want [][]byte
	appendRecord := func(size int) {
		t.Helper()
		p := bytes.Repeat([]byte{byte(len(want) + 1)}, size)
		if err := w.append(p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	check := func() {
		t.Helper()
		data, err := os.ReadFile(path + walSuffix)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) != w.alloc || w.alloc <= w.size || w.alloc-w.size > walChunk {
			t.Fatalf("file of %d bytes, alloc %d, size %d: want the file to end walChunk or less past the last record, at alloc", len(data), w.alloc, w.size)
		}
		l, err := parseWAL(data)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(l.records, want, bytes.Equal) {
			t.Fatalf("read back %d records, want %d", len(l.records), len(want))
		}
		if l.end != int(w.size) {
			t.Fatalf("log ends at %d, want %d", l.end, w.size)
		}
	}
	for range 1200 { // about 1.9 chunks
		appendRecord(1000 + len(want)%3000)
	}
	check()

	// A failed extension: records were appended past the zeros.
	w.alloc = w.size - 5000
	appendRecord(100)
	check()

	// A record of three chunks: written once, its zeros after it.
	before, ok := bytesWritten(t)
	appendRecord(3 * walChunk)
	if after, _ := bytesWritten(t); ok {
		if limit := int64(3*walChunk+walRecordHead+walChunk) + 64<<10; after-before > limit {
			t.Errorf("wrote %d bytes to append a record of %d, want at most %d", after-before, 3*walChunk, limit)
		}
	}
	check()
}

// bytesWritten returns how many bytes the process has written (Linux's /proc/self/io),
// and false where that is not known.
func bytesWritten(t *testing.T) (int64, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("wchar: ")); ok {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// TestWALErrorsNameTheLog: the log is created under a temporary name and renamed, and
// os.File keeps the name it was opened under; an error of the log, a write's or a cut's
// after it (the log's end unknown), names the log itself, which is what an operator looks
// for, not the temporary file that no longer exists.
func TestWALErrorsNameTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "named.db")
	w, err := createWAL(path, walHeader{epoch: 1, pageSize: 4096, metas: make([]byte, 2*4096)})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.f.Close() // the write fails, and so does the cut after it
	err = w.append([]byte("record"))
	if !errors.Is(err, errWALBroken) {
		t.Fatalf("append on a closed log: %v, want errWALBroken", err)
	}
	if msg := err.Error(); strings.Contains(msg, walTempSuffix) || !strings.Contains(msg, path+walSuffix) {
		t.Errorf("the error names %q, want the log %s: %v", walTempSuffix, path+walSuffix, err)
	}
}
