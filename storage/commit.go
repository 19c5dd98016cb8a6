package storage

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// maxBatch caps the requests committed together; it is also the queue's capacity.
const maxBatch = 1024

// request is one caller's work, queued for the committer.
type request struct {
	ctx  context.Context
	fn   func(*Tx) error
	err  error      // fn's error, or the batch's
	done chan error // buffered; receives err once the batch is durable or abandoned
}

// Update runs fn in a read-write transaction and returns once its writes are durable.
//
// fn runs on the committer goroutine inside one bbolt transaction shared with other
// callers' functions, which commit together: one write-ahead log record and its one
// fsync (see the package documentation). It must be quick, do no I/O and not call the
// DB. Its writes are buffered in tx and applied only if it returns nil; an error discards
// them and leaves the other callers' work alone. fn may run more than once, in a new
// batch each time (when another caller's writes in its batch could not be applied): only
// its last run's writes count, and what it does outside tx must be safe to repeat.
// Update returns fn's error, or the commit's error if the batch could not be committed
// (then nothing of it is stored). If ctx is done before fn runs, fn is not run and Update
// returns ctx.Err(); once fn has run, Update waits for the commit whatever ctx says, so a
// nil return always means durable, and every read that begins after it sees the write.
// After a failure of the log or the file (a failed write or sync of the log, commit or
// checkpoint), every later Update fails with that error, wrapping ErrFailed, until the DB
// is opened again, which recovers from the log; reads of the file fail with it too.
func (db *DB) Update(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &request{ctx: ctx, fn: fn, done: make(chan error, 1)}
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return ErrClosed
	}
	select {
	case db.reqs <- r:
	case <-ctx.Done():
		db.mu.RUnlock()
		return ctx.Err()
	}
	db.mu.RUnlock()
	return <-r.done
}

// commitLoop is the committer goroutine: it takes every queued request (up to maxBatch)
// into one batch, makes the batch durable and answers its writers, and then decides
// whether to commit the open bbolt transaction to the file now (flush) or to let the next
// batch join it.
func (db *DB) commitLoop() {
	defer close(db.stopped)
	batch := make([]*request, 0, maxBatch)
	var g gatherer
	for r := range db.reqs {
		batch = append(batch[:0], r)
		batch = g.gather(db.reqs, batch)
		start := time.Now()
		stats, ok := db.runBatch(batch)
		g.done(len(batch), time.Since(start))
		clear(batch)
		if db.flushDue() {
			stats.Flush, stats.Checkpoint = db.flush()
		}
		if ok && db.opts.OnBatch != nil {
			db.opts.OnBatch(stats)
		}
	}
	db.flush()
}

// gatherer decides how long the committer collects requests before it commits.
//
// It first yields a few times so that writers woken by the previous batch's answers, and
// already runnable, can submit. If the batch is then smaller than the previous one, it
// waits for the missing writers a little: at most a quarter of the previous commit's
// duration and maxGatherWait. On a loaded machine some writers sit on a descheduled thread
// for a moment; without the wait they would miss the batch and cost a commit of their
// own. A commit takes milliseconds, so a short wait for writers that are likely coming
// pays for itself, and one that does not come only lowers the expectation for next time.
// A lone writer never waits.
type gatherer struct {
	expect int           // the previous batch's size
	commit time.Duration // the previous commit's duration
	timer  *time.Timer
}

// gatherRounds is how many times in a row the committer yields without finding a new
// request before it stops yielding.
const gatherRounds = 3

// maxGatherWait bounds the wait for writers expected from the previous batch.
const maxGatherWait = 2 * time.Millisecond

func (g *gatherer) gather(reqs chan *request, batch []*request) []*request {
	for rounds := 0; len(batch) < maxBatch && rounds < gatherRounds; {
		select {
		case r, ok := <-reqs:
			if !ok {
				return batch
			}
			batch = append(batch, r)
			rounds = 0
			continue
		default:
		}
		rounds++
		runtime.Gosched()
	}
	wait := min(g.commit/4, maxGatherWait)
	if len(batch) >= g.expect || wait <= 0 {
		return batch
	}
	if g.timer == nil {
		g.timer = time.NewTimer(wait)
	} else {
		g.timer.Reset(wait)
	}
	defer g.timer.Stop()
	for len(batch) < g.expect && len(batch) < maxBatch {
		select {
		case r, ok := <-reqs:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		case <-g.timer.C:
			return batch
		}
	}
	return batch
}

