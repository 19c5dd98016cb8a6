package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Session guarantees at the replication level (DESIGN.md, guarantee 6): a reader that
// awaits a client's bookmark (cluster.Replicator.Await) shows every write the bookmark covers,
// or says it is behind; what a node claims to hold (cluster.Replicator.Have) it holds.
//
// Writes here are stamped inside the store's Update, on the committer, as every write of
// the product is (storage.DB.Committed depends on it), and go through clustersim.Store, so the
// model knows them and checkConverged still applies.

// bmKeys makes the record keys of these tests unique.
var bmKeys atomic.Int64

func bmKey(prefix string) string {
	return crdt.SessionKey(fmt.Sprintf("%s-%d", prefix, bmKeys.Add(1)))
}

// write runs one write on node i: update builds the change from the timestamp the node
// stamps it with. It returns the record as merged and the stamp.
func write(c *clustersim.Cluster, i int, key string, update func(ts crdt.Timestamp) crdt.Map) (crdt.Map, crdt.Timestamp, error) {
	db := c.Nodes[i].DB()
	if db == nil {
		return crdt.Map{}, crdt.Timestamp{}, fmt.Errorf("%s is down", c.Nodes[i].Name)
	}
	ctx, cancel := clustersim.OpContext()
	defer cancel()
	var m crdt.Map
	var ts crdt.Timestamp
	err := clustersim.Store{DB: db, Model: c.Model}.Update(ctx, func(tx functions.Tx) error {
		ts = db.Clock().Next()
		var err error
		m, err = tx.Merge(key, update(ts))
		return err
	})
	return m, ts, err
}

func mustWrite(t testing.TB, c *clustersim.Cluster, i int, key string, update func(ts crdt.Timestamp) crdt.Map) (crdt.Map, crdt.Timestamp) {
	t.Helper()
	m, ts, err := write(c, i, key, update)
	if err != nil {
		t.Fatalf("write %s on %s: %v", key, c.Nodes[i].Name, err)
	}
	return m, ts
}

func newSession(user string) func(crdt.Timestamp) crdt.Map {
	return func(ts crdt.Timestamp) crdt.Map {
		return crdt.NewSession(user, ts.Time().Add(time.Hour), time.Hour, ts)
	}
}

func setData(key, value string) func(crdt.Timestamp) crdt.Map {
	return func(ts crdt.Timestamp) crdt.Map {
		var m crdt.Map
		m.Set(crdt.DataPrefix+key, fmt.Appendf(nil, "%q", value), ts)
		return m
	}
}

func deleteData(key string) func(crdt.Timestamp) crdt.Map {
	return func(ts crdt.Timestamp) crdt.Map {
		var m crdt.Map
		m.Delete(crdt.DataPrefix+key, ts)
		return m
	}
}

// states describes record key on node i as readers see it and as its file holds it
// (they differ while a commit is not yet published to readers).
func states(c *clustersim.Cluster, i int, key string) string {
	m, _, err := c.Nodes[i].DB().Record(context.Background(), key)
	read := clustersim.Describe(storage.Change{Key: key, Map: m}.AppendBinary(nil))
	if err != nil {
		read = err.Error()
	}
	file := "absent"
	if cs, err := c.Nodes[i].DB().Changes(context.Background(), []string{key}); err != nil {
		file = err.Error()
	} else if len(cs) > 0 {
		file = clustersim.Describe(cs[0].AppendBinary(nil))
	}
	return fmt.Sprintf("%s reads %s, file %s", c.Nodes[i].Name, read, file)
}

func revokeSession(ts crdt.Timestamp) crdt.Map { return crdt.RevokeSession(ts) }

func bookmarkOf(marks ...crdt.Timestamp) crdt.Bookmark {
	var b crdt.Bookmark
	for _, ts := range marks {
		b.Add(ts)
	}
	return b
}

// newQuietCluster starts n nodes whose anti-entropy runs only when a worker starts, so
// that what a reader holds comes from pushes and from Await's own pulls, and settles it.
func newQuietCluster(t *testing.T, n int, opts ...clustersim.Option) *clustersim.Cluster {
	t.Helper()
	c := newTestCluster(t, n, []string{"eu"}, append([]clustersim.Option{clustersim.WithAntiEntropy(time.Hour)}, opts...)...)
	settle(t, c)
	return c
}

