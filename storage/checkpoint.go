package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Durability: the write-ahead log in front of bbolt.
//
// The committer appends each group commit's bbolt writes to the log as one record and
// syncs it (one fdatasync), then answers the writers; the bbolt transaction, which later
// group commits may join, is committed with NoSync (page writes, no sync) afterwards
// (commit.go: flush), and readers of the file wait for that commit, so they see a write
// as soon as it is acknowledged. Every so often (when the log reaches
// Options.WALLimit, or the file has grown, see grown) and on Close the committer
// checkpoints: it syncs the bbolt file, copies its two meta pages into the
// header of a fresh, empty log and renames that over the old one. Open restores the
// last checkpoint's meta pages into the file and replays the log's records on top.
//
// Why a power loss cannot corrupt the file although bbolt commits without syncing. Let S
// be the transaction of the last checkpoint; everything S's meta page reaches was synced
// then, and the log's header holds that meta page byte for byte. After a power loss the
// file may hold any mix of old and new contents of the pages written since (a meta page
// of a later transaction without its pages, say). Recovery writes S's meta pages back,
// so bbolt opens tree S; tree S is intact if no page of it was written after S. bbolt
// writes a transaction's pages only to pages free to that transaction, and a page of S
// becomes free only when a later transaction frees it and no read transaction that could
// see it is open (bbolt releases pending pages at the start of each write transaction,
// keeping those a reader as old as S may still read). The anchor is such a reader: a
// read transaction opened right after each checkpoint and held until the next, so no
// page of S is written before the next checkpoint syncs a new state. Pages allocated and
// freed after S are not S's and may be reused. The freelist is not stored
// (NoFreelistSync): bbolt rebuilds it from tree S on Open, so nothing else on disk must
// agree with the restored meta pages. The log then holds every write acknowledged after
// S, in commit order; each record is a batch's bbolt puts and deletes, so replaying them
// in order onto S, or onto any later committed state, yields the state of the last
// record: the value of each key is set by the last write to it. (A record acknowledged
// but not yet committed to the file is replayed like the others: it is in the log.)
//
// One transaction right after a checkpoint needs no anchor: it can only reuse pages
// freed before S, which are not S's. Open uses this: it replays the whole log and runs
// its own initialisation in one transaction, then checkpoints.
//
// The anchor and bbolt's memory map. bbolt grows its memory map (a remap) when a commit
// allocates past it, and a remap waits for every open read transaction — the anchor too,
// which the committer itself would release only after the commit: a deadlock. Releasing
// the anchor during a commit is safe, because the commit's free pages were fixed when it
// began; only the next transaction could reuse S's pages, so the committer checkpoints
// before it begins. The committer releases the anchor before a commit that might reach
// the end of the map (mapLow, a lower bound of the map's size, less mapMargin), and, in
// case that estimate is ever wrong, a timer releases it when a commit takes longer than
// commitWatchdog. Either costs one checkpoint.

// kvWriter is the write half of a bucket: a batch's wbucket, or a plain bbolt bucket
// while Open rebuilds derived state.
type kvWriter interface {
	Put(key, value []byte) error
	Delete(key []byte) error
}

// bucketID returns name's index in allBuckets, its number in log records. The order of
// allBuckets is part of the log's format: new buckets go at its end.
func bucketID(name []byte) byte {
	for i, n := range allBuckets {
		if bytes.Equal(n, name) {
			return byte(i) // #nosec G115 -- a dozen buckets
		}
	}
	panic(fmt.Sprintf("storage: bucket %q not in allBuckets", name))
}

// defaultWALLimit is Options.WALLimit's default.
const defaultWALLimit = 32 << 20

// mapMargin is how close to the end of bbolt's memory map a batch may start before the
// committer releases the anchor for its commit, beyond four times the bytes it writes: a
// commit allocates a few pages per write, and 64 MiB (or a quarter of a smaller map) is
// far beyond any but a pathological one (the watchdog covers that).
const mapMargin = 64 << 20

// nearMapEnd reports whether the commit of btx, which wrote about written bytes, might
// allocate past the end of bbolt's memory map.
func (db *DB) nearMapEnd(btx *bolt.Tx, written int) bool {
	return btx.Size()+min(mapMargin, db.mapLow/4)+4*int64(written) >= db.mapLow
}

// commitWatchdog is how long a commit may hold the anchor. See the comment above.
const commitWatchdog = time.Second

// grown reports whether the file's used part grew by more than an eighth, and at least
// 4 MiB, since the last checkpoint: then a checkpoint is due whatever the log's size.
//
// bbolt reuses a page freed since the checkpoint only if it was allocated from its
// freelist after the checkpoint; a page it allocated by extending the file is not
// tracked and stays pinned by the anchor, as do the checkpoint's own pages. Without this
// bound a log of WALLimit bytes could stand for hundreds of megabytes of page writes, all
// at the end of the file. A checkpoint frees all of them at once; after a few, commits
// allocate from the freelist, the file stops growing (at about twice the pages a
// checkpoint interval rewrites) and checkpoints come from the log's size again.
func (db *DB) grown() bool {
	return db.hwm-db.hwmCkp > max(4<<20, db.hwmCkp/8)
}