// done records a committed batch's size and duration.
func (g *gatherer) done(n int, d time.Duration) { g.expect, g.commit = n, d }

// Batches acknowledged and not yet in the file.
//
// A batch is durable, and its writers answered, once its log record is synced; its writes
// then wait in the committer's open bbolt transaction, which later batches join, until
// the committer commits it to the file (flush, without a sync, as before). One bbolt
// commit thus carries several group commits when writers keep the committer busy, and a
// lone writer's commit follows its answer instead of preceding it. Readers of the file
// wait for that commit (settle): a read waits until the file holds every batch
// acknowledged when the read began, and the committer flushes as soon as it sees a reader
// waiting, at the latest when the batch it is running ends. The record cache, the digest
// and the counters are published when a batch is acknowledged, so that reads served from
// them (most of a request's) wait for nothing. Publication comes before the flush, so a
// read of the file never sees a batch that is not published yet: what the change feed or
// a digest leaf shows is already in the cache, the digest, Committed and Overtaken
// (replication relies on it).
const (
	// maxUnflushed bounds the batches the open transaction carries.
	maxUnflushed = 16
	// maxUnflushedBytes bounds their log records' buffers: what is kept in memory to put
	// them back after a rollback, and about what one flush writes.
	maxUnflushedBytes = 1 << 20
)

// flushDue reports whether the committer should commit its open transaction now: no
// request is waiting (the committer would otherwise sit on it), a reader waits for it,
// it carries enough, or a checkpoint is due (it needs the file committed).
func (db *DB) flushDue() bool {
	if db.wtx == nil {
		return db.failed == nil && db.checkpointDue()
	}
	return len(db.reqs) == 0 || db.lag.waiters.Load() > 0 || len(db.unflushed) >= maxUnflushed ||
		db.unflushedBytes >= maxUnflushedBytes || db.checkpointDue()
}

// checkpointDue reports whether a checkpoint must come before the next transaction: the
// anchor was released, the log reached its limit, or the file grew (see grown; as of the
// last flush).
func (db *DB) checkpointDue() bool {
	return db.anchor.isLost() || db.wal.size >= db.opts.WALLimit || db.grown()
}

// flush commits the open transaction, if any, to the file, checkpoints if one is due,
// and wakes the readers waiting for the file. It returns how long the commit took and whether
// a checkpoint followed. A failed commit or checkpoint stops writes until the DB is
// opened again (the log holds what the file lacks), and reads of the file fail with it.
func (db *DB) flush() (took time.Duration, checkpointed bool) {
	if db.wtx != nil {
		start := time.Now()
		db.hwm = db.wtx.Size()
		if db.nearMapEnd(db.wtx, db.unflushedBytes) {
			db.anchor.release() // the commit may remap: see checkpoint.go
		}
		wd := db.anchor.watch(db.opts.watchdog)
		err := db.wtx.Commit()
		wd.stop()
		db.wtx = nil
		db.forgetRecords()
		if err != nil {
			db.fail(fmt.Errorf("commit: %w", err))
			return time.Since(start), false
		}
		took = time.Since(start)
	}
	if db.failed == nil && db.checkpointDue() {
		checkpointed = true
		if err := db.checkpoint(); err != nil {
			db.fail(fmt.Errorf("checkpoint: %w", err))
		}
	}
	// After the checkpoint, so that a reader that waited finds the committer idle. Not
	// after a failure: the file may lack acknowledged writes, and reads fail (lag.fail).
	if db.failed == nil {
		db.lag.flushedTo(db.lag.acked.Load())
	}
	return took, checkpointed
}

// fail stops writes, and reads of the file, with err (wrapped in ErrFailed) and closes
// Failed: the log takes no more, or the file's state is unknown or lacks acknowledged
// writes, which the next Open recovers from the log. It runs on the committer only; a
// second failure is logged and changes nothing.
func (db *DB) fail(err error) {
	if db.failed != nil {
		db.log.Error("storage failed again", attrErr, err)
		return
	}
	err = fmt.Errorf("%w: %w", ErrFailed, err)
	db.failed = err
	db.lag.fail(err)
	close(db.stop)
	db.log.Error("storage failed; writes refused until reopened", attrErr, err)
}

