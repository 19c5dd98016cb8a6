package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// Randomised: clients with bookmarks.

// TestSimBookmarks runs random schedules (as TestSimulation does) in which clients write
// and read on random nodes, each keeping one bookmark, under partitions, cuts, kills,
// clock skew and a lossy network. Every read after a successful Await must show every
// write its client had acknowledged; Await may answer behind only while something stands
// between the reader and the data. A final calm phase must see no behind at all.
func TestSimBookmarks(t *testing.T) {
	t.Parallel()
	if *flagSeed != 0 {
		t.Run(fmt.Sprintf("seed=%d", *flagSeed), func(t *testing.T) { runBookmarkScenario(t, *flagSeed) })
		return
	}
	count := 8
	if testing.Short() {
		count = 3
	}
	base := *flagSeedBase
	if base == 0 {
		base = time.Now().UnixNano()%1_000_000_000 + 1
	}
	t.Logf("seeds %d to %d; replay one with: go test -run 'TestSimBookmarks$' ./edge/cluster -seed=N", base, base+int64(count)-1)
	var totals bmCounts
	var mu sync.Mutex
	t.Run("group", func(t *testing.T) {
		for i := range count {
			seed := base + int64(i)
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				t.Parallel()
				n := runBookmarkScenario(t, seed)
				mu.Lock()
				totals.add(n)
				mu.Unlock()
			})
		}
	})
	t.Logf("%d scenarios: %s", count, totals.String())
}

// bmCounts counts the outcomes of one scenario's client requests.
type bmCounts struct {
	reads, writes                    int // requests that awaited
	covered, waited, fetched, behind int // Await outcomes
	unknown                          int
	writesBehind                     int // writes refused as behind (included in behind)
	calmReads                        int // reads while nothing stood in the way
	checked                          int // acknowledged writes checked on reads
}

func (n *bmCounts) add(o bmCounts) {
	n.reads += o.reads
	n.writes += o.writes
	n.covered += o.covered
	n.waited += o.waited
	n.fetched += o.fetched
	n.behind += o.behind
	n.unknown += o.unknown
	n.writesBehind += o.writesBehind
	n.calmReads += o.calmReads
	n.checked += o.checked
}

func (n bmCounts) String() string {
	return fmt.Sprintf("%d reads (%d calm), %d writes; awaits: %d covered, %d waited, %d fetched, %d behind (%d of them writes), %d unknown origin; %d acknowledged writes checked",
		n.reads, n.calmReads, n.writes, n.covered, n.waited, n.fetched, n.behind, n.writesBehind, n.unknown, n.checked)
}

// bmWrite is one acknowledged write of a client.
type bmWrite struct {
	key   string // session record
	field string // the field written: FieldUser (created), FieldRevoked, or a data field
	ts    crdt.Timestamp
	value string // data: the JSON value; "" for a deletion
}

type bmClient struct {
	user     string
	bookmark crdt.Bookmark
	session  string                // current session key, "" when signed out
	acked    map[[2]string]bmWrite // (key, field) → the acknowledged write with the latest stamp
	last     crdt.Timestamp        // stamp of the latest acknowledged write
	keys     []string              // every session created
}

// bmScenario is one randomised schedule's clients over a cluster.
type bmScenario struct {
	t     *testing.T
	c     *clustersim.Cluster
	rng   *rand.Rand
	skew  time.Duration // MaxSkew
	k     int           // values written
	n     bmCounts
	calmP bool // in the final calm phase: behind is an error whatever calm says
}

const (
	bmWait    = 100 * time.Millisecond // how long Await waits for replication
	bmTimeout = 800 * time.Millisecond // how long a request may take to meet its bookmark
	bmOffset  = 300 * time.Millisecond // clock offsets within which nothing is refused
)