// defaultMmap is the initial size of bbolt's memory map (address space only; it spares
// remaps, which wait for readers).
const defaultMmap = 1 << 30

// bboltMapSize is the size bbolt v1.5 maps for a file of at least size bytes (its
// mmapSize): a power of two from 32 KiB to 1 GiB, then multiples of 1 GiB.
func bboltMapSize(size int64) int64 {
	for i := uint(15); i <= 30; i++ {
		if size <= 1<<i {
			return 1 << i
		}
	}
	const step = 1 << 30
	if r := size % step; r > 0 {
		size += step - r
	}
	return size
}

// anchor holds the read transaction that keeps bbolt from reusing the pages of the last
// checkpoint's state.
type anchor struct {
	mu   sync.Mutex
	tx   *bolt.Tx
	lost bool // released before the next checkpoint: one is due before the next write
}

func (a *anchor) set(tx *bolt.Tx) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tx != nil {
		_ = a.tx.Rollback()
	}
	a.tx, a.lost = tx, false
}

// release closes the anchor ahead of the next checkpoint.
func (a *anchor) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tx != nil {
		_ = a.tx.Rollback()
		a.tx, a.lost = nil, true
	}
}

func (a *anchor) isLost() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lost
}

// close closes the anchor for good (Close).
func (a *anchor) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tx != nil {
		_ = a.tx.Rollback()
		a.tx = nil
	}
}

// watchdog releases an anchor if a commit outlasts it.
type watchdog struct {
	t     *time.Timer
	fired chan struct{}
}

func (a *anchor) watch(d time.Duration) *watchdog {
	w := &watchdog{fired: make(chan struct{})}
	w.t = time.AfterFunc(d, func() {
		a.release()
		close(w.fired)
	})
	return w
}

// stop disarms the watchdog; if it already fired, it waits until the anchor is released,
// so that the committer then sees it lost.
func (w *watchdog) stop() {
	if w != nil && !w.t.Stop() {
		<-w.fired
	}
}

// checkpoint makes the bbolt file durable as it is, starts a new, empty log whose header
// holds the file's meta pages, and anchors the state. It runs on the committer (or in
// Open and Close, where no commit can run).
func (db *DB) checkpoint() error {
	if err := db.bolt.Sync(); err != nil {
		return fmt.Errorf("sync data file: %w", err)
	}
	ps := db.bolt.Info().PageSize
	metas := make([]byte, 2*ps)
	if _, err := db.file.ReadAt(metas, 0); err != nil {
		return fmt.Errorf("read meta pages: %w", err)
	}
	w, err := createWAL(db.path, walHeader{epoch: db.epoch + 1, pageSize: ps, metas: metas})
	if err != nil {
		return fmt.Errorf("write-ahead log: %w", err)
	}
	if db.wal != nil {
		_ = db.wal.f.Close()
	}
	db.wal, db.epoch = w, w.epoch
	tx, err := db.bolt.Begin(false)
	if err != nil {
		db.anchor.release()
		return fmt.Errorf("anchor: %w", err)
	}
	db.anchor.set(tx)
	db.hwm, db.hwmCkp = tx.Size(), tx.Size()
	db.mapLow = max(db.mapLow, bboltMapSize(tx.Size()+int64(ps)))
	return nil
}

// dropLog makes the file durable as it is and removes the log, for Close: a file closed
// cleanly needs no log (Open opens a file without one as it is), and a file moved in
// beside the stopped node's data (a backup restored elsewhere) then meets no stale log,
// whose checkpoint Open would otherwise write over it. A crash before the removal
// leaves the log, which Open replays onto the synced file to the same state.
func (db *DB) dropLog() error {
	if err := db.bolt.Sync(); err != nil {
		return fmt.Errorf("sync data file: %w", err)
	}
	if db.wal != nil {
		_ = db.wal.f.Close()
		db.wal = nil
	}
	if err := os.Remove(db.path + walSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove write-ahead log: %w", err)
	}
	return syncDir(filepath.Dir(db.path))
}

// openDataFile opens and locks the data file at path and brings it back to the state of
// the last checkpoint if a log is beside it, returning the file (bbolt takes it over)
// and the log's records to replay. A file that is new (empty) has no log: any log left
// beside it belonged to a file that was deleted, and is removed.
func openDataFile(path string, timeout time.Duration) (*os.File, *walLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) // #nosec G304 -- the operator's data file
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*os.File, *walLog, error) {
		_ = f.Close()
		return nil, nil, err
	}
	locked, err := lockFile(f, timeout)
	if err != nil {
		return fail(fmt.Errorf("lock: %w", err))
	}
	if !locked {
		return fail(fmt.Errorf("data file is in use by another process (lock not acquired within %s)", timeout))
	}
	if err := os.Remove(path + walTempSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if st.Size() == 0 {
		if err := os.Remove(path + walSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail(err)
		}
		return f, nil, nil
	}
	data, err := os.ReadFile(path + walSuffix) // #nosec G304 -- beside the data file
	if errors.Is(err, os.ErrNotExist) {
		return f, nil, nil // written by a version without a log: synced on every commit
	}
	if err != nil {
		return fail(fmt.Errorf("read write-ahead log: %w", err))
	}
	l, err := parseWAL(data)
	if err != nil {
		return fail(fmt.Errorf("read write-ahead log: %w", err))
	}
	if err := restoreMetas(f, l.header.metas, l.header.pageSize); err != nil {
		return fail(fmt.Errorf("restore checkpoint: %w", err))
	}
	return f, &l, nil
}