// forgetRecords drops the flushed batches' log records. Their buffers are not reused:
// bbolt held slices of them until the commit (walOps.put), and nothing must alias them.
func (db *DB) forgetRecords() {
	clear(db.unflushed)
	db.unflushed, db.unflushedBytes = db.unflushed[:0], 0
}

// rewind rolls back the open transaction, which holds a batch that must not commit, and
// puts the acknowledged batches it also held back into a new one from their log records.
func (db *DB) rewind() error {
	if db.wtx != nil {
		_ = db.wtx.Rollback()
		db.wtx = nil
	}
	if len(db.unflushed) == 0 {
		return nil
	}
	btx, err := db.bolt.Begin(true)
	if err != nil {
		return err
	}
	for i, rec := range db.unflushed {
		if err := replayRecord(btx, rec); err != nil {
			_ = btx.Rollback()
			return fmt.Errorf("record %d of the open transaction: %w", i+1, err)
		}
	}
	db.wtx = btx
	return nil
}

// errRetry aborts a batch that must be run again without the request that broke it.
var errRetry = errors.New("retry batch")

// runBatch makes the requests' functions durable as one group commit and answers them.
// A function's own error is its own; an error applying its writes (which bbolt would only
// raise on a broken invariant or a full disk) fails that request alone and the batch runs
// again without it. Any other error fails the whole batch. It returns the batch's stats
// and whether it committed.
//
// The batch runs in the committer's open bbolt transaction (begun if need be), after the
// batches acknowledged before it and not yet flushed. It is durable once its log record
// is synced; it is then published (record cache, digest, counters) and its writers are
// answered. Readers of the file wait until it is flushed (see settle), so a writer and
// every reader after it see its writes. A batch that fails is rolled back with the
// transaction, and the earlier batches are put back from their records (rewind).
func (db *DB) runBatch(reqs []*request) (BatchStats, bool) {
	live := reqs[:0:0]
	for _, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		if db.failed != nil {
			r.done <- db.failed
			continue
		}
		live = append(live, r)
	}
	start := time.Now()
	for len(live) > 0 {
		if db.wtx == nil {
			btx, err := db.bolt.Begin(true)
			if err != nil {
				err = fmt.Errorf("commit: begin: %w", err)
				db.log.Error("commit failed", attrErr, err)
				for _, r := range live {
					r.done <- err
				}
				return BatchStats{}, false
			}
			db.wtx = btx
		}
		b := db.newBatch(db.wtx)
		failed := -1
		var synced time.Duration
		err := func() error {
			for i, r := range live {
				tx := &Tx{b: b}
				r.err = r.fn(tx)
				tx.closed = true
				if r.err != nil {
					continue
				}
				if err := tx.apply(); err != nil {
					r.err = fmt.Errorf("apply: %w", err)
					failed = i
					return errRetry
				}
			}
			if err := b.finish(); err != nil {
				return err
			}
			t := time.Now()
			if err := db.wal.append(b.ops.buf); err != nil {
				if errors.Is(err, errRecordTooBig) { // nothing written: this batch alone fails
					return fmt.Errorf("write-ahead log: %w", err)
				}
				// The record is cut off (unless the log's end is unknown: errWALBroken),
				// so nothing of the batch is stored. Whatever the cause (a full disk, a
				// quota, an I/O error), the log takes no more: the DB fails, and its
				// process stops, rather than refuse every write while it looks healthy.
				db.fail(fmt.Errorf("write-ahead log: %w", err))
				return db.failed
			}
			synced = time.Since(t)
			return nil
		}()
		if err != nil {
			if rerr := db.rewind(); rerr != nil && db.failed == nil {
				db.fail(fmt.Errorf("rewind: %w", rerr))
			}
			if errors.Is(err, errRetry) && db.failed == nil {
				db.log.Error("batch retried without a failing request", attrErr, live[failed].err)
				live[failed].done <- live[failed].err
				live = append(live[:failed:failed], live[failed+1:]...)
				continue
			}
			if errors.Is(err, errRetry) {
				err = db.failed
			}
			err = fmt.Errorf("commit: %w", err)
			db.log.Error("commit failed", attrErr, err)
			for _, r := range live {
				r.done <- err
			}
			return BatchStats{}, false
		}
		rec := b.ops.buf
		db.unflushed = append(db.unflushed, rec)
		db.unflushedBytes += cap(rec)
		db.opsCap = min(len(rec)+len(rec)/4, 64<<10) // the next record's likely size, not one big batch's
		db.lag.acked.Add(1)
		db.committed(b)
		writes := 0
		for _, r := range live {
			if r.err == nil {
				writes++
			}
			r.done <- r.err
		}
		return BatchStats{Writes: writes, LogBytes: len(b.ops.buf), Sync: synced, Duration: time.Since(start)}, true
	}
	return BatchStats{}, false
}