func runBookmarkScenario(t *testing.T, seed int64) bmCounts {
	t.Logf("seed %d: replay with go test -run 'TestSimBookmarks$' ./edge/cluster -seed=%d", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0xb00c))
	n := 3 + rng.IntN(3)
	regions := simRegions[:2+rng.IntN(2)]
	faults := randomFaults(rng)
	const skew = time.Second
	c := newTestCluster(t, n, regions, clustersim.WithSeed(seed), clustersim.WithFaults(faults), clustersim.WithMaxSkew(skew))
	c.Logf("%d nodes in %v, %s", n, regions, faults)
	s := &bmScenario{t: t, c: c, rng: rng, skew: skew}
	var clients []*bmClient
	for i := range 3 {
		clients = append(clients, &bmClient{user: fmt.Sprintf("client%d", i), acked: map[[2]string]bmWrite{}})
	}
	steps := 60 + rng.IntN(40)
	pace := time.NewTicker(time.Duration(2+rng.IntN(5)) * time.Millisecond)
	defer pace.Stop()
	for range steps {
		<-pace.C
		if rng.IntN(100) < 18 {
			s.chaos(faults)
			continue
		}
		s.step(clients[rng.IntN(len(clients))])
	}

	// Calm: everyone up, no cuts, no loss, clocks together, and no HLC still ahead from a
	// skewed past. No request may be answered behind now.
	c.RestartAllAndHeal()
	for i := range c.Nodes {
		c.SetOffset(i, 0)
	}
	calm := faults
	calm.Drop, calm.DropReply = 0, 0
	c.Net.SetFaults(calm)
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) { return calmNow(c, s.skew) })
	s.calmP = true
	for range 30 {
		s.step(clients[rng.IntN(len(clients))])
	}
	c.Net.SetFaults(faults)
	c.CheckConverged(t, time.Minute)
	c.Logf("bookmarks: %s", s.n.String())
	t.Logf("seed %d: %s", seed, s.n.String())
	return s.n
}

// chaos applies one random fault or repair.
func (s *bmScenario) chaos(faults clustersim.Faults) {
	c, rng := s.c, s.rng
	n := len(c.Nodes)
	switch r := rng.IntN(100); {
	case r < 20:
		perm := rng.Perm(n)
		groups := [][]int{perm[:1+rng.IntN(n-1)]}
		if rng.IntN(2) == 0 {
			c.Partition(groups...)
		} else {
			c.Cut(groups...)
		}
	case r < 40:
		c.Heal()
	case r < 52:
		if alive := c.Alive(); len(alive) > 1 {
			c.Kill(alive[rng.IntN(len(alive))])
		}
	case r < 66:
		if dead := c.Dead(); len(dead) > 0 {
			c.Restart(dead[rng.IntN(len(dead))])
		}
	case r < 76:
		c.SetOffset(rng.IntN(n), time.Duration(rng.Int64N(int64(2*bmOffset)))-bmOffset)
	case r < 80:
		// Beyond the bound: this node's writes are refused elsewhere for a while.
		c.SetOffset(rng.IntN(n), s.skew+500*time.Millisecond)
	case r < 88:
		a, b := rng.IntN(n), rng.IntN(n)
		if a != b {
			c.CutOneWay(a, b)
		}
	case r < 94:
		c.Notices()
	default:
		f := randomFaults(rng)
		if rng.IntN(2) == 0 {
			f = faults
		}
		c.Net.SetFaults(f)
		c.Logf("faults %s", f)
	}
}

// calmNow reports whether nothing stands between any reader and the data: every node up, no
// partition or cut, and the network and clocks steady.
func calmNow(c *clustersim.Cluster, skew time.Duration) (bool, string) {
	if dead := c.Dead(); len(dead) > 0 {
		return false, fmt.Sprintf("nodes %v down", dead)
	}
	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	if !c.Net.Whole(names...) {
		return false, "the network is cut"
	}
	return steadyNow(c, skew)
}

// steadyNow reports whether the network loses no message, every clock is within bmOffset of
// real time and every HLC far enough within the skew bound that no node refuses another's
// writes.
func steadyNow(c *clustersim.Cluster, skew time.Duration) (bool, string) {
	if f := c.Net.Faults(); f.Drop > 0 || f.DropReply > 0 {
		return false, "the network loses messages"
	}
	limit := time.Now().Add(skew - bmOffset - 100*time.Millisecond).UnixNano()
	for _, n := range c.Nodes {
		if off := n.Offset(); off > bmOffset || off < -bmOffset {
			return false, fmt.Sprintf("%s's clock is off by %s", n.Name, off)
		}
		if db := n.DB(); db != nil && db.Clock().Last().Wall > limit {
			return false, fmt.Sprintf("%s's HLC is %s ahead", n.Name, time.Duration(db.Clock().Last().Wall-time.Now().UnixNano()))
		}
	}
	return true, ""
}

