package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// testClock is a settable physical clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testLogger sends the package's logs to t.Log.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// MustOpenDB opens a DB in a fresh temporary directory with opts (Now defaults to a
// fixed test clock's, Logger to t.Log). Cleanup checks the file's invariants and closes
// it.
func MustOpenDB(tb testing.TB, opts ...Options) *DB {
	tb.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Now == nil {
		o.Now = newTestClock().Now
	}
	if o.Logger == nil {
		o.Logger = testLogger(tb)
	}
	db, err := Open(filepath.Join(tb.TempDir(), "data.db"), o)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		db.mu.RLock()
		closed := db.closed
		db.mu.RUnlock()
		if !tb.Failed() && !closed {
			checkInvariants(tb, db)
			checkReplay(tb, db)
		}
		if err := db.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return db
}

// mustReopen closes db and opens its file again with opts.
func mustReopen(tb testing.TB, db *DB, opts Options) *DB {
	tb.Helper()
	if err := db.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(tb)
	}
	db2, err := Open(db.Path(), opts)
	if err != nil {
		tb.Fatalf("reopen: %v", err)
	}
	tb.Cleanup(func() { _ = db2.Close() })
	return db2
}

// checkInvariants verifies that everything derived agrees with the replicated state:
// bbolt's consistency check, the digest against a rebuild, the leaf index, counters,
// feed positions, session indexes, conversation summaries and indexes, and the erasure
// rules: a conversation that holds an erasure marker holds nothing else, is listed for
// neither participant and its markers' From is erased here; a user whose record's
// erasure was applied here has no messages stored.
func checkInvariants(tb testing.TB, db *DB) {
	tb.Helper()
	settled(tb, db)
	err := db.bolt.View(func(btx *bolt.Tx) error {
		for err := range btx.Check() {
			tb.Errorf("bbolt check: %v", err)
		}
		var d crdt.Digest
		var apps map[string]AppUsage
		if err := rebuildDigest(btx, &d, &apps); err != nil {
			tb.Fatalf("rebuild digest: %v", err)
		}
		if got := db.Digest(); got != d {
			tb.Errorf("digest root %x, rebuilt %x", got.Root(), d.Root())
		}
		db.usage.mu.RLock()
		if !maps.Equal(db.usage.apps, apps) && len(db.usage.apps)+len(apps) > 0 {
			tb.Errorf("apps' usage %v, counted from the file %v", db.usage.apps, apps)
		}
		db.usage.mu.RUnlock()
		records, log, feed := btx.Bucket(bucketRecords), btx.Bucket(bucketLog), btx.Bucket(bucketFeed)
		keys := map[string]bool{}
		var users, sessions, messages, kept int
		_ = records.ForEach(func(k, v []byte) error {
			key := string(k)
			keys[key] = true
			m, _, err := decodeRecord(key, v)
			if err != nil {
				tb.Errorf("record %q: %v", key, err)
				return nil
			}
			if fk := feed.Get(v[:seqLen]); string(fk) != key {
				tb.Errorf("record %q: feed position %d holds %q", key, getUint(v[:seqLen]), fk)
			}
			switch {
			case strings.HasPrefix(key, crdt.UserPrefix):
				if _, del := m.Flag(crdt.FieldDeleted); !del {
					users++
				}
				if keep := crdt.SubjectKeepNanos(&m); keep > 0 {
					kept++
					if btx.Bucket(bucketExpiry).Get(keepIndexKey(key, keep)) == nil {
						tb.Errorf("subject record %q not indexed under its keep time", key)
					}
				}
			case strings.HasPrefix(key, crdt.SessionPrefix):
				sessions++
				ix := indexFields(key, &m)
				byUser, byExp := ix.byUser(), ix.byExpiry()
				if btx.Bucket(bucketUserSessions).Get(byUser) == nil || btx.Bucket(bucketExpiry).Get(byExp) == nil {
					tb.Errorf("session %q not indexed", key)
				} else if got, want := btx.Bucket(bucketUserSessions).Get(byUser), ix.byUserValue(); !bytes.Equal(got, want) {
					tb.Errorf("session %q (revoked %v): owner index value %v, want %v", key, ix.revoked, got, want)
				}
				if user, ok := sessionOwner(&m); !ok || btx.Bucket(bucketErased).Get([]byte(user)) != nil {
					tb.Errorf("session %q of %q stored though its owner is invalid or erased", key, user)
				}
			case strings.HasPrefix(key, crdt.KVPrefix):
				if keep := crdt.KVKeepNanos(&m); keep > 0 {
					kept++
					if btx.Bucket(bucketExpiry).Get(keepIndexKey(key, keep)) == nil {
						tb.Errorf("key-value record %q not indexed under its keep time", key)
					}
				}
				compacted := m.Clone()
				if crdt.CompactKV(&compacted, 0); !compacted.Equal(m) {
					tb.Errorf("key-value record %q stored uncompacted", key)
				}
			}
			return nil
		})
		if n := btx.Bucket(bucketUserSessions).Stats().KeyN; n != sessions {
			tb.Errorf("%s index holds %d keys, want %d", bucketUserSessions, n, sessions)
		}
		if n := btx.Bucket(bucketExpiry).Stats().KeyN; n != sessions+kept {
			tb.Errorf("%s index holds %d keys, want %d sessions and %d key-value and subject records", bucketExpiry, n, sessions, kept)
		}
		convCount, convMarkers := map[string]uint64{}, map[string]uint64{}
		erased, userConvs := btx.Bucket(bucketErased), btx.Bucket(bucketUserConvs)
		_ = log.ForEach(func(k, v []byte) error {
			i := bytes.IndexByte(k, 0)
			conv := string(k[:i])
			e, err := decodeStoredEntry(k[:i+1], k, v)
			if err != nil {
				tb.Errorf("log: %v", err)
				return nil
			}
			key := LogKey(conv, e.ID)
			keys[key] = true
			convCount[conv]++
			if fk := feed.Get(v[:seqLen]); string(fk) != key {
				tb.Errorf("entry %q: feed position holds %q", key, fk)
			}
			if c := (Change{Key: key, Conv: conv, Entry: e}); c.check() != nil {
				tb.Errorf("entry %q stored though malformed: %v", key, c.check())
			}
			if !crdt.IsErasureMarker(e.Data) {
				messages++
				x, y, _ := crdt.Participants(conv)
				for _, u := range []string{x, y} {
					if bytes.Equal(erased.Get([]byte(u)), erasedCascade) {
						tb.Errorf("entry %q stored though %q's erasure was applied here", key, u)
					}
				}
				return nil
			}
			convMarkers[conv]++
			if m, _ := crdt.DecodeMessage(e.Data); erased.Get([]byte(m.From)) == nil {
				tb.Errorf("erasure marker %q stored but %q not marked erased", key, m.From)
			}
			return nil
		})
		_ = btx.Bucket(bucketConvs).ForEach(func(k, v []byte) error {
			conv := string(k)
			st, err := decodeConvState(v)
			if err != nil || st.count != convCount[conv] {
				tb.Errorf("conversation %q: state %+v (%v), %d entries", k, st, err, convCount[conv])
			}
			if n := convMarkers[conv]; n > 0 && n != convCount[conv] {
				tb.Errorf("conversation %q holds %d erasure markers and %d other entries", k, n, convCount[conv]-n)
			}
			x, y, _ := crdt.Participants(conv)
			for _, u := range []string{x, y} {
				if listed := userConvs.Get(append(append([]byte(u), 0), conv...)) != nil; listed != (convMarkers[conv] == 0) {
					tb.Errorf("conversation %q listed for %q: %v, with %d erasure markers", k, u, listed, convMarkers[conv])
				}
			}
			delete(convCount, conv)
			return nil
		})
		for conv := range convCount {
			tb.Errorf("conversation %q has entries but no state", conv)
		}
		_ = userConvs.ForEach(func(k, _ []byte) error {
			i := bytes.IndexByte(k, 0)
			if i < 0 || btx.Bucket(bucketConvs).Get(k[i+1:]) == nil {
				tb.Errorf("user_convs lists %q, which has no state", k)
			}
			return nil
		})
		leaves, want := 0, 0
		for key := range keys {
			want += len(crdt.KeyHomes(key).Append(nil))
		}
		_ = btx.Bucket(bucketLeaves).ForEach(func(k, _ []byte) error {
			leaves++
			if key := string(k[2:]); !keys[key] || !crdt.KeyHomes(key).Contains(int(binary.BigEndian.Uint16(k))) {
				tb.Errorf("leaf index holds %q under leaf %x, not stored there", key, k[:2])
			}
			return nil
		})
		if leaves != want {
			tb.Errorf("leaf index holds %d entries, want %d (one per home of each key)", leaves, want)
		}
		st, _ := db.Stats(context.Background())
		if st != (Stats{Users: users, Sessions: sessions, Messages: messages}) {
			tb.Errorf("Stats = %+v, counted %d users, %d sessions, %d messages", st, users, sessions, messages)
		}
		return nil
	})
	if err != nil {
		tb.Errorf("check invariants: %v", err)
	}
}

