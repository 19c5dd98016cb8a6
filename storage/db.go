package storage

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the name of the data file in a node's data directory.
const FileName = "sessiond.db"

// Options configures Open. The zero Options is valid: every field has a default.
type Options struct {
	// Timeout is how long Open waits for the data file's lock; default 1s. When it runs
	// out, Open fails with an error saying the data file is in use by another process.
	Timeout time.Duration
	// Now is the physical clock for the HLC and for expiry; default time.Now.
	Now func() time.Time
	// MaxSkew bounds how far ahead of Now a remote timestamp may be; default 1 minute.
	// ApplyRemote rejects changes beyond it.
	MaxSkew time.Duration
	// Logger receives the package's logs; nil logs nothing.
	Logger *slog.Logger
	// OnCommit, when set, is called after every durable commit with the changes it made,
	// local and remote, each key once with its state after the commit. It runs on the
	// committer goroutine, so it must not block or call back into the DB: neither its
	// writes nor its reads of the file, which may wait for the committer (settle). The
	// slice is the callee's; the Maps in it are shared with the record cache and must
	// only be read.
	OnCommit func([]Change)
	// OnBatch, when set, is called after every group commit that became durable, with
	// what it took (for metrics). It runs on the committer goroutine after the writers
	// were answered, so it must be quick and must not call the DB.
	OnBatch func(BatchStats)
	// RecordCache is how many decoded records Record and Records keep in memory for the
	// next read of the same record; default 16384, negative for none. A cached record
	// costs 1–2 KiB of heap (a session with eight data keys: 1.7 KiB).
	RecordCache int
	// WALLimit is how large the write-ahead log may grow, in bytes, before the committer
	// checkpoints (syncs the bbolt file and starts a new log); default 32 MiB. It bounds
	// the log on disk and the replay on Open, which reads the whole log into memory.
	// Checkpoints also come when the data file's used part has grown by 4 MiB or an
	// eighth since the last one, which bounds the file.
	WALLimit int64
	// OnMigrate, when set, is called during Open after each step of migrating an older
	// data file to FormatVersion (from, to: the step's formats), inside the transaction
	// that migrates it, before it commits. For logs and crash tests; it must not call the
	// DB.
	OnMigrate func(from, to uint64)

	mmapInitial int           // bbolt's InitialMmapSize; default defaultMmap (tests set it small)
	watchdog    time.Duration // default commitWatchdog
}

// Log attribute keys.
const (
	attrPath   = "path"
	attrNode   = "node"
	attrKeys   = "keys"
	attrUser   = "user"
	attrCount  = "count"
	attrErr    = "err"
	attrRemote = "remote"
)

// Bucket names. Everything under records and log is replicated state; the rest is
// derived from it on this node and never leaves it.
var (
	bucketMeta         = []byte("meta")          // node id, counters, feed head, HLC mark
	bucketRecords      = []byte("records")       // record key → feed seq(8) + Map encoding
	bucketLog          = []byte("log")           // conv 0 EntryID(28) → feed seq(8) + data
	bucketLogSeq       = []byte("log_seq")       // conv 0 origin(8) seq(8) → Timestamp(20)
	bucketConvs        = []byte("convs")         // conv → convState
	bucketUserConvs    = []byte("user_convs")    // user 0 conv → ∅
	bucketUserSessions = []byte("user_sessions") // user 0 created(20) session key → ∅
	bucketExpiry       = []byte("expiry")        // expires(8) session key → ∅, keep(8) key-value or subject record key → ∅
	bucketErased       = []byte("erased")        // user → how it is known erased (erase.go)
	bucketFeed         = []byte("feed")          // seq(8) → replication key
	bucketLeaves       = []byte("leaves")        // leaf(2) replication key → ∅
	bucketSeqFloor     = []byte("seq_floor")     // conv → our highest seq there before a drop or an erasure emptied it
	bucketReplaced     = []byte("replaced")      // record key, or 0 conv → Timestamp(20): our latest write there the state lost (overtaken.go)
)

// allBuckets are the buckets Open creates, in the order that numbers them in the log.
// The last, replaced, came after format 3 without a format of its own: it is this node's
// knowledge, not replicated state, and a build that does not know it neither fills nor
// empties it, which only makes the keys it names count as carrying a write of ours for
// longer (DB.Replaced). A file last opened by such a build may lack it; Open creates it.
var allBuckets = [][]byte{bucketMeta, bucketRecords, bucketLog, bucketLogSeq, bucketConvs,
	bucketUserConvs, bucketUserSessions, bucketExpiry, bucketErased, bucketFeed, bucketLeaves, bucketSeqFloor,
	bucketReplaced}