// settle writes once on every live node and waits until every live node holds every
// other's write by its Have. A push carries Through only after its worker's first
// anti-entropy round, so every worker has finished that round and nothing it started
// is still in flight.
func settle(t testing.TB, c *clustersim.Cluster) {
	t.Helper()
	marks := map[int]crdt.Timestamp{}
	for _, i := range c.Alive() {
		_, marks[i] = mustWrite(t, c, i, bmKey("settle"), newSession("settle"))
	}
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		for i := range marks {
			have := c.Nodes[i].Rep().Have()
			for j, ts := range marks {
				if !have.Covers(ts) {
					return false, fmt.Sprintf("%s does not hold %s's first write by its Have %v", c.Nodes[i].Name, c.Nodes[j].Name, have.Marks())
				}
			}
		}
		return true, ""
	})
}

func record(t testing.TB, c *clustersim.Cluster, i int, key string) (crdt.Map, bool) {
	t.Helper()
	m, ok, err := c.Nodes[i].DB().Record(context.Background(), key)
	if err != nil {
		t.Fatalf("%s: read %s: %v", c.Nodes[i].Name, key, err)
	}
	return m, ok
}

// await runs Await on node i, waiting up to wait for replication and giving up after
// within.
func await(c *clustersim.Cluster, i int, b crdt.Bookmark, wait, within time.Duration) (cluster.Awaited, time.Duration, error) {
	start := time.Now()
	a, err := c.Nodes[i].Rep().Await(context.Background(), b, cluster.AllPartitions, wait, within)
	return a, time.Since(start), err
}

