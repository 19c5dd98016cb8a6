package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// SnapshotInfo describes a consistent copy of a data file: what Backup copies, read in
// the transaction that copies it, or what Check found in a file.
type SnapshotInfo struct {
	Size   int64          // bytes of the copy
	Format uint64         // the file's format (FormatVersion for a copy Backup writes)
	Node   crdt.NodeID    // the identity of the node whose file it is
	Clock  crdt.Timestamp // the node's HLC high-water mark, as of the copy
	Stats  Stats          // the node's counters, as of the copy
}

// Backup writes a consistent copy of the whole file to w from one read transaction,
// while reads and writes go on, and returns the number of bytes written. It holds
// nothing of the file in memory beyond what w buffers. If begin is not nil it is called
// first, in the same transaction, with what the copy holds (its size is exactly what
// Backup then writes); an error from begin ends Backup before a byte is written, and
// is returned as is.
//
// The copy opens as a regular data file and carries this node's ID: restore it under a
// fresh identity (Reidentify), never beside the node it came from.
//
// The read transaction holds the pages it copies until it ends: while it runs, the file
// grows by what the writes of that time need, and should it have to grow past the
// mapping Open made (1 GiB, or the file's size if larger), commits to the file wait until
// the copy ends, and so do reads that need them (see DB.settle).
//
// The copy holds every write acknowledged before the call.
func (db *DB) Backup(w io.Writer, begin func(SnapshotInfo) error) (int64, error) {
	var n int64
	if err := db.settle(context.Background()); err != nil {
		return 0, err
	}
	err := db.bolt.View(func(btx *bolt.Tx) error {
		if begin != nil {
			info, err := snapshotInfo(btx)
			if err != nil {
				return err
			}
			if err := begin(info); err != nil {
				return &beginError{err}
			}
		}
		var err error
		n, err = btx.WriteTo(w)
		return err
	})
	var be *beginError
	if errors.As(err, &be) {
		return 0, be.err
	}
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// beginError carries the error of Backup's begin out of the transaction unwrapped.
type beginError struct{ err error }

func (e *beginError) Error() string { return e.err.Error() }

// snapshotInfo reads what btx's copy of the file holds.
func snapshotInfo(btx *bolt.Tx) (SnapshotInfo, error) {
	meta := btx.Bucket(bucketMeta)
	if meta == nil {
		return SnapshotInfo{}, errors.New("no meta bucket: not a sessiond data file")
	}
	info := SnapshotInfo{
		Size:   btx.Size(),
		Format: getUint(meta.Get(metaFormat)),
		Node:   crdt.NodeID(getUint(meta.Get(metaNode))),
		Stats: Stats{
			Users:    counter(meta.Get(metaUsers)),
			Sessions: counter(meta.Get(metaSessions)),
			Messages: counter(meta.Get(metaMessages)),
		},
	}
	if v := meta.Get(metaClock); v != nil {
		ts, err := crdt.DecodeTimestamp(v)
		if err != nil {
			return SnapshotInfo{}, fmt.Errorf("meta hlc: %w", err)
		}
		info.Clock = ts
	}
	if info.Node == 0 {
		return SnapshotInfo{}, errors.New("no node identity in the meta bucket: not a sessiond data file")
	}
	return info, nil
}

// counter decodes a stored counter of a file that may be damaged: -1 if out of range
// (it then matches no count, and Check reports it).
func counter(v []byte) int {
	u := getUint(v)
	if u > math.MaxInt32 {
		return -1
	}
	return int(u)
}

// Check examines the data file at path, which no process may have open, without
// changing it and without its write-ahead log (a copy as Backup writes it has none): bbolt's consistency check of every page, the format (at most
// FormatVersion), every bucket present, every record, log entry and replaced write decoding, and the
// stored counters equal to a count of what the file holds. It returns what the file
// holds, or an error naming the first problem found.
func Check(path string) (SnapshotInfo, error) {
	if err := checkMetaPages(path); err != nil {
		return SnapshotInfo{}, fmt.Errorf("check %s: %w", path, err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer bdb.Close()
	var info SnapshotInfo
	err = bdb.View(func(btx *bolt.Tx) error {
		for err := range btx.Check() {
			return fmt.Errorf("bbolt consistency check: %w", err)
		}
		var err error
		if info, err = snapshotInfo(btx); err != nil {
			return err
		}
		if info.Format > FormatVersion || info.Format < oldestFormat {
			return &FormatError{Found: info.Format, Supported: FormatVersion}
		}
		for _, name := range allBuckets {
			if btx.Bucket(name) == nil {
				if bytes.Equal(name, bucketReplaced) || info.Format < 2 && bytes.Equal(name, bucketSeqFloor) {
					continue // a file an older build wrote may lack replaced, format 1 seq_floor
				}
				return fmt.Errorf("bucket %s missing", name)
			}
		}
		counted, err := count(btx)
		if err != nil {
			return err
		}
		if err := checkReplaced(btx); err != nil {
			return err
		}
		if counted != info.Stats {
			return fmt.Errorf("stored counters %+v, but the file holds %+v", info.Stats, counted)
		}
		return nil
	})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("check %s: %w", path, err)
	}
	return info, nil
}

// checkMetaPages refuses a file that bbolt would open with a meta page naming pages
// outside the file (see boltMeta.inside): a backup is a file anyone may have altered,
// checksums included. It looks where bbolt looks for meta pages: at the start of the
// file, and for the second one at each power of two from 1 KiB to 16 MiB.
func checkMetaPages(path string) error {
	f, err := os.Open(path) // #nosec G304 -- the file the operator names
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	page := make([]byte, 16+64)
	for i := -1; i <= 14; i++ {
		off := int64(0)
		if i >= 0 {
			off = 1024 << i
		}
		if off+int64(len(page)) > st.Size() {
			break
		}
		if _, err := f.ReadAt(page, off); err != nil {
			return err
		}
		if m, ok := parseMeta(page); ok && !m.inside(st.Size()) {
			return fmt.Errorf("bbolt meta page at byte %d names pages outside the file (page size %d, %d pages, root %d, freelist %d; the file has %d bytes): a damaged or altered file",
				off, m.pageSize, m.pages, m.root, m.freelist, st.Size())
		}
	}
	return nil
}

// checkReplaced decodes every mark of the replaced bucket, if there is one.
func checkReplaced(btx *bolt.Tx) error {
	bk := btx.Bucket(bucketReplaced)
	if bk == nil {
		return nil
	}
	return bk.ForEach(func(k, v []byte) error {
		if _, err := crdt.DecodeTimestamp(v); err != nil {
			return fmt.Errorf("replaced write of %q: %w", k, err)
		}
		return nil
	})
}

// count counts what btx holds, decoding every record and log entry.
func count(btx *bolt.Tx) (Stats, error) {
	var st Stats
	err := btx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
		key := string(k)
		m, _, err := decodeRecord(key, v)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(key, crdt.UserPrefix):
			if _, del := m.Flag(crdt.FieldDeleted); !del {
				st.Users++
			}
		case strings.HasPrefix(key, crdt.SessionPrefix):
			st.Sessions++
		}
		return nil
	})
	if err != nil {
		return Stats{}, err
	}
	err = btx.Bucket(bucketLog).ForEach(func(k, v []byte) error {
		i := bytes.IndexByte(k, 0)
		if i < 1 {
			return fmt.Errorf("corrupt log key %x", k)
		}
		e, err := decodeStoredEntry(k[:i+1], k, v)
		if err != nil {
			return err
		}
		if crdt.IsErasureMarker(e.Data) {
			return nil
		}
		if _, err := crdt.DecodeMessage(e.Data); err != nil {
			return fmt.Errorf("log entry %x: %w", k, err)
		}
		st.Messages++
		return nil
	})
	return st, err
}

