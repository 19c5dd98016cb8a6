package cluster_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// In-process simulation of a sessiond cluster (package clustersim). Each node is a bbolt
// replica, a Replicator and the functions handlers; the nodes talk over a fault-injecting
// in-memory transport, with membership, clocks, kills and disk wipes under the test's
// control (clustersim.Cluster). A seeded workload drives the handlers and every
// acknowledged write is recorded; after the final heal a checker compares every node with
// that record (Cluster.CheckConverged). This file holds the random schedules and the
// scripted scenarios.
//
//	go test -run 'TestSimulation$' ./edge/cluster -seed=N     replay scenario N
//	go test -run 'TestSimulation$' ./edge/cluster -seeds=500  more scenarios
//
// A seed fixes the scenario: cluster shape, fault levels, the sequence of operations
// and faults, and each link's fault decisions; which replication message meets which
// fault still depends on goroutine timing.
var (
	flagSeed     = flag.Int64("seed", 0, "replay the TestSimulation scenario with this seed")
	flagSeeds    = flag.Int("seeds", 100, "number of random TestSimulation scenarios (-short: a fifth)")
	flagSeedBase = flag.Int64("seedbase", 0, "first TestSimulation seed (0: from the clock)")
	flagSimConc  = flag.Int("simconc", 8, "TestSimulation scenarios run at once")
	flagSimLog   = flag.Bool("simlog", false, "route every node's debug logs to t.Log")
)

// newTestCluster starts n nodes over regions (clustersim.New), with every node's debug
// logs in t.Log under -simlog.
func newTestCluster(t testing.TB, n int, regions []string, opts ...clustersim.Option) *clustersim.Cluster {
	t.Helper()
	return clustersim.New(t, n, regions, append([]clustersim.Option{clustersim.WithDebugLogs(*flagSimLog)}, opts...)...)
}

// ---------------------------------------------------------------------------------------
// Random scenarios.

var simRegions = []string{"eu", "us", "ap"}

func TestSimulation(t *testing.T) {
	t.Parallel() // the scripted scenarios run beside it
	if *flagSeed != 0 {
		t.Run(fmt.Sprintf("seed=%d", *flagSeed), func(t *testing.T) { runScenario(t, *flagSeed) })
		return
	}
	count := *flagSeeds
	if testing.Short() {
		count = max(count/5, 1)
	}
	base := *flagSeedBase
	if base == 0 {
		base = time.Now().UnixNano()%1_000_000_000 + 1
	}
	t.Logf("seeds %d to %d; replay one with: go test -run 'TestSimulation$' ./edge/cluster -seed=N", base, base+int64(count)-1)
	start := time.Now()
	seeds := make(chan int64)
	var wg sync.WaitGroup
	for range max(*flagSimConc, 1) {
		wg.Go(func() {
			for s := range seeds {
				t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) { runScenario(t, s) })
			}
		})
	}
	for i := range count {
		seeds <- base + int64(i)
	}
	close(seeds)
	wg.Wait()
	t.Logf("%d scenarios in %s: %s", count, time.Since(start).Round(time.Millisecond), simTotals.String())
}

// simTotals sums what the random scenarios exercised, for the log.
var simTotals simCounters

type simCounters struct {
	writes, conflicts, kills, wipes, partitions, cuts, crossChains atomic.Int64
}

func (s *simCounters) String() string {
	return fmt.Sprintf("%d acknowledged writes, %d partitions, %d transport cuts, %d kills, %d wipes, "+
		"%d contested usernames, %d message chains (After) across nodes",
		s.writes.Load(), s.partitions.Load(), s.cuts.Load(), s.kills.Load(), s.wipes.Load(), s.conflicts.Load(), s.crossChains.Load())
}