// TestAwait checks each way Await can meet a bookmark, on small clusters whose
// anti-entropy does not run by itself.
func TestAwait(t *testing.T) {
	t.Parallel()
	owner := "someone"

	t.Run("cluster.Covered", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2)
		key := bmKey("covered")
		_, ts := mustWrite(t, c, 0, key, newSession(owner))
		b := bookmarkOf(ts)
		clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
			return c.Nodes[1].Rep().Covers(b, cluster.AllPartitions), "the push did not arrive"
		})
		a, took, err := await(c, 1, b, 10*time.Second, 10*time.Second)
		if a != cluster.Covered || err != nil || took > time.Second {
			t.Fatalf("Await = %v, %v after %s; want covered at once", a, err, took)
		}
	})

	t.Run("cluster.Waited", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2)
		c.Net.SetFaults(clustersim.Faults{Delay: 1, MaxDelay: 100 * time.Millisecond})
		// A push that beats the Await call makes it Covered: try again. Nothing but the
		// push can bring the write within the wait (no anti-entropy, no fetch before it).
		for attempt := range 10 {
			key := bmKey("waited")
			_, ts := mustWrite(t, c, 0, key, newSession(owner))
			a, took, err := await(c, 1, bookmarkOf(ts), 20*time.Second, 20*time.Second)
			switch {
			case a == cluster.Covered && err == nil:
				t.Logf("attempt %d: the push arrived first", attempt)
				continue
			case a != cluster.Waited || err != nil:
				t.Fatalf("Await = %v, %v after %s; want waited (the push and its Through arrive within the wait)", a, err, took)
			}
			if _, ok := record(t, c, 1, key); !ok {
				t.Fatalf("Await = waited, but n1 lacks %s", key)
			}
			t.Logf("waited %s", took)
			return
		}
		t.Fatalf("in 10 attempts, Await never waited")
	})

	t.Run("FetchedFromOrigin", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2)
		c.CutOneWay(0, 1) // n0's pushes to n1 fail; n1 can still pull from n0
		key := bmKey("fetched")
		_, ts := mustWrite(t, c, 0, key, newSession(owner))
		b := bookmarkOf(ts)
		c.Net.ResetStats()
		a, took, err := await(c, 1, b, 100*time.Millisecond, 10*time.Second)
		if a != cluster.Fetched || err != nil {
			t.Fatalf("Await = %v, %v after %s; want fetched from the origin", a, err, took)
		}
		if _, ok := record(t, c, 1, key); !ok {
			t.Fatalf("Await = fetched, but n1 lacks %s", key)
		}
		if s := c.Net.LinkStats("n1", "n0"); s.Calls["digest"] == 0 {
			t.Errorf("n1 made no anti-entropy call to n0: %v", s.Calls)
		}
		if !c.Nodes[1].Rep().Covers(b, cluster.AllPartitions) {
			t.Errorf("after the fetch, n1's Have %v does not cover %v", c.Nodes[1].Rep().Have().Marks(), ts)
		}
	})

	t.Run("FetchedFromThird", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 3)
		c.CutOneWay(0, 1)
		c.CutOneWay(1, 0)
		key := bmKey("third")
		_, ts := mustWrite(t, c, 0, key, newSession(owner))
		b := bookmarkOf(ts)
		clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
			return c.Nodes[2].Rep().Covers(b, cluster.AllPartitions), "n0's push to n2 did not arrive"
		})
		c.Net.ResetStats()
		a, took, err := await(c, 1, b, 0, 10*time.Second)
		if a != cluster.Fetched || err != nil {
			t.Fatalf("Await = %v, %v after %s; want fetched from n2", a, err, took)
		}
		if _, ok := record(t, c, 1, key); !ok {
			t.Fatalf("Await = fetched, but n1 lacks %s", key)
		}
		if s := c.Net.LinkStats("n1", "n2"); s.Calls["digest"] == 0 {
			t.Errorf("n1 made no anti-entropy call to n2: %v", s.Calls)
		}
	})

	// Behind: no node the reader can reach holds the write, whichever way it is cut off.
	for _, tc := range []struct {
		name string
		// isolate cuts the reader n1 off before n0 writes; after is run once n2 holds
		// the write (when it should).
		isolate func(c *clustersim.Cluster)
		after   func(c *clustersim.Cluster)
		n2Holds bool
	}{
		{"Cut", func(c *clustersim.Cluster) { c.Cut([]int{1}) }, nil, true},
		{"Partitioned", func(c *clustersim.Cluster) { c.Partition([]int{1}) }, nil, true},
		{"OriginDown", func(c *clustersim.Cluster) { c.Cut([]int{0}) }, func(c *clustersim.Cluster) { c.Kill(0) }, false},
		// The reader restarts while the origin is down: it never saw the origin as a
		// peer in this life, but n2 tells it that the origin exists.
		{"OriginDownReaderRestarted", func(c *clustersim.Cluster) { c.Cut([]int{0}) }, func(c *clustersim.Cluster) {
			c.Kill(0)
			c.Heal()
			c.Kill(1)
			c.Restart(1)
		}, false},
	} {
		t.Run("cluster.Behind"+tc.name, func(t *testing.T) {
			t.Parallel()
			c := newQuietCluster(t, 3)
			tc.isolate(c)
			key := bmKey("behind")
			_, ts := mustWrite(t, c, 0, key, newSession(owner))
			b := bookmarkOf(ts)
			if tc.n2Holds {
				clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
					return c.Nodes[2].Rep().Covers(b, cluster.AllPartitions), "n0's push to n2 did not arrive"
				})
			}
			if tc.after != nil {
				tc.after(c)
			}
			const within = time.Second
			a, took, err := await(c, 1, b, 100*time.Millisecond, within)
			if a != cluster.Behind || !errors.Is(err, cluster.ErrBehind) {
				_, has := record(t, c, 1, key)
				t.Fatalf("Await = %v, %v after %s (n1 holds the write: %v); want behind", a, err, took, has)
			}
			if took > within+time.Second {
				t.Errorf("Await answered behind after %s, past its timeout %s", took, within)
			}
		})
	}

	t.Run("TooFarAhead", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2, clustersim.WithMaxSkew(time.Second))
		ahead := crdt.Timestamp{Wall: c.Nodes[1].Now().Add(3 * time.Second).UnixNano(), Node: c.Nodes[0].DB().NodeID()}
		c.Net.ResetStats()
		a, took, err := await(c, 1, bookmarkOf(ahead), 20*time.Second, 20*time.Second)
		if a != cluster.Behind || !errors.Is(err, cluster.ErrBehind) || took > 2*time.Second {
			t.Fatalf("Await(3s ahead, MaxSkew 1s) = %v, %v after %s; want behind at once", a, err, took)
		}
		if s := c.Net.LinkStats("n1", "n0"); s.Calls["digest"] != 0 {
			t.Errorf("Await fetched for a mark it can never meet: %v", s.Calls)
		}
	})

	// A mark of a node never known: set aside once no peer has it, if it is old enough that
	// the node is long gone (or made up); a recent one may be of a node that joined a
	// moment ago, or went down before the reader restarted.
	for _, tc := range []struct {
		name string
		age  time.Duration
		want cluster.Awaited
	}{
		{"UnknownOrigin", cluster.ForgetUnknownAfter + time.Minute, cluster.SetAside},
		{"UnknownOriginRecent", 0, cluster.Behind},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newQuietCluster(t, 3)
			stranger := crdt.Timestamp{Wall: c.Nodes[1].Now().Add(-tc.age).UnixNano(), Node: 0x5e55_10d0_dead_beef}
			b := bookmarkOf(stranger)
			c.Net.ResetStats()
			a, took, err := await(c, 1, b, 50*time.Millisecond, 10*time.Second)
			if a != tc.want || (err == nil) != (tc.want != cluster.Behind) {
				t.Fatalf("Await(mark of a node never known, %s old) = %v, %v after %s; want %v", tc.age, a, err, took, tc.want)
			}
			if took > 5*time.Second {
				t.Errorf("Await took %s: it should answer once every peer was asked", took)
			}
			if calls := c.Net.LinkStats("n1", "n0").Calls["digest"] + c.Net.LinkStats("n1", "n2").Calls["digest"]; calls == 0 {
				t.Errorf("Await answered without fetching from any peer")
			}
			if c.Nodes[1].Rep().Covers(b, cluster.AllPartitions) {
				t.Errorf("n1's Have covers a mark it never got: %v", c.Nodes[1].Rep().Have().Marks())
			}
		})
	}

	t.Run("Forged", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2)
		forged := c.Nodes[0].DB().Committed()
		forged.Wall += int64(time.Second)
		c.Net.ResetStats()
		a, took, err := await(c, 1, bookmarkOf(forged), 50*time.Millisecond, 10*time.Second)
		if a != cluster.SetAside || err != nil {
			t.Fatalf("Await(mark beyond what its live origin holds) = %v, %v after %s; want it set aside (set_aside)", a, err, took)
		}
		if s := c.Net.LinkStats("n1", "n0"); s.Calls["digest"] == 0 {
			t.Errorf("Await set the mark aside without asking its origin")
		}
	})

	t.Run("Self", func(t *testing.T) {
		t.Parallel()
		c := newQuietCluster(t, 2)
		mine := c.Nodes[1].DB().Committed()
		later := mine
		later.Wall += int64(time.Second)
		for _, ts := range []crdt.Timestamp{mine, later} {
			if a, took, err := await(c, 1, bookmarkOf(ts), time.Second, time.Second); a != cluster.Covered || err != nil || took > 500*time.Millisecond {
				t.Errorf("Await(own mark %v, commit mark %v) = %v, %v after %s; want covered at once", ts, mine, a, err, took)
			}
		}
	})
}