// unheld returns the marks of b that node i lacks and that no node it can call holds by
// its Have either (a node holds its own writes): the marks Await may be unable to meet.
func unheld(c *clustersim.Cluster, b crdt.Bookmark, i int) []crdt.Timestamp {
	self := c.Nodes[i].DB().NodeID()
	var out []crdt.Timestamp
	for _, ts := range b.Missing(c.Nodes[i].Rep().Have()) {
		if ts.Node == self {
			continue
		}
		held := false
		for j, n := range c.Nodes {
			if rep := n.Rep(); j != i && rep != nil && c.Net.CanCall(c.Nodes[i].Name, c.Nodes[j].Name) && rep.Covers(bookmarkOf(ts), cluster.AllPartitions) {
				held = true
				break
			}
		}
		if !held {
			out = append(out, ts)
		}
	}
	return out
}

// await meets the client's bookmark on node i as a request would, and counts the outcome.
// It reports whether the request may go on.
func (s *bmScenario) await(cl *bmClient, i int, write bool) bool {
	c := s.c
	rep := c.Nodes[i].Rep()
	if rep == nil {
		return false
	}
	calm, why := calmNow(c, s.skew)
	steady, _ := steadyNow(c, s.skew)
	unheld := unheld(c, cl.bookmark, i)
	if write {
		s.n.writes++
	} else {
		s.n.reads++
		if calm {
			s.n.calmReads++
		}
	}
	start := time.Now()
	a, err := rep.Await(context.Background(), cl.bookmark, cluster.AllPartitions, bmWait, bmTimeout)
	took := time.Since(start)
	switch a {
	case cluster.Covered:
		s.n.covered++
	case cluster.Waited:
		s.n.waited++
	case cluster.Fetched:
		s.n.fetched++
	case cluster.SetAside:
		s.n.unknown++
	case cluster.Behind:
		s.n.behind++
		if write {
			s.n.writesBehind++
		}
	}
	what := "read"
	if write {
		what = "write"
	}
	switch {
	case a == cluster.Behind && !errors.Is(err, cluster.ErrBehind), a != cluster.Behind && err != nil:
		s.t.Errorf("%s on %s: Await = %v, %v", what, c.Nodes[i].Name, a, err)
		return false
	case a == cluster.Behind && (calm || s.calmP):
		s.t.Errorf("%s on %s: Await answered behind after %s while nothing stood in the way (calm phase %v); bookmark %v, Have %v",
			what, c.Nodes[i].Name, took.Round(time.Millisecond), s.calmP, cl.bookmark.Marks(), rep.Have().Marks())
		return false
	case a == cluster.Behind && steady && len(unheld) == 0:
		// Nothing lost, no clock refusing writes: a node this one can call held every mark
		// it lacked before it began.
		s.t.Errorf("%s on %s: Await answered behind after %s (%s), but nodes it can call held all it lacked; bookmark %v, Have %v",
			what, c.Nodes[i].Name, took.Round(time.Millisecond), why, cl.bookmark.Marks(), rep.Have().Marks())
		return false
	case a == cluster.Behind:
		c.Logf("%s of %s on %s: behind after %s (%s; held by no node it can call: %v)", what, cl.user, c.Nodes[i].Name, took.Round(time.Millisecond), why, unheld)
		return false
	case a == cluster.SetAside:
		// Every mark here names a write of a node of this cluster: none may be set aside.
		s.t.Errorf("%s on %s: Await set marks aside (set_aside); bookmark %v, Have %v",
			what, c.Nodes[i].Name, cl.bookmark.Marks(), rep.Have().Marks())
	}
	if !rep.Covers(cl.bookmark, cluster.AllPartitions) {
		s.t.Errorf("%s on %s: Await = %v, but the node's Have %v does not cover the bookmark %v",
			what, c.Nodes[i].Name, a, rep.Have().Marks(), cl.bookmark.Marks())
	}
	return true
}