// runScenario runs one random schedule: 3–5 nodes in 2–3 regions, a lossy network, a
// workload interleaved with partitions, cuts, kills, restarts, wipes and clock jumps;
// then everything restarts and heals and the checker runs.
func runScenario(t *testing.T, seed int64) {
	t.Logf("seed %d: replay with go test -run 'TestSimulation$' ./edge/cluster -seed=%d", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x51e55))
	n := 3 + rng.IntN(3)
	regions := simRegions[:2+rng.IntN(2)]
	faults := randomFaults(rng)
	c := newTestCluster(t, n, regions, clustersim.WithSeed(seed), clustersim.WithFaults(faults))
	c.Logf("%d nodes in %v, %s", n, regions, faults)
	w := clustersim.NewWorkload(c, rng, seed)
	// Clients arrive at a steady pace, so that partitions, kills and backoffs span
	// replication activity rather than a burst of local commits.
	steps := 30 + rng.IntN(40)
	pace := time.NewTicker(time.Duration(3+rng.IntN(8)) * time.Millisecond)
	defer pace.Stop()
	wiped := false
	for range steps {
		<-pace.C
		if rng.IntN(100) >= 15 {
			w.Step()
			continue
		}
		switch r := rng.IntN(100); {
		case r < 25:
			var groups [][]int
			if rng.IntN(2) == 0 {
				c.PartitionRegions(rng.IntN(2) == 0, regions[:1])
				continue
			}
			perm := rng.Perm(n)
			cut := 1 + rng.IntN(n-1)
			groups = append(groups, perm[:cut])
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
		case r < 65:
			if dead := c.Dead(); len(dead) > 0 {
				c.Restart(dead[rng.IntN(len(dead))])
			}
		case r < 70:
			if !wiped {
				wiped = wipeSafely(t, c, rng)
			}
		case r < 80:
			c.SetOffset(rng.IntN(n), time.Duration(rng.IntN(800)-400)*time.Millisecond)
		case r < 85:
			a, b := rng.IntN(n), rng.IntN(n)
			if a != b {
				c.CutOneWay(a, b)
			}
		case r < 92:
			c.Notices()
		default:
			f := randomFaults(rng)
			c.Net.SetFaults(f)
			c.Logf("faults %s", f)
		}
	}
	c.RestartAllAndHeal()
	c.Net.SetFaults(faults)
	c.Logf("workload done: %s", w.Summary())
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
	c.Logf("handler checks done")
	simTotals.writes.Add(int64(c.Model.Count()))
	simTotals.conflicts.Add(int64(w.Conflicts()))
	simTotals.crossChains.Add(int64(w.CrossChains()))
	ev := c.Events()
	simTotals.partitions.Add(ev.Partitions)
	simTotals.cuts.Add(ev.Cuts)
	simTotals.kills.Add(ev.Kills)
	simTotals.wipes.Add(ev.Wipes)
}

func randomFaults(rng *rand.Rand) clustersim.Faults {
	level := []float64{0, 0.05, 0.15}[rng.IntN(3)]
	return clustersim.Faults{
		Drop: level, DropReply: level, Dup: rng.Float64() * 0.2, Delay: rng.Float64() * 0.3,
		MaxDelay: time.Duration(1+rng.IntN(10)) * time.Millisecond, Replay: rng.Float64() * 0.1,
	}
}