// bmSeed returns the seed of a randomised bookmark test: -seed, or one from the clock.
func bmSeed(t *testing.T, name string) int64 {
	seed := *flagSeed
	if seed == 0 {
		seed = time.Now().UnixNano()%1_000_000_000 + 1
	}
	t.Logf("seed %d: replay with go test -run '%s$' ./edge/cluster -seed=%d", seed, name, seed)
	return seed
}

// TestBookmarkReadYourWrites: a session created, its data changed and the session signed
// out on one node, each read back at once on another after awaiting the bookmark taken
// right after the write, over a network that delays most messages.
func TestBookmarkReadYourWrites(t *testing.T) {
	t.Parallel()
	seed := bmSeed(t, "TestBookmarkReadYourWrites")
	rng := rand.New(rand.NewPCG(uint64(seed), 0xb00c))
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed),
		clustersim.WithFaults(clustersim.Faults{Delay: 0.8, MaxDelay: 40 * time.Millisecond, Dup: 0.1}))
	w := clustersim.NewWorkload(c, rng, seed)
	acc := w.MustRegister(t, 0, "reader")
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		for _, n := range c.Nodes {
			if _, ok, _ := n.DB().Record(context.Background(), crdt.UserKey(acc.ID)); !ok {
				return false, n.Name + " lacks the account"
			}
		}
		return true, ""
	})
	rounds := 25
	if testing.Short() {
		rounds = 8
	}
	ctx := context.Background()
	outcomes := map[cluster.Awaited]int{}
	// after awaits on node b the bookmark of what node a committed last.
	var last string
	after := func(what string, a, b int) {
		t.Helper()
		bm := bookmarkOf(c.Nodes[a].DB().Committed())
		got, took, err := await(c, b, bm, 300*time.Millisecond, 2*time.Second)
		outcomes[got]++
		last = fmt.Sprintf("Await(%v) = %v after %s, Have %v", bm.Marks(), got, took, c.Nodes[b].Rep().Have().Marks())
		if err != nil || got == cluster.SetAside {
			t.Fatalf("%s on %s, read on %s: Await = %v, %v after %s", what, c.Nodes[a].Name, c.Nodes[b].Name, got, err, took)
		}
	}
	for round := range rounds {
		a := rng.IntN(3)
		b := (a + 1 + rng.IntN(2)) % 3
		A, B := c.Nodes[a].API().Sessions, c.Nodes[b].API().Sessions

		s, err := A.Login(ctx, functions.Login{Username: acc.Username, Password: acc.Password})
		mustOK(t, "login", err)
		p := functions.Principal{UserID: acc.ID, Username: acc.Username, SessionID: s.ID}
		after("login", a, b)
		if err := B.Check(ctx, p); err != nil {
			t.Fatalf("round %d: session created on %s, awaited on %s: Check = %v, want usable", round, c.Nodes[a].Name, c.Nodes[b].Name, err)
		}

		v := json.RawMessage(fmt.Sprintf(`"v%d"`, round))
		_, err = A.PatchData(ctx, p, functions.DataPatch{Set: map[string]json.RawMessage{"theme": v}})
		mustOK(t, "patch", err)
		after("patch", a, b)
		cur, err := B.Current(ctx, p)
		if err != nil || string(cur.Data["theme"]) != string(v) {
			t.Fatalf("round %d: data set on %s, awaited on %s: Current = %s, %v; want theme %s\n%s\n%s\n%s", round, c.Nodes[a].Name, c.Nodes[b].Name, cur.Data["theme"], err, v,
				last, states(c, b, crdt.SessionKey(s.ID)), states(c, a, crdt.SessionKey(s.ID)))
		}

		mustOK(t, "revoke", A.Revoke(ctx, p, s.ID))
		after("revoke", a, b)
		if err := B.Check(ctx, p); functions.ErrorCode(err) != functions.EUnauthorized {
			t.Fatalf("round %d: session revoked on %s, awaited on %s: Check = %v, want %s\n%s\n%s\n%s", round, c.Nodes[a].Name, c.Nodes[b].Name, err, functions.EUnauthorized,
				last, states(c, b, crdt.SessionKey(s.ID)), states(c, a, crdt.SessionKey(s.ID)))
		}
		if rec, _ := record(t, c, b, crdt.SessionKey(s.ID)); !crdt.ReadSessionMeta(s.ID, &rec).Revoked {
			t.Fatalf("round %d: session revoked on %s, awaited on %s: its record there is not revoked", round, c.Nodes[a].Name, c.Nodes[b].Name)
		}
	}
	total := 3 * rounds
	t.Logf("%d awaits: %d covered, %d waited, %d fetched", total, outcomes[cluster.Covered], outcomes[cluster.Waited], outcomes[cluster.Fetched])
	if outcomes[cluster.Covered] > total/2 {
		t.Errorf("%d of %d awaits found the write already there: the reader was not behind enough to test anything", outcomes[cluster.Covered], total)
	}
}

