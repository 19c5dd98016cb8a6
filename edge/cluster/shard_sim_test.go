package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
	"github.com/sessiond/sessiond/functions"
)

// table returns the placement of the live nodes, as every node computes it once
// membership has settled.
func (c *testCluster) table() *placement.Table {
	var ms []placement.Member
	for _, i := range c.alive() {
		p := c.nodes[i].Peer()
		ms = append(ms, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
	}
	return placement.New(ms, c.cfg.replicas)
}

// holders returns the live nodes that hold a home of key.
func holders(t *placement.Table, c *testCluster, key string) []int {
	var out []int
	for _, i := range c.alive() {
		if t.OwnsAny(c.nodes[i].Peer().ID, crdt.KeyHomes(key).Append(nil)) {
			out = append(out, i)
		}
	}
	return out
}

// checkPlaced waits until every acknowledged write is on every live node that holds one
// of its key's homes, in every region, with the winning state, and then reports what
// each node stores: what it holds, and keys it keeps without holding them (extra: a
// write it accepted or received for others). It returns the extra keys per node.
func (c *testCluster) checkPlaced(t testing.TB, within time.Duration) map[int]int {
	t.Helper()
	ctx := context.Background()
	tab := c.table()
	start := time.Now()
	var extra map[int]int
	waitFor(t, within, func() (bool, string) {
		want := c.model.expected(c.nodes[0].Now())
		extra = map[int]int{}
		for _, i := range c.alive() {
			n := c.nodes[i]
			got, err := state(ctx, n.DB())
			if err != nil {
				return false, fmt.Sprintf("%s: %v", n.name, err)
			}
			id := n.Peer().ID
			for key, enc := range want {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					continue
				}
				if g, ok := got[key]; !ok || string(g) != string(enc) {
					return false, fmt.Sprintf("%s holds %s but has %s, want %s", n.name, key, describeOr(g, ok), describe(enc))
				}
			}
			for key := range got {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					extra[i]++
				}
			}
		}
		return true, ""
	})
	want := c.model.expected(c.nodes[0].Now())
	var lines []string
	for _, i := range c.alive() {
		n := c.nodes[i]
		st, _ := state(ctx, n.DB())
		lines = append(lines, fmt.Sprintf("%s/%s: %d keys (%d of them not its own), share %d of %d partitions (ideal %.0f)",
			n.name, n.region, len(st), extra[i], tab.Share(n.Peer().ID), crdt.Partitions, tab.Ideal(n.region)))
	}
	c.logf("placed in %s: %d keys acknowledged\n  %s", time.Since(start).Round(time.Millisecond), len(want), strings.Join(lines, "\n  "))
	return extra
}

func describeOr(enc []byte, ok bool) string {
	if !ok {
		return "nothing"
	}
	return describe(enc)
}

// ownerIn returns a live node of region that holds partition p.
func ownerIn(tab *placement.Table, c *testCluster, region string, p int) int {
	for _, m := range tab.Owners(region, p) {
		for _, i := range c.alive() {
			if c.nodes[i].Peer().ID == m.ID {
				return i
			}
		}
	}
	return -1
}

// TestSimShardedPlacement: two regions of three nodes, each partition on two nodes per
// region. Users register, sign in, edit their sessions and message each other on nodes
// that hold their records; every write ends up on exactly the nodes that hold its key's
// homes, in both regions, and nowhere else.
func TestSimShardedPlacement(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	c := newTestCluster(t, 6, []string{"eu", "us"}, withReplicas(2), withSeed(seed))
	w := newWorkload(c, rng, seed)
	tab := c.table()
	ctx := context.Background()

	var sessions []*simSession
	for k := range 30 {
		name := fmt.Sprintf("user%d", k)
		region := []string{"eu", "us"}[k%2]
		i := ownerIn(tab, c, region, crdt.NamePartition(name))
		a := mustRegister(t, w, i, name)
		s := mustLogin(t, w, i, a)
		_, err := c.nodes[i].API().sessions.PatchData(ctx, principal(s), functions.DataPatch{
			Set: map[string]json.RawMessage{"cart": json.RawMessage(fmt.Sprintf(`"%d items"`, k))}})
		mustOK(t, "patch", err)
		sessions = append(sessions, s)
	}
	// Messages between users placed apart: sent on a node that holds both (the sender's
	// node looks the recipient's name up locally).
	sent := 0
	for _, s := range sessions {
		to := sessions[rng.IntN(len(sessions))].acc
		homes := []int{crdt.IDPartition(s.acc.id), crdt.NamePartition(to.username)}
		for _, i := range c.alive() {
			if tab.Owns(c.nodes[i].Peer().ID, homes[0]) && tab.Owns(c.nodes[i].Peer().ID, homes[1]) {
				w.sendOn(i, s, to)
				sent++
				break
			}
		}
	}
	t.Logf("%d messages sent", sent)
	if sent == 0 {
		t.Fatalf("no node holds both partitions of any pair: placement is not spreading")
	}
	extra := c.checkPlaced(t, 30*time.Second)
	for i, n := range extra {
		if n > 0 {
			t.Errorf("%s keeps %d keys it does not hold: every write was made on a holder", c.nodes[i].name, n)
		}
	}
	// Every node stores a part, not everything.
	want := c.model.expected(c.nodes[0].Now())
	for _, i := range c.alive() {
		st, _ := state(ctx, c.nodes[i].DB())
		if len(st) >= len(want) {
			t.Errorf("%s stores %d keys of %d: it should hold about two thirds", c.nodes[i].name, len(st), len(want))
		}
	}
	if d := slices.Sorted(func(yield func(string) bool) {
		for _, f := range w.failed {
			if !yield(fmt.Sprint(f)) {
				return
			}
		}
	}); len(d) > 0 {
		t.Errorf("workload failures: %v", w.failed)
	}
}