// step runs one request of client cl on a random live node: mostly writes, some reads.
func (s *bmScenario) step(cl *bmClient) {
	alive := s.c.Alive()
	i, ok := clustersim.Pick(s.rng, alive)
	if !ok {
		return
	}
	if s.rng.IntN(100) < 40 {
		s.read(cl, i)
		return
	}
	if !s.await(cl, i, true) {
		return
	}
	s.k++
	var key, field, value string
	var update func(crdt.Timestamp) crdt.Map
	switch r := s.rng.IntN(100); {
	case cl.session == "" || r < 15:
		key, field = bmKey(cl.user), crdt.FieldUser
		update = newSession(cl.user)
	case r < 80:
		key, field = cl.session, crdt.DataPrefix+fmt.Sprintf("k%d", s.rng.IntN(4))
		if s.rng.IntN(5) == 0 {
			update = deleteData(field[len(crdt.DataPrefix):])
		} else {
			value = fmt.Sprintf("%q", fmt.Sprintf("v%d", s.k))
			update = setData(field[len(crdt.DataPrefix):], fmt.Sprintf("v%d", s.k))
		}
	default:
		key, field = cl.session, crdt.FieldRevoked
		update = revokeSession
	}
	m, ts, err := write(s.c, i, key, update)
	if err != nil {
		s.t.Errorf("%s: write on %s: %v", cl.user, s.c.Nodes[i].Name, err)
		return
	}
	if !cl.last.Less(ts) {
		// The node held every earlier write of the client (it met the bookmark), so its
		// clock had moved past them.
		s.t.Errorf("%s: write on %s stamped %v, not after the client's previous write %v", cl.user, s.c.Nodes[i].Name, ts, cl.last)
	}
	cl.last = ts
	cl.bookmark.AddMap(&m)
	cl.acked[[2]string{key, field}] = bmWrite{key: key, field: field, ts: ts, value: value}
	switch field {
	case crdt.FieldUser:
		cl.keys = append(cl.keys, key)
		cl.session = key
	case crdt.FieldRevoked:
		cl.session = ""
	}
}

// read awaits the client's bookmark on node i and checks that the node shows every
// write the client had acknowledged.
func (s *bmScenario) read(cl *bmClient, i int) {
	if cl.bookmark.IsZero() || !s.await(cl, i, false) {
		return
	}
	c := s.c
	db := c.Nodes[i].DB()
	if db == nil {
		return
	}
	ctx := context.Background()
	keys := slices.Clone(cl.keys)
	ms, ok, err := db.Records(ctx, keys...)
	if err != nil {
		return // killed meanwhile: not possible here, the test goroutine kills
	}
	recs := map[string]crdt.Map{}
	for j, key := range keys {
		if ok[j] {
			recs[key] = ms[j]
		}
	}
	for _, w := range cl.acked {
		s.n.checked++
		m, has := recs[w.key]
		if !has {
			s.t.Errorf("%s read on %s after Await: session %s (created %v) is missing", cl.user, c.Nodes[i].Name, w.key, cl.acked[[2]string{w.key, crdt.FieldUser}].ts)
			continue
		}
		if _, revoked := m.Flag(crdt.FieldRevoked); revoked && strings.HasPrefix(w.field, crdt.DataPrefix) {
			continue // a revoked session sheds its data, whatever its writes' times
		}
		f, has := m.Field(w.field)
		switch {
		case !has || f.TS.Less(w.ts):
			s.t.Errorf("%s read on %s after Await: %s %s is %v (present %v), the client's write %v is not reflected",
				cl.user, c.Nodes[i].Name, w.key, w.field, f.TS, has, w.ts)
		case f.TS == w.ts && strings.HasPrefix(w.field, crdt.DataPrefix) && (f.Deleted != (w.value == "") || string(f.Value) != w.value):
			s.t.Errorf("%s read on %s after Await: %s %s = %q (deleted %v), want %q", cl.user, c.Nodes[i].Name, w.key, w.field, f.Value, f.Deleted, w.value)
		}
	}
}