// restoreMetas writes the checkpoint's meta pages over the file's and syncs them if they
// differ (after a crash: the file may hold later, unsynced ones). It refuses a file whose
// meta pages are all older than the checkpoint's: not the file the log was written for
// (a backup restored without removing the log, say), onto which the checkpoint's pages
// would make a corrupt file. (After a power loss the file's newest valid meta page may
// be the one before the checkpoint's, never an older one.)
func restoreMetas(f *os.File, metas []byte, pageSize int) error {
	cur := make([]byte, len(metas))
	if _, err := f.ReadAt(cur, 0); err != nil {
		return fmt.Errorf("read meta pages: %w", err)
	}
	if bytes.Equal(cur, metas) {
		return nil
	}
	if have, ok := newestTxid(cur, pageSize); ok {
		if want, _ := newestTxid(metas, pageSize); have+1 < want {
			return fmt.Errorf("the data file is older than its write-ahead log (transaction %d, the log's checkpoint %d): if the file was restored from a backup, move the -wal file away", have, want)
		}
	}
	if _, err := f.WriteAt(metas, 0); err != nil {
		return err
	}
	return fdatasync(f)
}

// newestTxid returns the highest transaction ID among the valid bbolt meta pages in
// metas (two pages of pageSize bytes), and whether either is valid.
func newestTxid(metas []byte, pageSize int) (uint64, bool) {
	var newest uint64
	var ok bool
	for i := range 2 {
		if m, valid := parseMeta(metas[i*pageSize:]); valid {
			newest, ok = max(newest, m.txid), true
		}
	}
	return newest, ok
}

// boltMeta is what sessiond reads of a bbolt meta page.
type boltMeta struct {
	pageSize                    uint32
	root, freelist, pages, txid uint64 // pages: the high-water mark, in pages
}

// noFreelist is the freelist page ID of a file whose freelist is not stored
// (NoFreelistSync).
const noFreelist = ^uint64(0)

// parseMeta reads the meta page that page begins with, and reports whether bbolt would
// take it as valid (magic, version and checksum; nothing else). It reads the page as
// version 2 of bbolt's format lays it out: a 16-byte page header, then magic, version,
// page size, flags (u32 each), root bucket (16 bytes), freelist and high-water page IDs,
// transaction ID and an FNV-64a checksum of the fields before it (u64 each), in the
// machine's byte order (little-endian on every platform sessiond is built for).
func parseMeta(page []byte) (boltMeta, bool) {
	if len(page) < 16+64 {
		return boltMeta{}, false
	}
	m := page[16 : 16+64]
	le := binary.LittleEndian
	if le.Uint32(m) != 0xED0CDAED || le.Uint32(m[4:]) != 2 {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		pages: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// inside reports whether the meta page's page IDs lie within a file of size bytes, and
// its page size is one bbolt writes: bbolt checks neither before it reads the pages they
// name, and reading past the end of its memory map kills the process (SIGSEGV) instead of
// returning an error.
func (m boltMeta) inside(size int64) bool {
	ps := uint64(m.pageSize)
	if ps < 1024 || ps > 64<<10 || ps&(ps-1) != 0 || size < 0 {
		return false
	}
	return m.pages >= 4 && m.pages <= uint64(size)/ps && m.root >= 2 && m.root < m.pages &&
		(m.freelist == noFreelist || m.freelist >= 2 && m.freelist < m.pages)
}

// replay applies the log's records, in order, in btx.
func replay(btx *bolt.Tx, l *walLog) error {
	for i, rec := range l.records {
		if err := replayRecord(btx, rec); err != nil {
			return fmt.Errorf("replay record %d: %w", i+1, err)
		}
	}
	return nil
}

// replayRecord applies one log record's operations in btx.
func replayRecord(btx *bolt.Tx, rec []byte) error {
	return decodeWALOps(rec, func(o walOp) error {
		if int(o.bucket) >= len(allBuckets) {
			return fmt.Errorf("%w: bucket %d", ErrCorruptWAL, o.bucket)
		}
		bk := btx.Bucket(allBuckets[o.bucket])
		if bk == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrCorruptWAL, allBuckets[o.bucket])
		}
		if o.op == walPut {
			return bk.Put(o.key, o.value)
		}
		return bk.Delete(o.key)
	})
}