// BatchStats describe one durable group commit (Options.OnBatch).
type BatchStats struct {
	Writes   int           // Update calls it committed
	LogBytes int           // the size of its write-ahead log record
	Sync     time.Duration // writing and syncing the record (one fdatasync)
	Duration time.Duration // from the start of the batch to its writers' answers
	// Flush is how long the commit of the bbolt transaction that followed the answers
	// took (no sync: page writes), if one did; it carried this batch and the unflushed
	// ones before it. Zero when the next batch joins the transaction instead.
	Flush      time.Duration
	Checkpoint bool // a checkpoint followed it (a sync of the data file and a new log)
}

// batch is the state of one group commit: the bbolt transaction and what the commit will
// change in memory once it is durable.
type batch struct {
	db  *DB
	btx *bolt.Tx
	now time.Time // physical time for every expiry decision in the batch

	meta, records, log, logSeq, convs, userConvs, userSessions, expiry, erased, feed, leaves, seqFloor, replaced bucket
	ops                                                                                                          walOps // the batch's writes, for the write-ahead log

	head      uint64 // feed head
	writes    int    // feed positions taken, the budget of the feed's garbage collection
	users     int64  // counters, as of this batch
	sessions  int64
	messages  int64
	toggles   map[string]uint64    // replication key → XOR to toggle into the digest
	usage     map[string]AppUsage  // app → what the batch added to its usage (usage.go)
	written   map[string]*crdt.Map // record key → state after the batch, nil once deleted
	erasing   bool                 // an erasure cascade ran in the batch
	changes   []Change
	changeAt  map[string]int // replication key → index in changes, -1 once deleted
	mark      crdt.Timestamp // the clock's high-water mark when the batch finished
	overtaken []Overtaken    // this node's writes replaced by remote ones in the batch
}

func (db *DB) newBatch(btx *bolt.Tx) *batch {
	b := &batch{
		db: db, btx: btx, now: db.opts.Now(),
		head: db.head.Load(), users: db.users.Load(), sessions: db.sessions.Load(), messages: db.messages.Load(),
	}
	b.ops.buf = make([]byte, 0, db.opsCap)
	open := func(name []byte, fill float64) bucket {
		return bucket{btx: btx, name: name, id: bucketID(name), fill: fill, ops: &b.ops}
	}
	b.meta, b.records, b.convs = open(bucketMeta, 0), open(bucketRecords, 0), open(bucketConvs, 0)
	b.userConvs, b.userSessions = open(bucketUserConvs, 0), open(bucketUserSessions, 0)
	b.expiry, b.erased, b.leaves = open(bucketExpiry, 0), open(bucketErased, 0), open(bucketLeaves, 0)
	b.seqFloor, b.replaced = open(bucketSeqFloor, 0), open(bucketReplaced, 0)
	// These grow at their end (feed positions, a conversation's entries in time order):
	// pages split there can be left nearly full.
	b.feed, b.log, b.logSeq = open(bucketFeed, appendFill), open(bucketLog, appendFill), open(bucketLogSeq, appendFill)
	return b
}

// bucket is one of a batch's buckets, opened on first use: most batches touch a few of
// them, and opening one costs the committer a B+tree search and allocations.
type bucket struct {
	btx  *bolt.Tx
	name []byte
	id   byte    // index in allBuckets, the bucket's number in the write-ahead log
	fill float64 // FillPercent, if not zero
	ops  *walOps // the batch's log record
	bk   wbucket
}

