package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// The write benchmarks measure durable single-field writes: each merges one field into
// one of benchRecords existing user records, picked at random, and returns once it is on
// disk. They report writes/s. Compare, in one run:
//
//	go test -run '^$' -bench 'Write' -benchtime 3s ./storage/
//
// WriteUpdate* is this package's group commit; WriteBoltUpdate is the naive baseline of
// one bbolt Update (one commit, one fsync) per write; WriteBoltBatch is bbolt's own
// DB.Batch with its default settings. The bbolt variants do the same read, merge and
// encode per write but keep no indexes, feed or digest.

const benchRecords = 10000

func benchKey(i int) string { return crdt.UserKey(fmt.Sprintf("user-%05d", i)) }

// benchUpdate returns a write of one field at at, which is newer than every earlier one,
// so that every write changes its record.
func benchUpdate(at crdt.Timestamp) crdt.Map {
	var m crdt.Map
	m.Set(crdt.FieldFirstName, fmt.Appendf(nil, "name-%d.%d", at.Wall, at.Logical), at)
	return m
}

// seedRecords stores benchRecords user records, calling put for each inside tx, 100 per
// transaction in random key order: the way a node accumulates records with random IDs,
// so the B+tree has the shape of one grown by random inserts (pages about 70% full),
// not that of a sorted bulk load.
func seedRecords(tb testing.TB, tx func(fn func(put func(key string, m crdt.Map) error) error) error) {
	tb.Helper()
	order := rand.New(rand.NewPCG(3, 4)).Perm(benchRecords)
	for len(order) > 0 {
		n := min(len(order), 100)
		chunk := order[:n]
		order = order[n:]
		err := tx(func(put func(key string, m crdt.Map) error) error {
			for _, i := range chunk {
				m := crdt.NewUser(fmt.Sprintf("user-%05d", i), "$argon2id$v=19$m=65536,t=1,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
					map[string]string{crdt.FieldEmail: fmt.Sprintf("user-%05d@example.com", i)}, ts(1, int64(i+1)))
				if err := put(benchKey(i), m); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

func mustSeedDB(b *testing.B) *DB {
	db := MustOpenDB(b, Options{Now: time.Now, Logger: discardLogger()})
	db.opts.OnCommit = func([]Change) { commits.Add(1) }
	seedRecords(b, func(fn func(put func(string, crdt.Map) error) error) error {
		return db.Update(context.Background(), func(tx *Tx) error {
			return fn(func(key string, m crdt.Map) error {
				_, err := tx.Merge(key, m)
				return err
			})
		})
	})
	return db
}

// runWriters runs write from n goroutines until b.N writes are done and reports writes/s.
func runWriters(b *testing.B, n int, write func(rng *rand.Rand, i int64) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for g := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := write(rng, i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// commits counts the commits of mustSeedDB's DBs.
var commits atomic.Int64

func benchmarkWriteUpdate(b *testing.B, writers int) {
	db := mustSeedDB(b)
	ctx := context.Background()
	commits.Store(0)
	pages := writtenPages(db)
	defer func() {
		n := float64(commits.Load())
		b.ReportMetric(float64(b.N)/n, "writes/commit")
		b.ReportMetric(float64(writtenPages(db)-pages)/n, "pages/commit")
		if st, err := os.Stat(db.Path()); err == nil {
			b.ReportMetric(float64(st.Size())/(1<<20), "file-MiB")
		}
	}()
	runWriters(b, writers, func(rng *rand.Rand, i int64) error {
		key := benchKey(rng.IntN(benchRecords))
		upd := benchUpdate(db.Clock().Next())
		return db.Update(ctx, func(tx *Tx) error {
			_, err := tx.Merge(key, upd)
			return err
		})
	})
}

func BenchmarkWriteUpdateSerial(b *testing.B) { benchmarkWriteUpdate(b, 1) }
func BenchmarkWriteUpdate8(b *testing.B)      { benchmarkWriteUpdate(b, 8) }
func BenchmarkWriteUpdate64(b *testing.B)     { benchmarkWriteUpdate(b, 64) }

// openBolt opens a bare bbolt file with the options Open uses, seeded like mustSeedDB.
func openBolt(b *testing.B) *bolt.DB {
	bdb, err := bolt.Open(filepath.Join(b.TempDir(), "bolt.db"), 0o600, &bolt.Options{
		FreelistType: bolt.FreelistMapType, NoFreelistSync: true, InitialMmapSize: 1 << 30,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bdb.Close() })
	err = bdb.Update(func(btx *bolt.Tx) error {
		_, err := btx.CreateBucket(bucketRecords)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	seedRecords(b, func(fn func(put func(string, crdt.Map) error) error) error {
		return bdb.Update(func(btx *bolt.Tx) error {
			bk := btx.Bucket(bucketRecords)
			return fn(func(key string, m crdt.Map) error { return bk.Put([]byte(key), m.AppendBinary(nil)) })
		})
	})
	return bdb
}

// boltMerge reads, merges and writes one record in a bare bbolt transaction.
func boltMerge(btx *bolt.Tx, key string, upd crdt.Map) error {
	bk := btx.Bucket(bucketRecords)
	m, err := crdt.DecodeMap(bk.Get([]byte(key)))
	if err != nil {
		return err
	}
	m.Merge(upd)
	return bk.Put([]byte(key), m.AppendBinary(nil))
}

func BenchmarkWriteBoltUpdate64(b *testing.B) {
	bdb := openBolt(b)
	runWriters(b, 64, func(rng *rand.Rand, i int64) error {
		key, upd := benchKey(rng.IntN(benchRecords)), benchUpdate(ts(1, benchRecords+i))
		return bdb.Update(func(btx *bolt.Tx) error { return boltMerge(btx, key, upd) })
	})
}

func BenchmarkWriteBoltBatch64(b *testing.B) {
	bdb := openBolt(b)
	runWriters(b, 64, func(rng *rand.Rand, i int64) error {
		key, upd := benchKey(rng.IntN(benchRecords)), benchUpdate(ts(1, benchRecords+i))
		return bdb.Batch(func(btx *bolt.Tx) error { return boltMerge(btx, key, upd) })
	})
}

// BenchmarkApplyRemote applies batches of 100 remote record changes (new versions of
// existing records) and reports changes/s.
func BenchmarkApplyRemote(b *testing.B) {
	db := mustSeedDB(b)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const per = 100
	wall := db.Clock().Next().Wall
	b.ResetTimer()
	for b.Loop() {
		cs := make([]Change, per)
		for i := range cs {
			wall++
			var m crdt.Map
			m.Set(crdt.FieldLastName, fmt.Appendf(nil, "n%d", wall), ts(42, wall))
			cs[i] = Change{Key: benchKey(rng.IntN(benchRecords)), Map: m}
		}
		if _, err := db.ApplyRemote(ctx, cs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkReadLog reads the latest page of a 30,000-entry conversation written by three
// origins, with a cursor that has seen everything before it: the cost must not depend
// on the conversation's length.
func BenchmarkReadLog(b *testing.B) {
	db := MustOpenDB(b, Options{Logger: discardLogger()})
	ctx := context.Background()
	const conv, perOrigin, page = "u1:u2", 10000, 20
	var cs []Change
	for seq := uint64(1); seq <= perOrigin; seq++ {
		for o := crdt.NodeID(1); o <= 3; o++ {
			e := crdt.Entry{ID: crdt.EntryID{TS: ts(o, int64(seq)*10+int64(o)), Seq: seq}, Data: []byte("a message body of some length")}
			cs = append(cs, Change{Key: LogKey(conv, e.ID), Conv: conv, Entry: e})
		}
	}
	if _, err := db.ApplyRemote(ctx, cs); err != nil {
		b.Fatal(err)
	}
	recent := crdt.Cursor{1: perOrigin - page/3, 2: perOrigin - page/3, 3: perOrigin - page/3}
	b.Run("Recent", func(b *testing.B) {
		for b.Loop() {
			es, _, err := db.ReadLog(ctx, conv, recent, page)
			if err != nil || len(es) != page-2 {
				b.Fatalf("ReadLog = %d entries, %v", len(es), err)
			}
		}
	})
	b.Run("Start", func(b *testing.B) {
		for b.Loop() {
			es, _, err := db.ReadLog(ctx, conv, nil, page)
			if err != nil || len(es) != page {
				b.Fatalf("ReadLog = %d entries, %v", len(es), err)
			}
		}
	})
}

// writtenPages returns how many pages db's commits have written.
func writtenPages(db *DB) int64 {
	st := db.bolt.Stats()
	return st.TxStats.GetWrite()
}

// BenchmarkUserSessionsRevoked reads the sessions of an account that holds 5,000 revoked
// sessions and ten live ones (signed in and out in a loop: revoked sessions stay stored
// until they expire). Every sign-in and session list of the account reads them.
func BenchmarkUserSessionsRevoked(b *testing.B) {
	db := MustOpenDB(b, Options{})
	ctx := context.Background()
	const revoked, live = 5000, 10
	for i := range revoked + live {
		key := crdt.SessionKey(fmt.Sprintf("s%05d", i))
		err := db.Update(ctx, func(tx *Tx) error {
			m := newSession(db, "u1", 24*time.Hour)
			if i < revoked {
				m.Merge(crdt.RevokeSession(db.Clock().Next()))
			}
			_, err := tx.Merge(key, m)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		ss, err := db.UserSessions(ctx, "u1")
		if err != nil || len(ss) != live {
			b.Fatalf("UserSessions = %d sessions, %v; want %d", len(ss), err, live)
		}
	}
}