// wipeSafely wipes a live node once a peer on its side holds everything it holds (the
// workload is paused meanwhile), so no acknowledged write is lost with the disk.
func wipeSafely(t *testing.T, c *clustersim.Cluster, rng *rand.Rand) bool {
	alive := c.Alive()
	i, _ := clustersim.Pick(rng, alive)
	for _, j := range alive {
		if j != i && c.Group(i) == c.Group(j) && c.Net.Talk(c.Nodes[i].Name, c.Nodes[j].Name) {
			c.Logf("wipe %s: waiting until %s holds everything it holds", c.Nodes[i].Name, c.Nodes[j].Name)
			c.WaitSameRoot(t, i, j, time.Minute)
			c.Wipe(i)
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------------------
func mustOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestSimLongPartition cuts two regions apart for a long stretch — first with membership
// noticing, then with membership still seeing the other side while the transport fails —
// with conflicting writes on both sides, then heals.
func TestSimLongPartition(t *testing.T) {
	t.Parallel()
	const seed = 11
	c := newTestCluster(t, 4, []string{"eu", "us"}, clustersim.WithSeed(seed)) // n0, n2 in eu; n1, n3 in us
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	ctx := context.Background()
	alice, bob, carol := w.MustRegister(t, 0, "alice"), w.MustRegister(t, 1, "bob"), w.MustRegister(t, 3, "carol")
	w.Protected[bob], w.Protected[carol] = true, true // their conversation is read across the heal
	c.CheckConverged(t, time.Minute)
	aliceUS, bobEU, bobUS := w.MustLogin(t, 1, alice), w.MustLogin(t, 0, bob), w.MustLogin(t, 3, bob)
	carolEU, carolUS := w.MustLogin(t, 2, carol), w.MustLogin(t, 3, carol)
	w.SendOn(0, bobEU, carol)
	w.SendOn(3, carolUS, bob)
	c.CheckConverged(t, time.Minute)

	c.PartitionRegions(true, []string{"eu"})
	// eu: alice erases her account, bob revokes his us session, dave registers.
	mustOK(t, "erase alice in eu", c.Nodes[0].API().Users.Delete(ctx, alice.ID))
	alice.Erased = true
	mustOK(t, "revoke bob's us session from eu", c.Nodes[2].API().Sessions.Revoke(ctx, bobEU.Principal(), bobUS.ID))
	bobUS.Revoked = true
	daveEU := w.MustRegister(t, 2, "dave")
	// us: alice's session still works here; bob keeps using the session eu revoked;
	// carol signs out everywhere; another dave registers.
	_, err := c.Nodes[1].API().Sessions.PatchData(ctx, aliceUS.Principal(), functions.DataPatch{Set: map[string]json.RawMessage{"theme": json.RawMessage(`"dark"`)}})
	mustOK(t, "alice patches data in us", err)
	first := "Alicia"
	_, err = c.Nodes[3].API().Users.UpdateProfile(ctx, alice.ID, functions.ProfilePatch{FirstName: &first})
	mustOK(t, "alice edits her profile in us", err)
	w.SendOn(1, aliceUS, bob)
	w.SendOn(1, bobUS, alice)
	_, err = c.Nodes[3].API().Sessions.PatchData(ctx, bobUS.Principal(), functions.DataPatch{Set: map[string]json.RawMessage{"cart": json.RawMessage(`[1,2]`)}})
	mustOK(t, "bob uses his revoked session in us", err)
	mustOK(t, "carol revokes all in us", c.Nodes[3].API().Sessions.RevokeAll(ctx, carolUS.Principal()))
	carolUS.Revoked, carolEU.Revoked = true, true // both created before, causally
	daveUS := w.MustRegister(t, 1, "dave")
	// Bob reads his conversation with carol in eu; carol writes to him from us meanwhile.
	page, err := c.Nodes[0].API().Messages.List(ctx, bobEU.Principal(), "carol", "", 0)
	mustOK(t, "bob lists messages in eu", err)
	for range 3 {
		w.SendOn(3, carolUS, bob)
	}
	w.Steps(150, 10*time.Millisecond)

	// Second half: membership sees everyone again, the transport still fails across, and
	// the workers' retry backoff grows to its cap.
	c.PartitionRegions(false, []string{"eu"})
	w.Steps(150, 20*time.Millisecond)
	c.Heal()
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)

	for _, n := range c.Nodes {
		api := n.API()
		if _, err := api.Users.Me(ctx, alice.ID); functions.ErrorCode(err) != functions.ENotFound {
			t.Errorf("%s: Me(alice) = %v, want not_found", n.Name, err)
		}
		for _, s := range []*clustersim.Session{aliceUS, bobUS, carolUS, carolEU} {
			if _, err := api.Sessions.Authenticate(ctx, s.Account.ID, s.ID); functions.ErrorCode(err) != functions.EUnauthorized {
				t.Errorf("%s: Authenticate(revoked session of %s) = %v, want unauthorized", n.Name, s.Account.Username, err)
			}
		}
		if msgs, _, _ := n.DB().ReadLog(ctx, crdt.ConversationID(alice.ID, bob.ID), nil, 0); len(msgs) > 0 {
			t.Errorf("%s: %d messages between erased alice and bob survive", n.Name, len(msgs))
		}
	}
	// Exactly one dave signs in, the same one everywhere (checkHandlers checks each node).
	claims, _ := c.Model.Record(crdt.ClaimKey("dave"))
	t.Logf("dave: claims %v (eu %s, us %s)", crdt.Claimants(&claims), daveEU.ID[:8], daveUS.ID[:8])
	// Bob's eu cursor skips none of carol's messages that arrived from us after he read.
	more, err := c.Nodes[0].API().Messages.List(ctx, bobEU.Principal(), "carol", page.Next, 0)
	mustOK(t, "bob lists messages after his cursor", err)
	var ids []string
	for _, m := range append(page.Messages, more.Messages...) {
		ids = append(ids, m.ID)
	}
	var want []string
	for _, e := range c.Model.Log(crdt.ConversationID(bob.ID, carol.ID)) {
		want = append(want, functions.EntryIDString(e.ID))
	}
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("bob's pages before and after the heal hold %d messages, the conversation %d", len(ids), len(want))
	}
}

// TestSimKillRestartUnderLoad kills and restarts nodes while a client keeps writing, and
// checks that a restarted node catches up before CaughtUp closes.
func TestSimKillRestartUnderLoad(t *testing.T) {
	t.Parallel()
	const seed = 21
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed), clustersim.WithFaults(clustersim.Faults{Delay: 0.2, Dup: 0.1}))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Steps(220, 4*time.Millisecond)
	}()
	grow := func(k int) {
		t.Helper()
		from := c.Model.Count()
		clustersim.WaitFor(t, time.Minute, func() (bool, string) {
			return c.Model.Count() >= from+k, "the workload stalled"
		})
	}
	for round := range 4 {
		i := 1 + round%2
		grow(5)
		c.Kill(i)
		grow(5)
		c.Restart(i)
		rep := c.Nodes[i].Rep()
		clustersim.WaitFor(t, time.Minute, func() (bool, string) {
			select {
			case <-rep.CaughtUp():
				return true, ""
			default:
				return false, c.Nodes[i].Name + " never caught up"
			}
		})
	}
	<-done
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimCaughtUpAfterRestart: a node down while the others write comes back holding
// everything its peers held when CaughtUp closes.
func TestSimCaughtUpAfterRestart(t *testing.T) {
	t.Parallel()
	const seed = 31
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.Steps(30, 2*time.Millisecond)
	c.CheckConverged(t, time.Minute)
	c.Kill(2)
	w.Steps(40, 2*time.Millisecond)
	c.WaitSameRoot(t, 0, 1, time.Minute)
	d := c.Nodes[0].DB().Digest()
	want := d.Root()
	c.Restart(2)
	rep := c.Nodes[2].Rep()
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		select {
		case <-rep.CaughtUp():
			return true, ""
		default:
			return false, "n2 never caught up"
		}
	})
	if got := c.Nodes[2].DB().Digest(); got.Root() != want {
		t.Errorf("n2 root %x when CaughtUp closed, want its peers' %x", got.Root(), want)
	}
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimWipe wipes a node's disk: it comes back as a new node and catches up fully,
// including its former self's writes, then takes writes again.
func TestSimWipe(t *testing.T) {
	t.Parallel()
	const seed = 41
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.Steps(50, 2*time.Millisecond)
	c.CheckConverged(t, time.Minute)
	old := c.Nodes[1].DB().NodeID()
	c.Wipe(1)
	if id := c.Nodes[1].DB().NodeID(); id == old {
		t.Fatalf("wiped node kept its ID %s", id)
	}
	rep := c.Nodes[1].Rep()
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		select {
		case <-rep.CaughtUp():
			return true, ""
		default:
			return false, "wiped n1 never caught up"
		}
	})
	c.CheckConverged(t, time.Minute)
	w.Steps(30, 2*time.Millisecond)
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimLossyNetwork runs the workload over a network that loses, duplicates, delays and
// replays a large share of messages, with gossip notices now and then.
func TestSimLossyNetwork(t *testing.T) {
	t.Parallel()
	const seed = 51
	f := clustersim.Faults{Drop: 0.25, DropReply: 0.25, Dup: 0.4, Delay: 0.4, MaxDelay: 15 * time.Millisecond, Replay: 0.3}
	c := newTestCluster(t, 4, simRegions[:2], clustersim.WithSeed(seed), clustersim.WithFaults(f))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	for range 8 {
		w.Steps(15, 3*time.Millisecond)
		c.Notices()
	}
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimTransportBlackout: membership still sees every peer but the transport drops
// every message for a while; once it delivers again, everything converges.
func TestSimTransportBlackout(t *testing.T) {
	t.Parallel()
	const seed = 61
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.Steps(10, 2*time.Millisecond)
	c.CheckConverged(t, time.Minute)
	c.Net.SetFaults(clustersim.Faults{Drop: 1})
	c.Logf("blackout")
	a := w.MustRegister(t, 0, "blackout")
	w.Steps(100, 20*time.Millisecond)
	if _, ok, _ := c.Nodes[1].DB().Record(context.Background(), crdt.UserKey(a.ID)); ok {
		t.Errorf("n1 has a record written on n0 during the blackout")
	}
	c.Net.SetFaults(clustersim.Faults{})
	c.Logf("blackout over")
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimInSyncExchange: two replicas already in sync exchange one digest message, well
// within 64 KiB; a single differing key costs one more round trip and about a kilobyte.
func TestSimInSyncExchange(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 2, simRegions[:2], clustersim.WithManualPeers())
	ctx := context.Background()
	db := c.Nodes[0].DB()
	const records, entries = 5000, 2000
	err := db.Update(ctx, func(tx *storage.Tx) error {
		for i := range records {
			var m crdt.Map
			m.Set(crdt.FieldFirstName, fmt.Appendf(nil, "name %d", i), db.Clock().Next())
			if _, err := tx.Merge(crdt.UserKey(fmt.Sprintf("user%05d", i)), m); err != nil {
				return err
			}
		}
		for i := range entries {
			conv := crdt.ConversationID("user00001", "user00002")
			if _, err := tx.Append(conv, crdt.Message{From: "user00001", To: "user00002", Body: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	mustOK(t, "write", err)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	mustOK(t, "first sync", n1.Rep().SyncWith(ctx, n0.Peer()))
	c.WaitSameRoot(t, 0, 1, 10*time.Second)

	for _, dir := range [][2]*clustersim.Node{{n1, n0}, {n0, n1}} {
		from, to := dir[0], dir[1]
		c.Net.ResetStats()
		mustOK(t, "in-sync round", from.Rep().SyncWith(ctx, to.Peer()))
		there, back := c.Net.LinkStats(from.Name, to.Name), c.Net.LinkStats(to.Name, from.Name)
		t.Logf("in sync, %s → %s: %v, %d bytes", from.Name, to.Name, there.Calls, there.Bytes+back.Bytes)
		if there.Calls["digest"] != 1 || there.Calls["leaves"]+there.Calls["push"]+len(back.Calls) != 0 {
			t.Errorf("in-sync round %s → %s made calls %v and %v, want one digest", from.Name, to.Name, there.Calls, back.Calls)
		}
		if b := there.Bytes + back.Bytes; b > 64<<10 {
			t.Errorf("in-sync round moved %d bytes, want ≤ 64 KiB", b)
		}
	}

	var m crdt.Map
	m.Set(crdt.FieldLastName, []byte("changed"), db.Clock().Next())
	mustOK(t, "one more write", db.Update(ctx, func(tx *storage.Tx) error {
		_, err := tx.Merge(crdt.UserKey("user00042"), m)
		return err
	}))
	c.Net.ResetStats()
	mustOK(t, "repair round", n1.Rep().SyncWith(ctx, n0.Peer()))
	s := c.Net.LinkStats(n1.Name, n0.Name)
	t.Logf("one key differs: %v, %d bytes", s.Calls, s.Bytes)
	// The key is held on both sides, differently, so it is merged both ways: n1 also
	// pushes its older version back.
	if s.Calls["digest"] != 1 || s.Calls["leaves"] != 1 || s.Calls["push"] > 1 || s.Bytes > 4<<10 {
		t.Errorf("repairing one key: calls %v, %d bytes; want a digest, a leaves call and at most one push within 4 KiB", s.Calls, s.Bytes)
	}
	c.WaitSameRoot(t, 0, 1, 10*time.Second)
}

// TestSimClockSkew: a node whose clock runs beyond MaxSkew ahead has its writes rejected
// (and counted) by the others, which still converge among themselves; once its clock is
// back and real time passes its timestamps, everything converges. A node far behind
// rejects everyone else's writes the same way.
func TestSimClockSkew(t *testing.T) {
	t.Parallel()
	const seed = 71
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed), clustersim.WithMaxSkew(time.Second), clustersim.WithAntiEntropy(200*time.Millisecond))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	ctx := context.Background()
	rejected := func(i int) int64 { return c.Nodes[i].Rejected() }
	has := func(i int, a *clustersim.Account) bool {
		_, ok, _ := c.Nodes[i].DB().Record(ctx, crdt.UserKey(a.ID))
		return ok
	}

	c.SetOffset(2, 3*time.Second)
	ahead := w.MustRegister(t, 2, "ahead")
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		return rejected(0) > 0 && rejected(1) > 0, fmt.Sprintf("rejections: n0 %d, n1 %d", rejected(0), rejected(1))
	})
	steady := w.MustRegister(t, 0, "steady")
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		return has(1, steady) && has(2, steady), "n0's write did not reach n1 and n2"
	})
	c.WaitSameRoot(t, 0, 1, time.Minute)
	if has(0, ahead) || has(1, ahead) {
		t.Errorf("a write from 3s in the future was applied with a 1s bound")
	}
	c.SetOffset(2, 0) // n2's HLC stays ahead until real time catches up with it
	c.CheckConverged(t, time.Minute)

	before := rejected(0)
	c.SetOffset(0, -3*time.Second)
	behind := w.MustRegister(t, 1, "behind")
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		return rejected(0) > before && has(2, behind), fmt.Sprintf("n0 rejected %d", rejected(0)-before)
	})
	if has(0, behind) {
		t.Errorf("n0, 3s behind, applied a write from its present + 3s")
	}
	c.SetOffset(0, 0)
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}