// TestBookmarkThroughBatches: an origin's many concurrent writes go out in several small
// pushes. What a reader holds by its Have it always holds (checked all along), and once
// the pushes are done its Have covers the origin's commit mark, with no anti-entropy.
func TestBookmarkThroughBatches(t *testing.T) {
	t.Parallel()
	c := newQuietCluster(t, 2, clustersim.WithPushBatch(4))
	c.Net.SetFaults(clustersim.Faults{Delay: 0.5, MaxDelay: 2 * time.Millisecond})
	origin := c.Nodes[0].DB().NodeID()
	rep := c.Nodes[1].Rep()

	db1 := c.Nodes[1].DB()
	var mu sync.Mutex
	written := map[string]crdt.Timestamp{} // key → stamp, once acknowledged
	// check reports every acknowledged write that n1's Have covers but n1 lacks. It runs
	// beside the writers too, so it reports with Errorf only.
	check := func() {
		have := rep.Have().Mark(origin) // read before the writes are listed: it only rises
		covered := map[string]crdt.Timestamp{}
		mu.Lock()
		for key, ts := range written {
			if !have.Less(ts) {
				covered[key] = ts
			}
		}
		mu.Unlock()
		for key, ts := range covered {
			if _, ok, err := db1.Record(context.Background(), key); err != nil || !ok {
				t.Errorf("n1's Have covers n0 through %v, but n1 lacks %s, stamped %v (%v)", have, key, ts, err)
			}
		}
	}
	rounds := 6
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		func() {
			done, checked := make(chan struct{}), make(chan struct{})
			go func() { // checks all along, until the round ends (also by Fatal)
				defer close(checked)
				tick := time.NewTicker(2 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
						check()
					}
				}
			}()
			defer func() { close(done); <-checked }()
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for range 6 {
						key := bmKey("batch")
						if _, ts, err := write(c, 0, key, newSession("someone")); err != nil {
							t.Errorf("write %s: %v", key, err)
						} else {
							mu.Lock()
							written[key] = ts
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			mark := c.Nodes[0].DB().Committed()
			clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
				have := rep.Have().Mark(origin)
				return !have.Less(mark), fmt.Sprintf("round %d: n1's Have holds n0 through %v, n0's commit mark after its writes is %v", round, have, mark)
			})
		}()
		check()
		mu.Lock()
		n := len(written)
		mu.Unlock()
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("round %d: %d writes held and covered", round, n)
	}
}