func (l *bucket) get() wbucket {
	if l.bk.Bucket == nil {
		l.bk = wbucket{Bucket: l.btx.Bucket(l.name), id: l.id, ops: l.ops}
		if l.fill > 0 {
			l.bk.FillPercent = l.fill
		}
	}
	return l.bk
}

// wbucket is a bucket of the committer's transaction. Its Put and Delete also record
// the write in the batch's write-ahead log record, from which a restart replays it:
// every write of a batch must go through one (a test replays every test's log and
// compares the result with the file).
type wbucket struct {
	*bolt.Bucket
	id  byte
	ops *walOps
}

// Put writes key in the bucket and records it for the log. bbolt is given the record's
// copies of key and value (see walOps.put).
func (w wbucket) Put(key, value []byte) error {
	return w.Bucket.Put(w.ops.put(w.id, key, value))
}

// Delete deletes key from the bucket and records it for the log.
func (w wbucket) Delete(key []byte) error {
	w.ops.delete(w.id, key)
	return w.Bucket.Delete(key)
}

// appendFill is the fill factor of buckets that grow at their end.
const appendFill = 0.9

// toggle records that key's digest pair hash changes by x.
func (b *batch) toggle(key string, x uint64) {
	if b.toggles == nil {
		b.toggles = make(map[string]uint64)
	}
	b.toggles[key] ^= x
}

// wrote records that the record key now holds m (nil: deleted), for the record cache.
// m is not modified afterwards.
func (b *batch) wrote(key string, m *crdt.Map) {
	if b.written == nil {
		b.written = make(map[string]*crdt.Map)
	}
	b.written[key] = m
}

// changed records key's state after the batch, for OnCommit.
func (b *batch) changed(c Change) {
	if b.changeAt == nil {
		b.changeAt = make(map[string]int)
	}
	if i, ok := b.changeAt[c.Key]; ok && i >= 0 {
		b.changes[i] = c
		return
	}
	b.changeAt[c.Key] = len(b.changes)
	b.changes = append(b.changes, c)
}

// removed records that key was deleted in the batch.
func (b *batch) removed(key string) {
	if i, ok := b.changeAt[key]; ok && i >= 0 {
		b.changes[i] = Change{}
		b.changeAt[key] = -1
	}
}

// finish collects feed garbage and stores the counters, the feed head and the clock's
// high-water mark with the batch.
func (b *batch) finish() error {
	if b.writes > 0 {
		if err := b.collectFeed(2*b.writes + 16); err != nil {
			return err
		}
	}
	hw := b.db.clock.Last()
	b.mark = hw
	for _, kv := range []struct {
		k []byte
		v []byte
	}{
		{metaHead, putUint(b.head)},
		{metaUsers, putUint(uint64(b.users))},
		{metaSessions, putUint(uint64(b.sessions))},
		{metaMessages, putUint(uint64(b.messages))},
		{metaClock, hw.AppendBinary(nil)},
	} {
		if err := b.meta.get().Put(kv.k, kv.v); err != nil {
			return err
		}
	}
	return nil
}

// committed publishes a durable batch: record cache, digest, counters, feed head, then
// OnCommit.
func (db *DB) committed(b *batch) {
	if len(b.written) > 0 {
		db.cache.publish(b.written)
	}
	if len(b.toggles) > 0 {
		db.dmu.Lock()
		for k, x := range b.toggles {
			if x != 0 {
				db.digest.Toggle(k, x)
			}
		}
		db.dmu.Unlock()
	}
	if len(b.usage) > 0 {
		db.usage.apply(b.usage)
	}
	db.head.Store(b.head)
	if len(b.overtaken) > 0 {
		db.overtaken.note(b.overtaken, b.now)
	}
	if !b.mark.IsZero() {
		db.mark.Store(&b.mark)
	}
	db.users.Store(b.users)
	db.sessions.Store(b.sessions)
	db.messages.Store(b.messages)
	if db.opts.OnCommit == nil || len(b.changes) == 0 {
		return
	}
	out := make([]Change, 0, len(b.changes))
	for _, c := range b.changes {
		if c.Key != "" {
			out = append(out, c)
		}
	}
	if len(out) > 0 {
		db.opts.OnCommit(out)
	}
}