// TestSimPushOvertakenOwnWrite: a node's write that a newer remote write to another field
// of the same record overtakes before it was pushed still goes out with the next push,
// not a whole anti-entropy period later.
func TestSimPushOvertakenOwnWrite(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, []string{"eu"}, clustersim.WithAntiEntropy(time.Hour))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(81, 1)), 81)
	ctx := context.Background()
	a := w.MustRegister(t, 0, "alice")
	c.CheckConverged(t, time.Minute)
	c.CutOneWay(0, 1)
	c.CutOneWay(0, 2)
	first, last := "Alice", "Liddell"
	_, err := c.Nodes[0].API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{FirstName: &first})
	mustOK(t, "n0 writes first_name", err)
	_, err = c.Nodes[1].API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{LastName: &last})
	mustOK(t, "n1 writes last_name", err)
	clustersim.WaitFor(t, time.Minute, func() (bool, string) {
		m, _, _ := c.Nodes[0].DB().Record(ctx, crdt.UserKey(a.ID))
		v, _ := m.Get(crdt.FieldLastName)
		return string(v) == last, "n1's write has not reached n0"
	})
	c.Heal()
	c.CheckConverged(t, time.Minute) // anti-entropy is an hour away: pushes only
}

// TestSimPushLargeBacklog: a backlog of large records whose push batch would exceed
// cluster.MaxMessage goes out in smaller pushes instead of failing forever.
func TestSimPushLargeBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 38 MB through two replicas; TestPushBatches covers the bound")
	}
	t.Parallel()
	c := newTestCluster(t, 2, []string{"eu"}, clustersim.WithAntiEntropy(time.Hour))
	ctx := context.Background()
	for _, n := range c.Nodes {
		<-n.Rep().CaughtUp() // the workers' first anti-entropy is done: what follows is pushed
	}
	c.Cut([]int{0})
	db := c.Nodes[0].DB()
	big := []byte(`"` + strings.Repeat("x", functions.MaxDataValue*4-8) + `"`)
	err := db.Update(ctx, func(tx *storage.Tx) error {
		for i := range 600 {
			ts := db.Clock().Next()
			m := crdt.NewSession("someone", ts.Time().Add(time.Hour), time.Hour, ts)
			m.Set(crdt.DataPrefix+"blob", big, ts)
			if _, err := tx.Merge(crdt.SessionKey(fmt.Sprintf("big%03d", i)), m); err != nil {
				return err
			}
		}
		return nil
	})
	mustOK(t, "write 600 sessions of 64 KiB", err)
	c.Heal()
	c.WaitSameRoot(t, 0, 1, time.Minute)
}

