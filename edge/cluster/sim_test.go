package cluster

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
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// In-process simulation of a sessiond cluster. Each node is a bbolt replica, a Replicator
// and the functions handlers; the nodes talk over simnet, a fault-injecting in-memory
// transport, with membership, clocks, kills and disk wipes under the test's control
// (simnet_test.go). A seeded workload drives the handlers and every acknowledged write is
// recorded; after the final heal a checker compares every node with that record
// (checker_test.go). This file holds the random schedules and the scripted scenarios.
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

// simPasswords is one cheap hasher for every simulated node: the simulation tests
// replication, not argon2's cost. (NewPasswords hashes its dummy at full cost once.)
var simPasswords = sync.OnceValue(func() *functions.Passwords {
	p := functions.NewPasswords(16)
	p.Time, p.Memory = 1, 8
	return p
})

// waitFor polls cond until it holds, failing the test with cond's last reason after within.
func waitFor(t testing.TB, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s: %s", within, why)
		}
		<-tick.C
	}
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
	c := newTestCluster(t, n, regions, withSeed(seed), withFaults(faults))
	c.logf("%d nodes in %v, %s", n, regions, faults)
	w := newWorkload(c, rng, seed)
	// Clients arrive at a steady pace, so that partitions, kills and backoffs span
	// replication activity rather than a burst of local commits.
	steps := 30 + rng.IntN(40)
	pace := time.NewTicker(time.Duration(3+rng.IntN(8)) * time.Millisecond)
	defer pace.Stop()
	wiped := false
	for range steps {
		<-pace.C
		if rng.IntN(100) >= 15 {
			w.step()
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
			if alive := c.alive(); len(alive) > 1 {
				c.Kill(alive[rng.IntN(len(alive))])
			}
		case r < 65:
			if dead := c.dead(); len(dead) > 0 {
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
			c.net.setFaults(f)
			c.logf("faults %s", f)
		}
	}
	c.RestartAllAndHeal()
	c.net.setFaults(faults)
	c.logf("workload done: %s", w.summary())
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
	c.logf("handler checks done")
	simTotals.writes.Add(int64(c.model.count()))
	simTotals.conflicts.Add(int64(w.conflicts))
	for _, ch := range w.chains {
		if slices.ContainsFunc(ch.ids, func(id crdt.EntryID) bool { return id.Origin() != ch.ids[0].Origin() }) {
			simTotals.crossChains.Add(1)
		}
	}
}

func randomFaults(rng *rand.Rand) simFaults {
	level := []float64{0, 0.05, 0.15}[rng.IntN(3)]
	return simFaults{
		Drop: level, DropReply: level, Dup: rng.Float64() * 0.2, Delay: rng.Float64() * 0.3,
		MaxDelay: time.Duration(1+rng.IntN(10)) * time.Millisecond, Replay: rng.Float64() * 0.1,
	}
}

