package clustersim

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/placement"
)

// Table returns the placement of the live nodes that are not joining, as every node
// computes it once membership has settled.
func (c *Cluster) Table() *placement.Table {
	var ms []placement.Member
	for _, i := range c.Alive() {
		if p := c.Nodes[i].Peer(); !p.Joining {
			ms = append(ms, placement.Member{Name: p.Name, ID: p.ID, Region: p.Region})
		}
	}
	return placement.New(ms, c.cfg.replicas)
}

// CheckPlaced waits until every acknowledged write is on every live node that holds one
// of its key's homes, in every region, with the winning state — and, when settled, until
// no node stores a key it does not hold (handoff done) — then reports what each node
// stores: what it holds, and keys it keeps without holding them (extra: a write it
// accepted or received for others). It returns the extra keys per node index. It fails
// t with what is still missing or extra after within.
func (c *Cluster) CheckPlaced(t testing.TB, within time.Duration, settled bool) map[int]int {
	t.Helper()
	ctx := context.Background()
	tab := c.Table()
	start := time.Now()
	var extra map[int]int
	WaitFor(t, within, func() (bool, string) {
		want := c.Model.Expected(c.Nodes[0].Now())
		extra = map[int]int{}
		for _, i := range c.Alive() {
			n := c.Nodes[i]
			got, err := State(ctx, n.DB())
			if err != nil {
				return false, fmt.Sprintf("%s: %v", n.Name, err)
			}
			id := n.Peer().ID
			for key, enc := range want {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					continue
				}
				if g, ok := got[key]; !ok || string(g) != string(enc) {
					return false, fmt.Sprintf("%s holds %s but has %s, want %s", n.Name, key, Describe(g), Describe(enc))
				}
			}
			for key := range got {
				if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
					extra[i]++
				}
			}
			if settled && extra[i] > 0 {
				return false, fmt.Sprintf("%s still stores %d keys it does not hold", n.Name, extra[i])
			}
		}
		return true, ""
	})
	want := c.Model.Expected(c.Nodes[0].Now())
	var lines []string
	for _, i := range c.Alive() {
		n := c.Nodes[i]
		st, _ := State(ctx, n.DB())
		lines = append(lines, fmt.Sprintf("%s/%s: %d keys (%d of them not its own), share %d of %d partitions (ideal %.0f)",
			n.Name, n.Region, len(st), extra[i], tab.Share(n.Peer().ID), crdt.Partitions, tab.Ideal(n.Region)))
	}
	c.Logf("placed in %s: %d keys acknowledged\n  %s", time.Since(start).Round(time.Millisecond), len(want), strings.Join(lines, "\n  "))
	return extra
}

// OwnerIn returns the index of a live node of region that holds partition p by tab, or
// -1 if there is none.
func (c *Cluster) OwnerIn(tab *placement.Table, region string, p int) int {
	for _, m := range tab.Owners(region, p) {
		for _, i := range c.Alive() {
			if c.Nodes[i].Peer().ID == m.ID {
				return i
			}
		}
	}
	return -1
}

// Misplaced counts the (live node, key) pairs that are not as they will be once
// movement settles: a key a node stores without holding it, a key it holds of the
// acknowledged writes that it lacks or has in another state. It describes the first one.
// It is CheckPlaced's condition, for a test that waits in its own way.
func (c *Cluster) Misplaced() (int, string) {
	ctx := context.Background()
	tab := c.Table()
	want := c.Model.Expected(c.Nodes[0].Now())
	n, first := 0, ""
	note := func(format string, args ...any) {
		if n++; n == 1 {
			first = fmt.Sprintf(format, args...)
		}
	}
	for _, i := range c.Alive() {
		nd := c.Nodes[i]
		got, err := State(ctx, nd.DB())
		if err != nil {
			note("%s: %v", nd.Name, err)
			continue
		}
		id := nd.Peer().ID
		for key := range got {
			if !tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) {
				note("%s stores %s, which it does not hold", nd.Name, key)
			}
		}
		for key, enc := range want {
			if tab.OwnsAny(id, crdt.KeyHomes(key).Append(nil)) && !bytes.Equal(got[key], enc) {
				note("%s holds %s but has %s, want %s", nd.Name, key, Describe(got[key]), Describe(enc))
			}
		}
	}
	return n, first
}

// CheckNothingExtra asserts that every key every live node stores is one the
// acknowledged writes explain. Where CheckPlaced has checked the states of the keys each node holds and that
// it stores nothing else; what is left is a key no write made, or one that should be
// gone (an expired session), come back. It supposes a workload without erasures (whose
// markers storage may add) and that every node stores only what it holds.
func (c *Cluster) CheckNothingExtra(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	want := c.Model.Expected(c.Nodes[0].Now())
	for _, i := range c.Alive() {
		n := c.Nodes[i]
		got, err := State(ctx, n.DB())
		if err != nil {
			t.Fatalf("%s: read state: %v", n.Name, err)
		}
		var extra []string
		for key, enc := range got {
			if _, ok := want[key]; !ok {
				extra = append(extra, fmt.Sprintf("%s = %s", key, Describe(enc)))
			}
		}
		slices.Sort(extra)
		if len(extra) > 0 {
			t.Errorf("%s stores %d keys no acknowledged write explains: %s", n.Name, len(extra), strings.Join(extra[:min(len(extra), 5)], "; "))
		}
	}
}

// CheckLogs asserts that every live node holding a home of a conversation has its whole
// log — every acknowledged message, nothing else, in log order — and that every
// conversation has at least minHolders such nodes. It returns how many conversations
// and (node, conversation) holders it checked.
func (c *Cluster) CheckLogs(t testing.TB, minHolders int) (convs, checked int) {
	t.Helper()
	ctx := context.Background()
	tab := c.Table()
	all := c.Model.Convs()
	for _, conv := range all {
		want := c.Model.Log(conv)
		homes := crdt.ConversationHomes(conv).Append(nil)
		holders := 0
		for _, i := range c.Alive() {
			n := c.Nodes[i]
			if !tab.OwnsAny(n.Peer().ID, homes) {
				continue
			}
			holders++
			got, _, err := n.DB().ReadLog(ctx, conv, nil, 0)
			if err != nil {
				t.Fatalf("%s: ReadLog(%s): %v", n.Name, conv, err)
			}
			if !sameEntries(got, want) {
				t.Errorf("%s holds conversation %.16s (partitions %v) with %d entries, want the %d acknowledged", n.Name, conv, homes, len(got), len(want))
			}
			checked++
		}
		if holders < minHolders {
			t.Errorf("conversation %.16s (partitions %v) has %d holders, want at least %d", conv, homes, holders, minHolders)
		}
	}
	return len(all), checked
}