// Reidentify gives the data file at path, which no process may have open and which has
// no write-ahead log beside it (a copy as Backup writes it), a fresh node identity, so that a copy of a node's file (a restored backup) never poses as the node
// it came from: a new random node ID, and none of the state that speaks for the old one
// — the floors of the old ID's sequence numbers in conversations it dropped (seq_floor),
// the old ID's writes that the state lost (replaced).
// The records and logs stay, the old ID's entries among them as any other origin's, and
// so does the clock's high-water mark: the new identity stamps its writes after
// everything the file holds. The change is one transaction: the file keeps the old
// identity or gets the new one. It returns both IDs.
func Reidentify(path string) (old, fresh crdt.NodeID, err error) {
	if _, err := os.Stat(path); err != nil {
		return 0, 0, err
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", path, err)
	}
	err = bdb.Update(func(btx *bolt.Tx) error {
		info, err := snapshotInfo(btx)
		if err != nil {
			return err
		}
		if info.Format > FormatVersion || info.Format < oldestFormat {
			return &FormatError{Found: info.Format, Supported: FormatVersion}
		}
		old = info.Node
		var b [8]byte
		for fresh == 0 || fresh == old {
			_, _ = rand.Read(b[:])
			fresh = crdt.NodeID(binary.BigEndian.Uint64(b[:]))
		}
		if err := btx.Bucket(bucketMeta).Put(metaNode, b[:]); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketSeqFloor, bucketReplaced} {
			if btx.Bucket(name) != nil {
				if err := btx.DeleteBucket(name); err != nil {
					return err
				}
			}
			if _, err := btx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := bdb.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, fmt.Errorf("reidentify %s: %w", path, err)
	}
	return old, fresh, nil
}