// TestBookmarkThroughOvertaken: an origin's write that a newer remote write to another
// field of the same record overtakes while the origin cannot push moves to the end of the
// origin's feed, behind newer writes of its own. When the origin can push again, the pass
// that pushes those newer writes in earlier batches still pushes it, before it tells the
// peer a mark that covers it.
func TestBookmarkThroughOvertaken(t *testing.T) {
	t.Parallel()
	c := newQuietCluster(t, 3, clustersim.WithPushBatch(4))
	key := bmKey("overtaken")
	_, created := mustWrite(t, c, 0, key, newSession("someone"))
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		return c.Nodes[1].Rep().Covers(bookmarkOf(created), cluster.AllPartitions) && c.Nodes[2].Rep().Covers(bookmarkOf(created), cluster.AllPartitions), "the session did not reach n1 and n2"
	})
	c.CutOneWay(0, 1)
	c.CutOneWay(0, 2)
	_, mine := mustWrite(t, c, 0, key, setData("a", "n0"))
	for range 8 { // two full push batches of n0's newer writes
		mustWrite(t, c, 0, bmKey("newer"), newSession("someone"))
	}
	mustWrite(t, c, 2, key, setData("b", "n2")) // pushed to n0 and n1; n2 lacks n0's field
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		m, _ := record(t, c, 0, key)
		_, ok := m.Get(crdt.DataPrefix + "b")
		return ok, "n2's write did not reach n0"
	})
	mark := c.Nodes[0].DB().Committed()
	c.Heal()
	origin := c.Nodes[0].DB().NodeID()
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		have := c.Nodes[1].Rep().Have().Mark(origin)
		return !have.Less(mark), fmt.Sprintf("n1 holds n0 through %v, want %v", have, mark)
	})
	m, _ := record(t, c, 1, key)
	if f, ok := m.Field(crdt.DataPrefix + "a"); !ok || f.TS != mine {
		t.Fatalf("n1's Have covers n0 through %v, but n1 lacks n0's write %v to %s (n1 holds %v)", mark, mine, key, f)
	}
}

// ---------------------------------------------------------------------------------------