// update runs fn with Update and fails the test on error.
func update(tb testing.TB, db *DB, fn func(tx *Tx) error) {
	tb.Helper()
	if err := db.Update(context.Background(), fn); err != nil {
		tb.Fatalf("Update: %v", err)
	}
}

// settled waits until the committer flushed what was acknowledged (and checkpointed, if
// that was due), so that the test may look at the committer's state: the log, the epoch.
func settled(tb testing.TB, db *DB) {
	tb.Helper()
	if err := db.settle(context.Background()); err != nil {
		tb.Fatalf("settle: %v", err)
	}
}

// merge merges one update into key and fails the test on error.
func merge(tb testing.TB, db *DB, key string, m crdt.Map) crdt.Map {
	tb.Helper()
	var out crdt.Map
	update(tb, db, func(tx *Tx) error {
		var err error
		out, err = tx.Merge(key, m)
		return err
	})
	return out
}

func mustRecord(tb testing.TB, db *DB, key string) (crdt.Map, bool) {
	tb.Helper()
	m, ok, err := db.Record(context.Background(), key)
	if err != nil {
		tb.Fatalf("Record(%q): %v", key, err)
	}
	return m, ok
}

// ts returns a timestamp of node at wall nanoseconds w.
const hour = time.Hour

func ts(node crdt.NodeID, w int64) crdt.Timestamp { return crdt.Timestamp{Wall: w, Node: node} }

// newSession returns a session record of user created at now, expiring in ttl.
func newSession(db *DB, user string, ttl time.Duration) crdt.Map {
	now := db.opts.Now()
	return crdt.NewSession(user, now.Add(ttl), time.Hour, db.Clock().Next())
}

func newUser(db *DB, name string) crdt.Map {
	return crdt.NewUser(name, "hash", map[string]string{crdt.FieldEmail: name + "@example.com"}, db.Clock().Next())
}

func allChanges(tb testing.TB, db *DB) []Change {
	tb.Helper()
	cs, _, err := db.ChangesSince(context.Background(), 0, 0)
	if err != nil {
		tb.Fatalf("ChangesSince: %v", err)
	}
	return cs
}

// testSeed returns the seed of a randomised test: $STORAGE_SEED if set, else the time.
// It logs it so that a failure can be replayed.
func testSeed(tb testing.TB) int64 {
	seed := time.Now().UnixNano()
	if s := os.Getenv("STORAGE_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	tb.Logf("seed %d (replay with STORAGE_SEED=%d)", seed, seed)
	return seed
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