// TestSimSignOutEverywhereUnderSkew: a session created, in real time, before a sign out
// everywhere, on a node whose clock runs 30 s ahead (within --max-skew) and that the
// revoking node had not heard of, is revoked everywhere once the two meet; a session
// created after its node received the sign-out is not.
func TestSimSignOutEverywhereUnderSkew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newTestCluster(t, 2, []string{"eu"}, clustersim.WithMaxSkew(time.Minute))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
	c.SetOffset(1, 30*time.Second)
	alice := w.MustRegister(t, 0, "alice")
	c.CheckConverged(t, time.Minute)
	onFast0 := w.MustLogin(t, 1, alice)
	c.CheckConverged(t, time.Minute)

	c.Cut([]int{0}, []int{1})
	onFast := w.MustLogin(t, 1, alice) // n0 never hears of it before it signs out everywhere
	onSlow := w.MustLogin(t, 0, alice)
	mustOK(t, "sign out everywhere on n0", c.Nodes[0].API().Sessions.RevokeAll(ctx, onSlow.Principal()))
	after := w.MustLogin(t, 0, alice) // n0 holds the sign-out: this one stays
	c.Heal()
	c.CheckConverged(t, time.Minute)
	afterFast := w.MustLogin(t, 1, alice) // n1 received it now
	c.CheckConverged(t, time.Minute)

	for _, n := range c.Nodes {
		api := n.API()
		for _, s := range []*clustersim.Session{onFast0, onFast, onSlow} {
			if _, err := api.Sessions.Authenticate(ctx, s.Account.ID, s.ID); functions.ErrorCode(err) != functions.EUnauthorized {
				t.Errorf("%s: Authenticate(session created on n%d before the sign-out) = %v, want unauthorized", n.Name, s.Node, err)
			}
		}
		for _, s := range []*clustersim.Session{after, afterFast} {
			if _, err := api.Sessions.Authenticate(ctx, s.Account.ID, s.ID); err != nil {
				t.Errorf("%s: Authenticate(session created on n%d after receiving the sign-out) = %v, want ok", n.Name, s.Node, err)
			}
		}
	}
}