// wipeSafely wipes a live node once a peer on its side holds everything it holds (the
// workload is paused meanwhile), so no acknowledged write is lost with the disk.
func wipeSafely(t *testing.T, c *testCluster, rng *rand.Rand) bool {
	alive := c.alive()
	i, _ := pick(rng, alive)
	for _, j := range alive {
		if j != i && c.group(i) == c.group(j) && c.net.talk(c.nodes[i].name, c.nodes[j].name) {
			c.logf("wipe %s: waiting until %s holds everything it holds", c.nodes[i].name, c.nodes[j].name)
			c.waitSameRoot(t, i, j, time.Minute)
			c.Wipe(i)
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------------------
// Scripted scenarios.

func mustRegister(t *testing.T, w *workload, node int, username string) *account {
	t.Helper()
	a, err := w.registerOn(node, username)
	if err != nil {
		t.Fatalf("register %s on n%d: %v", username, node, err)
	}
	return a
}

func mustLogin(t *testing.T, w *workload, node int, a *account) *simSession {
	t.Helper()
	n := w.c.nodes[node]
	s, err := n.API().sessions.Login(context.Background(), functions.Login{Username: a.username, Password: a.password})
	if err != nil {
		t.Fatalf("login %s on %s: %v", a.username, n.name, err)
	}
	ss := &simSession{acc: a, id: s.ID, node: node, origin: n.DB().NodeID()}
	w.sessions = append(w.sessions, ss)
	return ss
}

func mustOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// steps runs k paced random workload steps.
func (w *workload) steps(k int, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for range k {
		<-tick.C
		w.step()
	}
}

// TestSimLongPartition cuts two regions apart for a long stretch — first with membership
// noticing, then with membership still seeing the other side while the transport fails —
// with conflicting writes on both sides, then heals.
func TestSimLongPartition(t *testing.T) {
	t.Parallel()
	const seed = 11
	c := newTestCluster(t, 4, []string{"eu", "us"}, withSeed(seed)) // n0, n2 in eu; n1, n3 in us
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	ctx := context.Background()
	alice, bob, carol := mustRegister(t, w, 0, "alice"), mustRegister(t, w, 1, "bob"), mustRegister(t, w, 3, "carol")
	w.protected[bob], w.protected[carol] = true, true // their conversation is read across the heal
	c.checkConverged(t, time.Minute)
	aliceUS, bobEU, bobUS := mustLogin(t, w, 1, alice), mustLogin(t, w, 0, bob), mustLogin(t, w, 3, bob)
	carolEU, carolUS := mustLogin(t, w, 2, carol), mustLogin(t, w, 3, carol)
	w.sendOn(0, bobEU, carol)
	w.sendOn(3, carolUS, bob)
	c.checkConverged(t, time.Minute)

	c.PartitionRegions(true, []string{"eu"})
	// eu: alice erases her account, bob revokes his us session, dave registers.
	mustOK(t, "erase alice in eu", c.nodes[0].API().users.Delete(ctx, alice.id))
	alice.erased = true
	mustOK(t, "revoke bob's us session from eu", c.nodes[2].API().sessions.Revoke(ctx, principal(bobEU), bobUS.id))
	bobUS.revoked = true
	daveEU := mustRegister(t, w, 2, "dave")
	// us: alice's session still works here; bob keeps using the session eu revoked;
	// carol signs out everywhere; another dave registers.
	_, err := c.nodes[1].API().sessions.PatchData(ctx, principal(aliceUS), functions.DataPatch{Set: map[string]json.RawMessage{"theme": json.RawMessage(`"dark"`)}})
	mustOK(t, "alice patches data in us", err)
	first := "Alicia"
	_, err = c.nodes[3].API().users.UpdateProfile(ctx, alice.id, functions.ProfilePatch{FirstName: &first})
	mustOK(t, "alice edits her profile in us", err)
	w.sendOn(1, aliceUS, bob)
	w.sendOn(1, bobUS, alice)
	_, err = c.nodes[3].API().sessions.PatchData(ctx, principal(bobUS), functions.DataPatch{Set: map[string]json.RawMessage{"cart": json.RawMessage(`[1,2]`)}})
	mustOK(t, "bob uses his revoked session in us", err)
	mustOK(t, "carol revokes all in us", c.nodes[3].API().sessions.RevokeAll(ctx, principal(carolUS)))
	carolUS.revoked, carolEU.revoked = true, true // both created before, causally
	daveUS := mustRegister(t, w, 1, "dave")
	// Bob reads his conversation with carol in eu; carol writes to him from us meanwhile.
	page, err := c.nodes[0].API().messages.List(ctx, principal(bobEU), "carol", "", 0)
	mustOK(t, "bob lists messages in eu", err)
	for range 3 {
		w.sendOn(3, carolUS, bob)
	}
	w.steps(150, 10*time.Millisecond)

	// Second half: membership sees everyone again, the transport still fails across, and
	// the workers' retry backoff grows to its cap.
	c.PartitionRegions(false, []string{"eu"})
	w.steps(150, 20*time.Millisecond)
	c.Heal()
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)

	for _, n := range c.nodes {
		api := n.API()
		if _, err := api.users.Me(ctx, alice.id); functions.ErrorCode(err) != functions.ENotFound {
			t.Errorf("%s: Me(alice) = %v, want not_found", n.name, err)
		}
		for _, s := range []*simSession{aliceUS, bobUS, carolUS, carolEU} {
			if _, err := api.sessions.Authenticate(ctx, s.acc.id, s.id); functions.ErrorCode(err) != functions.EUnauthorized {
				t.Errorf("%s: Authenticate(revoked session of %s) = %v, want unauthorized", n.name, s.acc.username, err)
			}
		}
		if msgs, _, _ := n.DB().ReadLog(ctx, crdt.ConversationID(alice.id, bob.id), nil, 0); len(msgs) > 0 {
			t.Errorf("%s: %d messages between erased alice and bob survive", n.name, len(msgs))
		}
	}
	// Exactly one dave signs in, the same one everywhere (checkHandlers checks each node).
	claims, _ := c.model.record(crdt.ClaimKey("dave"))
	t.Logf("dave: claims %v (eu %s, us %s)", crdt.Claimants(&claims), daveEU.id[:8], daveUS.id[:8])
	// Bob's eu cursor skips none of carol's messages that arrived from us after he read.
	more, err := c.nodes[0].API().messages.List(ctx, principal(bobEU), "carol", page.Next, 0)
	mustOK(t, "bob lists messages after his cursor", err)
	var ids []string
	for _, m := range append(page.Messages, more.Messages...) {
		ids = append(ids, m.ID)
	}
	var want []string
	for _, e := range c.model.log(crdt.ConversationID(bob.id, carol.id)) {
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
	c := newTestCluster(t, 3, simRegions, withSeed(seed), withFaults(simFaults{Delay: 0.2, Dup: 0.1}))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.steps(220, 4*time.Millisecond)
	}()
	grow := func(k int) {
		t.Helper()
		from := c.model.count()
		waitFor(t, time.Minute, func() (bool, string) {
			return c.model.count() >= from+k, "the workload stalled"
		})
	}
	for round := range 4 {
		i := 1 + round%2
		grow(5)
		c.Kill(i)
		grow(5)
		c.Restart(i)
		rep := c.nodes[i].Rep()
		waitFor(t, time.Minute, func() (bool, string) {
			select {
			case <-rep.CaughtUp():
				return true, ""
			default:
				return false, c.nodes[i].name + " never caught up"
			}
		})
	}
	<-done
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimCaughtUpAfterRestart: a node down while the others write comes back holding
// everything its peers held when CaughtUp closes.
func TestSimCaughtUpAfterRestart(t *testing.T) {
	t.Parallel()
	const seed = 31
	c := newTestCluster(t, 3, simRegions, withSeed(seed))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.steps(30, 2*time.Millisecond)
	c.checkConverged(t, time.Minute)
	c.Kill(2)
	w.steps(40, 2*time.Millisecond)
	c.waitSameRoot(t, 0, 1, time.Minute)
	d := c.nodes[0].DB().Digest()
	want := d.Root()
	c.Restart(2)
	rep := c.nodes[2].Rep()
	waitFor(t, time.Minute, func() (bool, string) {
		select {
		case <-rep.CaughtUp():
			return true, ""
		default:
			return false, "n2 never caught up"
		}
	})
	if got := c.nodes[2].DB().Digest(); got.Root() != want {
		t.Errorf("n2 root %x when CaughtUp closed, want its peers' %x", got.Root(), want)
	}
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimWipe wipes a node's disk: it comes back as a new node and catches up fully,
// including its former self's writes, then takes writes again.
func TestSimWipe(t *testing.T) {
	t.Parallel()
	const seed = 41
	c := newTestCluster(t, 3, simRegions, withSeed(seed))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.steps(50, 2*time.Millisecond)
	c.checkConverged(t, time.Minute)
	old := c.nodes[1].DB().NodeID()
	c.Wipe(1)
	if id := c.nodes[1].DB().NodeID(); id == old {
		t.Fatalf("wiped node kept its ID %s", id)
	}
	rep := c.nodes[1].Rep()
	waitFor(t, time.Minute, func() (bool, string) {
		select {
		case <-rep.CaughtUp():
			return true, ""
		default:
			return false, "wiped n1 never caught up"
		}
	})
	c.checkConverged(t, time.Minute)
	w.steps(30, 2*time.Millisecond)
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimLossyNetwork runs the workload over a network that loses, duplicates, delays and
// replays a large share of messages, with gossip notices now and then.
func TestSimLossyNetwork(t *testing.T) {
	t.Parallel()
	const seed = 51
	f := simFaults{Drop: 0.25, DropReply: 0.25, Dup: 0.4, Delay: 0.4, MaxDelay: 15 * time.Millisecond, Replay: 0.3}
	c := newTestCluster(t, 4, simRegions[:2], withSeed(seed), withFaults(f))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	for range 8 {
		w.steps(15, 3*time.Millisecond)
		c.Notices()
	}
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimTransportBlackout: membership still sees every peer but the transport drops
// every message for a while; once it delivers again, everything converges.
func TestSimTransportBlackout(t *testing.T) {
	t.Parallel()
	const seed = 61
	c := newTestCluster(t, 3, simRegions, withSeed(seed))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.steps(10, 2*time.Millisecond)
	c.checkConverged(t, time.Minute)
	c.net.setFaults(simFaults{Drop: 1})
	c.logf("blackout")
	a := mustRegister(t, w, 0, "blackout")
	w.steps(100, 20*time.Millisecond)
	if _, ok, _ := c.nodes[1].DB().Record(context.Background(), crdt.UserKey(a.id)); ok {
		t.Errorf("n1 has a record written on n0 during the blackout")
	}
	c.net.setFaults(simFaults{})
	c.logf("blackout over")
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimInSyncExchange: two replicas already in sync exchange one digest message, well
// within 64 KiB; a single differing key costs one more round trip and about a kilobyte.
func TestSimInSyncExchange(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 2, simRegions[:2], withManualPeers())
	ctx := context.Background()
	db := c.nodes[0].DB()
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
	n0, n1 := c.nodes[0], c.nodes[1]
	mustOK(t, "first sync", n1.Rep().SyncWith(ctx, n0.Peer()))
	c.waitSameRoot(t, 0, 1, 10*time.Second)

	for _, dir := range [][2]*testNode{{n1, n0}, {n0, n1}} {
		from, to := dir[0], dir[1]
		c.net.resetStats()
		mustOK(t, "in-sync round", from.Rep().SyncWith(ctx, to.Peer()))
		there, back := c.net.linkStats(from.name, to.name), c.net.linkStats(to.name, from.name)
		t.Logf("in sync, %s → %s: %v, %d bytes", from.name, to.name, there.Calls, there.Bytes+back.Bytes)
		if there.Calls["digest"] != 1 || there.Calls["leaves"]+there.Calls["push"]+len(back.Calls) != 0 {
			t.Errorf("in-sync round %s → %s made calls %v and %v, want one digest", from.name, to.name, there.Calls, back.Calls)
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
	c.net.resetStats()
	mustOK(t, "repair round", n1.Rep().SyncWith(ctx, n0.Peer()))
	s := c.net.linkStats(n1.name, n0.name)
	t.Logf("one key differs: %v, %d bytes", s.Calls, s.Bytes)
	// The key is held on both sides, differently, so it is merged both ways: n1 also
	// pushes its older version back.
	if s.Calls["digest"] != 1 || s.Calls["leaves"] != 1 || s.Calls["push"] > 1 || s.Bytes > 4<<10 {
		t.Errorf("repairing one key: calls %v, %d bytes; want a digest, a leaves call and at most one push within 4 KiB", s.Calls, s.Bytes)
	}
	c.waitSameRoot(t, 0, 1, 10*time.Second)
}

// TestSimClockSkew: a node whose clock runs beyond MaxSkew ahead has its writes rejected
// (and counted) by the others, which still converge among themselves; once its clock is
// back and real time passes its timestamps, everything converges. A node far behind
// rejects everyone else's writes the same way.
func TestSimClockSkew(t *testing.T) {
	t.Parallel()
	const seed = 71
	c := newTestCluster(t, 3, simRegions, withSeed(seed), withMaxSkew(time.Second), withAntiEntropy(200*time.Millisecond))
	w := newWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	ctx := context.Background()
	rejected := func(i int) int64 {
		c.nodes[i].mu.RLock()
		defer c.nodes[i].mu.RUnlock()
		return c.nodes[i].rejected.n.Load()
	}
	has := func(i int, a *account) bool {
		_, ok, _ := c.nodes[i].DB().Record(ctx, crdt.UserKey(a.id))
		return ok
	}

	c.SetOffset(2, 3*time.Second)
	ahead := mustRegister(t, w, 2, "ahead")
	waitFor(t, time.Minute, func() (bool, string) {
		return rejected(0) > 0 && rejected(1) > 0, fmt.Sprintf("rejections: n0 %d, n1 %d", rejected(0), rejected(1))
	})
	steady := mustRegister(t, w, 0, "steady")
	waitFor(t, time.Minute, func() (bool, string) {
		return has(1, steady) && has(2, steady), "n0's write did not reach n1 and n2"
	})
	c.waitSameRoot(t, 0, 1, time.Minute)
	if has(0, ahead) || has(1, ahead) {
		t.Errorf("a write from 3s in the future was applied with a 1s bound")
	}
	c.SetOffset(2, 0) // n2's HLC stays ahead until real time catches up with it
	c.checkConverged(t, time.Minute)

	before := rejected(0)
	c.SetOffset(0, -3*time.Second)
	behind := mustRegister(t, w, 1, "behind")
	waitFor(t, time.Minute, func() (bool, string) {
		return rejected(0) > before && has(2, behind), fmt.Sprintf("n0 rejected %d", rejected(0)-before)
	})
	if has(0, behind) {
		t.Errorf("n0, 3s behind, applied a write from its present + 3s")
	}
	c.SetOffset(0, 0)
	c.checkConverged(t, time.Minute)
	w.checkHandlers(t)
}

// TestSimPushOvertakenOwnWrite: a node's write that a newer remote write to another field
// of the same record overtakes before it was pushed still goes out with the next push,
// not a whole anti-entropy period later.
func TestSimPushOvertakenOwnWrite(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, []string{"eu"}, withAntiEntropy(time.Hour))
	w := newWorkload(c, rand.New(rand.NewPCG(81, 1)), 81)
	ctx := context.Background()
	a := mustRegister(t, w, 0, "alice")
	c.checkConverged(t, time.Minute)
	c.CutOneWay(0, 1)
	c.CutOneWay(0, 2)
	first, last := "Alice", "Liddell"
	_, err := c.nodes[0].API().users.UpdateProfile(ctx, a.id, functions.ProfilePatch{FirstName: &first})
	mustOK(t, "n0 writes first_name", err)
	_, err = c.nodes[1].API().users.UpdateProfile(ctx, a.id, functions.ProfilePatch{LastName: &last})
	mustOK(t, "n1 writes last_name", err)
	waitFor(t, time.Minute, func() (bool, string) {
		m, _, _ := c.nodes[0].DB().Record(ctx, crdt.UserKey(a.id))
		v, _ := m.Get(crdt.FieldLastName)
		return string(v) == last, "n1's write has not reached n0"
	})
	c.Heal()
	c.checkConverged(t, time.Minute) // anti-entropy is an hour away: pushes only
}

// TestSimPushLargeBacklog: a backlog of large records whose push batch would exceed
// MaxMessage goes out in smaller pushes instead of failing forever.
func TestSimPushLargeBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 38 MB through two replicas; TestPushBatches covers the bound")
	}
	t.Parallel()
	c := newTestCluster(t, 2, []string{"eu"}, withAntiEntropy(time.Hour))
	ctx := context.Background()
	for _, n := range c.nodes {
		<-n.Rep().CaughtUp() // the workers' first anti-entropy is done: what follows is pushed
	}
	c.Cut([]int{0})
	db := c.nodes[0].DB()
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
	c.waitSameRoot(t, 0, 1, time.Minute)
}

// TestPushBatches: pushes are bounded by count and by encoded size, cover every change
// once, in order, and a change larger than the bound goes alone.
func TestPushBatches(t *testing.T) {
	const maxBytes = MaxMessage / 4
	change := func(i, size int) storage.Change {
		var m crdt.Map
		m.Set("v", make([]byte, size), crdt.Timestamp{Wall: int64(i + 1), Node: 1})
		return storage.Change{Key: fmt.Sprintf("u/%d", i), Map: m}
	}
	var cs []storage.Change
	for i := range 40 {
		cs = append(cs, change(i, maxBytes/7))
	}
	cs = append(cs, change(40, maxBytes+1), change(41, 10))
	for i := range 30 {
		cs = append(cs, change(42+i, 10))
	}
	var got []string
	var sizes []int
	for batch := range pushBatches(cs, 16, maxBytes) {
		size := 0
		for _, c := range batch {
			got = append(got, c.Key)
			size += len(c.AppendBinary(nil))
		}
		sizes = append(sizes, len(batch))
		if len(batch) > 16 || (len(batch) > 1 && size > maxBytes) {
			t.Errorf("batch of %d changes, %d bytes; want ≤ 16 and ≤ %d", len(batch), size, maxBytes)
		}
	}
	var want []string
	for _, c := range cs {
		want = append(want, c.Key)
	}
	if !slices.Equal(got, want) {
		t.Errorf("batches cover %v, want %v", got, want)
	}
	t.Logf("batch lengths %v", sizes)
}

// TestSimSignOutEverywhereUnderSkew: a session created, in real time, before a sign out
// everywhere, on a node whose clock runs 30 s ahead (within --max-skew) and that the
// revoking node had not heard of, is revoked everywhere once the two meet; a session
// created after its node received the sign-out is not.
func TestSimSignOutEverywhereUnderSkew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newTestCluster(t, 2, []string{"eu"}, withMaxSkew(time.Minute))
	w := newWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
	c.SetOffset(1, 30*time.Second)
	alice := mustRegister(t, w, 0, "alice")
	c.checkConverged(t, time.Minute)
	onFast0 := mustLogin(t, w, 1, alice)
	c.checkConverged(t, time.Minute)

	c.Cut([]int{0}, []int{1})
	onFast := mustLogin(t, w, 1, alice) // n0 never hears of it before it signs out everywhere
	onSlow := mustLogin(t, w, 0, alice)
	mustOK(t, "sign out everywhere on n0", c.nodes[0].API().sessions.RevokeAll(ctx, principal(onSlow)))
	after := mustLogin(t, w, 0, alice) // n0 holds the sign-out: this one stays
	c.Heal()
	c.checkConverged(t, time.Minute)
	afterFast := mustLogin(t, w, 1, alice) // n1 received it now
	c.checkConverged(t, time.Minute)

	for _, n := range c.nodes {
		api := n.API()
		for _, s := range []*simSession{onFast0, onFast, onSlow} {
			if _, err := api.sessions.Authenticate(ctx, s.acc.id, s.id); functions.ErrorCode(err) != functions.EUnauthorized {
				t.Errorf("%s: Authenticate(session created on n%d before the sign-out) = %v, want unauthorized", n.name, s.node, err)
			}
		}
		for _, s := range []*simSession{after, afterFast} {
			if _, err := api.sessions.Authenticate(ctx, s.acc.id, s.id); err != nil {
				t.Errorf("%s: Authenticate(session created on n%d after receiving the sign-out) = %v, want ok", n.name, s.node, err)
			}
		}
	}
}