// present is the value of index keys that carry no data. It is not empty: within a write
// transaction bbolt's Get returns nil for a key put with an empty value, which would make
// the key look absent.
var present = []byte{1}

// Meta keys.
var (
	metaFormat   = []byte("format")
	metaLeaves   = []byte("leaf_scheme") // see leafScheme
	metaNode     = []byte("node")
	metaHead     = []byte("feed_head")
	metaGC       = []byte("feed_gc")
	metaClock    = []byte("hlc")
	metaUsers    = []byte("users")
	metaSessions = []byte("sessions")
	metaMessages = []byte("messages")
)

// ErrClosed is returned by writes to a closed DB.
var ErrClosed = errors.New("storage: database closed")

// ErrFailed wraps the failure that stopped a DB (a failed write or sync of the log, commit
// or checkpoint: a full disk, a quota, an I/O error): the log or the file takes no more,
// or its state is unknown, so every later write, and every read of the file, fails with
// it until the DB is opened again, which recovers every acknowledged write from the log.
// See DB.Failed.
var ErrFailed = errors.New("storage failed; writes refused until it is opened again")

// DB is a node's durable replica: records and message logs in one bbolt file, with the
// indexes, change feed and digest that replication needs. All methods are safe for
// concurrent use. Writes funnel through one committer goroutine that commits concurrent
// callers' work together (see Update).
type DB struct {
	bolt  *bolt.DB
	path  string
	opts  Options
	log   *slog.Logger
	node  crdt.NodeID
	clock *crdt.Clock
	floor int64 // HLC high-water mark found on Open; physical time never reads below it

	reqs    chan *request
	stopped chan struct{}

	// The write-ahead log (checkpoint.go). The committer owns these; Open before it
	// starts and Close after it stops.
	file   *os.File // the data file, as bbolt has it open
	wal    *walFile
	epoch  uint64 // the log's epoch: checkpoints so far
	anchor anchor
	mapLow int64 // a lower bound of the size of bbolt's memory map
	hwm    int64 // bbolt's high-water mark (bytes) before the latest commit
	hwmCkp int64 // … at the latest checkpoint
	failed error // set when the log's or the file's state is unknown: writes fail with it (ErrFailed)
	// stop is closed when failed is set (Failed).
	stop chan struct{}
	// The open transaction (commit.go): acknowledged batches not yet flushed to the file,
	// their log records in order, their bytes, and the capacity to give the next record.
	wtx            *bolt.Tx
	unflushed      [][]byte
	unflushedBytes int
	opsCap         int

	mu     sync.RWMutex // guards closed against enqueueing
	closed bool

	closeOnce sync.Once
	closeErr  error

	dmu    sync.RWMutex
	digest crdt.Digest // guarded by dmu; written by the committer only
	usage  usageTable  // what each app's records take (usage.go)

	cache *recordCache
	// contested: names claimed by more than one account; see Contested.
	contested contestedNames

	lag       lag // acknowledged batches against flushed ones; see settle
	overtaken overtakenWrites

	head     atomic.Uint64
	mark     atomic.Pointer[crdt.Timestamp] // see Committed
	users    atomic.Int64
	sessions atomic.Int64
	messages atomic.Int64
}

