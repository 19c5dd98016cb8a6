package storage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

// TestPowerLoss loses power at many points of a write load, in the spirit of bbolt's
// own power-failure tests (which drop the writes a device had not synced): every page of
// the data file written since the last sync may or may not have reached the disk, each
// independently — a meta page of a later transaction without its pages, a page of the
// synced tree overwritten after being freed — and the log may end in a record torn while
// it was written. A crash may also come between a checkpoint's sync of the data file and
// its rename of the new log. Each such image is opened, and every acknowledged write must
// be there and the file must pass bbolt's Check and the package's invariants.
//
// Writes are made one at a time so that the images can be taken between commits, once
// the committer is idle (settled: it committed the batch to the file, and checkpointed
// if that was due): everything in the log is synced; the data file is as synced at the
// last checkpoint with any later page writes lost or kept (a crash before the batch's
// commit to the file is one of those images: its pages all lost).
func TestPowerLoss(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	// A small log limit: many checkpoints, and between them many commits that free and
	// reuse pages.
	db := MustOpenDB(t, Options{WALLimit: 48 << 10, mmapInitial: 2 << 20})
	ctx := context.Background()
	ps := db.bolt.Info().PageSize

	read := func(suffix string) []byte {
		b, err := os.ReadFile(db.Path() + suffix)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	synced := read("") // as of Open's checkpoint
	epoch := db.epoch
	// The log file as it is before each write: held open, it can still be read after a
	// checkpoint renamed a new log over it.
	oldWAL, err := os.Open(db.Path() + walSuffix)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { oldWAL.Close() }()

	records := map[string]string{} // acknowledged: record key → first name
	var entries []string           // acknowledged: log keys
	images, opened := 0, 0

	// crash opens the image (data, log) and checks it.
	crash := func(name string, data, wal []byte) {
		t.Helper()
		images++
		path := filepath.Join(t.TempDir(), "crash.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+walSuffix, wal, 0o600); err != nil {
			t.Fatal(err)
		}
		db2, err := Open(path, Options{Logger: discardLogger(), Now: db.opts.Now})
		if err != nil {
			t.Fatalf("%s: Open after power loss: %v", name, err)
		}
		defer db2.Close()
		opened++
		checkInvariants(t, db2)
		for key, want := range records {
			m, ok := mustRecord(t, db2, key)
			got, _ := m.Get(crdt.FieldFirstName)
			if !ok || string(got) != want {
				t.Fatalf("%s: record %s = %q (present %v), want %q acknowledged", name, key, got, ok, want)
			}
		}
		cs, err := db2.Changes(ctx, entries)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) != len(entries) {
			t.Fatalf("%s: %d of %d acknowledged messages present", name, len(cs), len(entries))
		}
	}

	// mix returns the data file after a power loss: each page that differs from the
	// synced image comes from one or the other at random (pages past the synced image's
	// end: the written page or zeros).
	mix := func(cur []byte, keep float64) []byte {
		out := bytes.Clone(cur)
		for off := 0; off < len(out); off += ps {
			end := min(off+ps, len(out))
			if rng.Float64() < keep {
				continue
			}
			if off < len(synced) {
				copy(out[off:end], synced[off:min(end, len(synced))])
			} else {
				clear(out[off:end])
			}
		}
		return out
	}

	// torn writes part of a record that was being written when power went after the
	// log's last record (into the preallocated zeros, or past the end).
	torn := func(wal []byte) []byte {
		l, err := parseWAL(wal)
		if err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, 1+rng.IntN(3000))
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		rec := appendWALRecord(nil, l.header.epoch, uint64(len(l.records)+1), payload)
		rec = rec[:rng.IntN(len(rec))]
		out := bytes.Clone(wal)
		if n := l.end + len(rec); n > len(out) {
			out = append(out, make([]byte, n-len(out))...)
		}
		copy(out[l.end:], rec)
		return out
	}

	const writes = 1500
	for i := range writes {
		conv := crdt.ConversationID(fmt.Sprintf("a%d", rng.IntN(5)), "z")
		var key, name string
		var lk string
		update(t, db, func(tx *Tx) error {
			if rng.IntN(4) == 0 {
				a, _, _ := crdt.Participants(conv)
				e, err := tx.Append(conv, crdt.Message{From: a, To: "z", Body: fmt.Sprintf("m%d", i)})
				lk = LogKey(conv, e.ID)
				return err
			}
			key = crdt.UserKey(fmt.Sprintf("u%d", rng.IntN(200)))
			// Values of varied size: pages split, merge and move.
			name = fmt.Sprintf("%d-%s", i, bytes.Repeat([]byte{'x'}, rng.IntN(1500)))
			var m crdt.Map
			m.Set(crdt.FieldFirstName, []byte(name), db.Clock().Next())
			_, err := tx.Merge(key, m)
			return err
		})
		settled(t, db)
		if lk != "" {
			entries = append(entries, lk)
		} else {
			records[key] = name
		}
		if db.epoch != epoch {
			// The checkpoint after the batch synced the file. A crash between that
			// sync and the new log's rename leaves the old log, which ends with the
			// batch's record.
			synced, epoch = read(""), db.epoch
			old, err := io.ReadAll(oldWAL)
			if err != nil {
				t.Fatal(err)
			}
			crash(fmt.Sprintf("write %d, checkpoint interrupted", i), synced, old)
		}
		oldWAL.Close()
		if oldWAL, err = os.Open(db.Path() + walSuffix); err != nil {
			t.Fatal(err)
		}
		if i%50 != 49 {
			continue
		}
		cur, wal := read(""), read(walSuffix)
		for trial, keep := range []float64{0, 1, 0.5, 0.1, 0.9} {
			w := wal
			if trial%2 == 0 {
				w = torn(wal)
			}
			crash(fmt.Sprintf("write %d, trial %d (keep %.1f)", i, trial, keep), mix(cur, keep), w)
		}
	}
	t.Logf("seed %d: %d power-loss images opened, every acknowledged write present, %d checkpoints, data file %d bytes", seed, opened, db.epoch-1, len(read("")))
	if opened != images {
		t.Fatalf("%d of %d images opened", opened, images)
	}
}