// Open opens or creates the bbolt file at path. On first open it generates a random node
// ID, kept in the file for its lifetime. It takes the file's lock, waiting up to
// opts.Timeout and then failing with an error that says the data file is in use by
// another process. If a write-ahead log is beside the file (path + "-wal"), it restores
// the file to the log's checkpoint and replays the log, and it fails with ErrCorruptWAL
// if a record in the middle of the log is damaged. It rebuilds the in-memory digest in
// one sequential pass that hashes the stored values without decoding them (counters are
// stored, not recounted), checkpoints (a new, empty log), and starts the committer
// goroutine; Close stops it and checkpoints again.
func Open(path string, opts Options) (*DB, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxSkew <= 0 {
		opts.MaxSkew = time.Minute
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.WALLimit <= 0 {
		opts.WALLimit = defaultWALLimit
	}
	if opts.mmapInitial <= 0 {
		opts.mmapInitial = defaultMmap
	}
	if opts.watchdog <= 0 {
		opts.watchdog = commitWatchdog
	}
	f, l, err := openDataFile(path, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         opts.Timeout,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,             // rebuilt on open; recovery relies on it (checkpoint.go)
		InitialMmapSize: opts.mmapInitial, // address space only; spares remaps that wait for readers
		// The file is open and locked already: recovery has restored the checkpoint's
		// meta pages in it. bbolt takes the same lock on it again at once.
		OpenFile: func(string, int, os.FileMode) (*os.File, error) { return f, nil },
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: data file is in use by another process (lock not acquired within %s)", path, opts.Timeout)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Commits are made durable by the log; see checkpoint.go for why the file stays
	// consistent. Without a log (a new file, or one written by a release before the log,
	// such as the first release, which init may migrate) there is no checkpoint to fall
	// back on: init's transaction is synced as bbolt syncs, so that a power loss leaves
	// the file as it was or as init left it.
	bdb.NoSync = l != nil
	if opts.RecordCache == 0 {
		opts.RecordCache = 16384
	}
	db := &DB{bolt: bdb, path: path, opts: opts, log: logger, cache: newRecordCache(opts.RecordCache),
		reqs: make(chan *request, maxBatch), stopped: make(chan struct{}), stop: make(chan struct{}), file: f}
	if st, err := f.Stat(); err == nil {
		db.mapLow = bboltMapSize(max(st.Size(), int64(opts.mmapInitial)))
	}
	var replayed int
	if l != nil {
		db.epoch, replayed = l.header.epoch, len(l.records)
	}
	err = db.init(l)
	bdb.NoSync = true
	if err == nil {
		err = db.checkpoint()
	}
	if err != nil {
		db.anchor.close()
		if db.wal != nil {
			_ = db.wal.f.Close()
		}
		_ = bdb.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.log = logger.With(attrNode, db.node.String())
	go db.commitLoop()
	if replayed > 0 {
		db.log.Info("replayed write-ahead log", attrCount, replayed)
	}
	db.log.Debug("opened", attrPath, path, attrKeys, db.users.Load()+db.sessions.Load()+db.messages.Load())
	return db, nil
}

// init replays the write-ahead log l (if any), creates the buckets and the node
// identity, migrates a file of an older format (format.go), and loads counters, feed
// head, the HLC high-water mark and the digest. Its writes are one transaction, which
// Open's checkpoint then makes durable.
func (db *DB) init(l *walLog) error {
	var (
		hw       crdt.Timestamp
		migrated uint64 // the format the file was migrated from, if it was
	)
	err := db.bolt.Update(func(btx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := btx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if l != nil {
			if err := replay(btx, l); err != nil {
				return err
			}
		}
		meta := btx.Bucket(bucketMeta)
		switch v := meta.Get(metaFormat); {
		case v == nil && meta.Get(metaNode) == nil: // a new file
			if err := meta.Put(metaFormat, putUint(FormatVersion)); err != nil {
				return err
			}
			if err := meta.Put(metaLeaves, putUint(leafScheme)); err != nil {
				return err
			}
		case len(v) != 8:
			return errors.New("meta bucket holds no valid format version: not a sessiond data file, or a damaged one")
		case getUint(v) != FormatVersion:
			from := getUint(v)
			if err := migrate(btx, from, db.opts.OnMigrate); err != nil {
				return err
			}
			migrated = from
		}
		// The leaf index is derived state with its own scheme mark: a file that lacks the
		// mark, whatever its format says, has it rebuilt (migrateLeaves does nothing when
		// the mark is there).
		if err := migrateLeaves(btx); err != nil {
			return err
		}
		if v := meta.Get(metaNode); len(v) == 8 {
			db.node = crdt.NodeID(binary.BigEndian.Uint64(v))
		} else {
			var b [8]byte
			for db.node == 0 {
				_, _ = rand.Read(b[:])
				db.node = crdt.NodeID(binary.BigEndian.Uint64(b[:]))
			}
			if err := meta.Put(metaNode, b[:]); err != nil {
				return err
			}
		}
		if v := meta.Get(metaClock); v != nil {
			hw, _ = crdt.DecodeTimestamp(v)
		}
		db.head.Store(getUint(meta.Get(metaHead)))
		db.users.Store(int64(getUint(meta.Get(metaUsers))))
		db.sessions.Store(int64(getUint(meta.Get(metaSessions))))
		db.messages.Store(int64(getUint(meta.Get(metaMessages))))
		return nil
	})
	if err != nil {
		return err
	}
	if migrated != 0 {
		db.log.Info("data file migrated", attrPath, db.path, "from_format", migrated, "to_format", FormatVersion)
	}
	// Physical time never reads below the high-water mark, so a clock stepped back
	// across a restart cannot make this node issue timestamps below its earlier ones.
	db.floor = hw.Wall
	db.mark.Store(&hw)
	db.clock = crdt.NewClock(db.node, db.physicalNow, db.opts.MaxSkew)
	if !hw.IsZero() {
		if err := db.clock.Observe(hw); err != nil {
			return fmt.Errorf("restore clock: %w", err)
		}
	}
	return db.bolt.View(func(btx *bolt.Tx) error {
		if err := db.contested.load(btx); err != nil {
			return err
		}
		return rebuildDigest(btx, &db.digest, &db.usage.apps)
	})
}

func (db *DB) physicalNow() time.Time {
	t := db.opts.Now()
	if t.UnixNano() < db.floor {
		return time.Unix(0, db.floor)
	}
	return t
}

// Close waits for queued and in-flight writes, stops the committer goroutine,
// checkpoints (syncs the file and empties the log) and closes the file. If a failure had
// made writes stop (see Update), it skips the checkpoint, leaving recovery to the next
// Open, and returns that failure. Writes after Close fail with ErrClosed. It is safe to call more than once; every
// call returns the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.mu.Lock()
		db.closed = true
		close(db.reqs)
		db.mu.Unlock()
		<-db.stopped
		// The committer has stopped: Close owns the log now.
		err := db.failed
		if err == nil {
			err = db.dropLog()
		}
		db.anchor.close()
		if db.wal != nil {
			_ = db.wal.f.Close()
		}
		if cerr := db.bolt.Close(); err == nil {
			err = cerr
		}
		db.closeErr = err
	})
	return db.closeErr
}

// Failed returns a channel that is closed when the DB fails (ErrFailed): from then on it
// refuses writes and reads of the file, and only opening it again (after the cause is
// mended: space freed on a full disk) makes it usable. A process should then stop, so
// that others route around it, and be started again.
func (db *DB) Failed() <-chan struct{} { return db.stop }

// NodeID returns this replica's identity, generated when the file was created.
func (db *DB) NodeID() crdt.NodeID { return db.node }

// Clock returns the node's hybrid logical clock. Its high-water mark is stored with every
// commit, so after a restart it never issues a timestamp below one it issued or observed
// before.
func (db *DB) Clock() *crdt.Clock { return db.clock }

// Committed returns the clock's reading at the end of the latest durable commit: every
// write this node stamped at or before it is durable and visible to readers, and every
// later write will be stamped after it. Replication sends it with the changes it pushes,
// so a peer knows which of this node's writes it holds (see crdt.Bookmark).
//
// Writes are stamped only on the committer, inside Update's function, which is what
// makes this hold; a timestamp taken outside Update and written later would break it.
func (db *DB) Committed() crdt.Timestamp { return *db.mark.Load() }

// Path returns the bbolt file's path.
func (db *DB) Path() string { return db.path }

// Stats counts what the node holds.
type Stats struct {
	Users    int // user records not erased
	Sessions int // session records held, in any state
	Messages int // log entries held, erasure markers not counted
}

// Stats returns the node's counters. They are kept up to date by every commit, not
// counted by scanning.
func (db *DB) Stats(ctx context.Context) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	return Stats{Users: int(db.users.Load()), Sessions: int(db.sessions.Load()), Messages: int(db.messages.Load())}, nil
}

// view runs fn in a bbolt read transaction after checking ctx and waiting until the
// file holds every write acknowledged so far (settle).
func (db *DB) view(ctx context.Context, fn func(btx *bolt.Tx) error) error {
	if err := db.settle(ctx); err != nil {
		return err
	}
	return db.bolt.View(fn)
}

// settle waits until the file holds every batch acknowledged before the call: the
// committer flushes its open transaction once it sees a reader waiting (commit.go). It
// returns ctx's error if ctx ends first, and the failure that stopped the DB if a flush
// failed. Every read of the file outside the committer goes through it.
func (db *DB) settle(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return db.lag.wait(ctx)
}

// lag counts the batches the committer acknowledged and those it flushed to the file.
type lag struct {
	acked, flushed atomic.Uint64
	waiters        atomic.Int32 // readers in wait
	failed         atomic.Bool  // err is set

	mu   sync.Mutex
	note chan struct{} // closed and replaced when flushed rises or err is set
	err  error
}

// wait returns once flushed reaches acked as read on entry, or err is set.
func (l *lag) wait(ctx context.Context) error {
	target := l.acked.Load()
	if l.flushed.Load() >= target && !l.failed.Load() {
		return nil
	}
	l.waiters.Add(1)
	defer l.waiters.Add(-1)
	for {
		l.mu.Lock()
		if l.err != nil {
			err := l.err
			l.mu.Unlock()
			return err
		}
		if l.flushed.Load() >= target {
			l.mu.Unlock()
			return nil
		}
		if l.note == nil {
			l.note = make(chan struct{})
		}
		note := l.note
		l.mu.Unlock()
		select {
		case <-note:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// flushedTo records that the file holds the first n batches acknowledged.
func (l *lag) flushedTo(n uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushed.Store(n)
	l.wakeLocked()
}

// fail makes every wait, current and later, return err.
func (l *lag) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
		l.failed.Store(true)
	}
	l.wakeLocked()
}

func (l *lag) wakeLocked() {
	if l.note != nil {
		close(l.note)
		l.note = nil
	}
}

func putUint(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getUint(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
