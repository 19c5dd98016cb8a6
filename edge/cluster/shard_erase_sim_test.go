package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/edge/cluster/placement"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// TestSimShardedErase: two regions of three nodes, each partition on two nodes per
// region, so some nodes hold a conversation only through the other participant's
// partition and never see the erased user's record. A user with conversations across
// partitions is erased in one region while, cut off from it, the other region carries on
// an old conversation with them and starts a new one. After the heal no node holds a
// message of any conversation with the erased user: the erasure markers — the ones the
// erasure wrote, and those the nodes that dropped or deleted later messages left — reach
// every holder of either participant's partition, and those holders end with the same
// markers.
func TestSimShardedErase(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 13))
	c := newTestCluster(t, 6, []string{"eu", "us"}, clustersim.WithReplicas(2), clustersim.WithSeed(seed))
	w := clustersim.NewWorkload(c, rng, seed)
	w.Verbose = true
	tab := c.Table()
	ctx := context.Background()

	// The victim, registered in eu on a holder of its partition.
	victim := w.MustRegister(t, c.OwnerIn(tab, "eu", crdt.NamePartition("victim")), "victim")
	vp := crdt.IDPartition(victim.ID)
	vs := w.MustLogin(t, c.OwnerIn(tab, "eu", vp), victim)
	// Partners placed so that some node holds their partition and not the victim's: it
	// holds their conversation with the victim only through them.
	var partners []*clustersim.Session
	for k := 0; len(partners) < 4 && k < 200; k++ {
		name := fmt.Sprintf("partner%d", k)
		p := crdt.NamePartition(name)
		if p == vp || len(onlyThrough(tab, c, p, vp)) == 0 {
			continue
		}
		a := w.MustRegister(t, c.OwnerIn(tab, "eu", p), name)
		partners = append(partners, w.MustLogin(t, c.OwnerIn(tab, "eu", p), a))
	}
	if len(partners) < 4 {
		t.Fatalf("found %d partners placed apart from the victim, want 4: placement is not spreading", len(partners))
	}
	// Conversations with the victim, both ways, sent on nodes that hold both sides.
	for _, s := range partners[:3] {
		sendAtHolder(t, c, w, tab, "eu", s, victim)
		sendAtHolder(t, c, w, tab, "us", vs, s.Account)
	}
	sendAtHolder(t, c, w, tab, "eu", partners[0], partners[1].Account) // not the victim's
	c.CheckPlaced(t, 30*time.Second, true)

	// The regions are cut apart. In eu the victim erases the account; in us, which does
	// not know, partner 0 writes again and partner 3 starts a conversation.
	c.PartitionRegions(false, []string{"eu"})
	i := c.OwnerIn(tab, "eu", vp)
	mustOK(t, "erase the victim", c.Nodes[i].API().Users.Delete(ctx, victim.ID))
	victim.Erased = true
	sendAtHolder(t, c, w, tab, "us", partners[0], victim)
	sendAtHolder(t, c, w, tab, "us", partners[3], victim)
	c.Heal()

	c.CheckPlaced(t, 30*time.Second, true)
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) { return erasedEverywhere(ctx, c, tab, victim.ID) })
	var convs, markers, derived, partnerOnly int
	want := c.Model.Expected(c.Nodes[0].Now())
	for _, conv := range c.Model.Convs() {
		if a, b, _ := crdt.Participants(conv); a != victim.ID && b != victim.ID {
			continue
		}
		convs++
		ms, _ := markersHeld(ctx, c.Nodes[convHolders(tab, c, conv)[0]].DB(), conv)
		for _, key := range ms {
			if _, acked := want[key]; !acked {
				derived++
			}
		}
		markers += len(ms)
		partnerOnly += len(onlyThrough(tab, c, crdt.IDPartition(otherUser(conv, victim.ID)), vp))
	}
	t.Logf("%d erasure markers (%d of them left by nodes that deleted or dropped messages) in the victim's %d conversations; %d (node, conversation) pairs held only through the partner",
		markers, derived, convs, partnerOnly)
	if partnerOnly == 0 {
		t.Errorf("no node holds a conversation with the victim only through the partner")
	}

	// What users see: the partners list no conversation with the victim, on any node.
	for _, n := range c.AliveNodes() {
		for _, s := range partners {
			page, err := n.API().Messages.Conversations(ctx, s.Principal(), "", functions.MaxPageLimit)
			if err != nil {
				t.Fatalf("%s: Conversations(%s): %v", n.Name, s.Account.Username, err)
			}
			for _, cv := range page.Conversations {
				if cv.With == victim.Username {
					t.Errorf("%s: %s still lists a conversation with the erased victim", n.Name, s.Account.Username)
				}
			}
		}
	}
	if len(w.Failed) > 0 {
		t.Errorf("workload failures: %v", w.Failed)
	}
}

// onlyThrough returns the live nodes that hold partition p and not partition q.
func onlyThrough(tab *placement.Table, c *clustersim.Cluster, p, q int) []int {
	var out []int
	for _, i := range c.Alive() {
		id := c.Nodes[i].Peer().ID
		if tab.Owns(id, p) && !tab.Owns(id, q) {
			out = append(out, i)
		}
	}
	return out
}

// sendAtHolder sends a message from s to to on a node of region that holds both sides,
// and fails the test if there is none or the send fails.
func sendAtHolder(t *testing.T, c *clustersim.Cluster, w *clustersim.Workload, tab *placement.Table, region string, s *clustersim.Session, to *clustersim.Account) {
	t.Helper()
	for _, i := range c.Alive() {
		id := c.Nodes[i].Peer().ID
		if c.Nodes[i].Region == region && tab.Owns(id, crdt.IDPartition(s.Account.ID)) && tab.Owns(id, crdt.NamePartition(to.Username)) {
			failed := w.Failed["send"]
			w.SendOn(i, s, to)
			if w.Failed["send"] != failed {
				t.Fatalf("send %s → %s on %s failed", s.Account.Username, to.Username, c.Nodes[i].Name)
			}
			return
		}
	}
	t.Fatalf("no node of %s holds both %s and %s", region, s.Account.Username, to.Username)
}

// convHolders returns the live nodes that hold a home of conv.
func convHolders(tab *placement.Table, c *clustersim.Cluster, conv string) []int {
	var out []int
	for _, i := range c.Alive() {
		if tab.OwnsAny(c.Nodes[i].Peer().ID, crdt.ConversationHomes(conv).Append(nil)) {
			out = append(out, i)
		}
	}
	return out
}

// markersHeld returns the keys of the erasure markers of conv that db stores, sorted, and
// how many other entries of conv it stores.
func markersHeld(ctx context.Context, db *storage.DB, conv string) ([]string, int) {
	changes, _, _ := db.ChangesSince(ctx, 0, 0)
	var markers []string
	others := 0
	for _, ch := range changes {
		if ch.Conv != conv {
			continue
		}
		if crdt.IsErasureMarker(ch.Entry.Data) {
			markers = append(markers, ch.Key)
		} else {
			others++
		}
	}
	slices.Sort(markers)
	return markers, others
}

// erasedEverywhere reports whether no live node stores a message of a conversation with
// user, and every live node that holds a home of such a conversation stores the same
// erasure markers of it, at least one.
func erasedEverywhere(ctx context.Context, c *clustersim.Cluster, tab *placement.Table, user string) (bool, string) {
	convs := map[string]bool{}
	for _, n := range c.AliveNodes() {
		changes, _, err := n.DB().ChangesSince(ctx, 0, 0)
		if err != nil {
			return false, err.Error()
		}
		for _, ch := range changes {
			if a, b, _ := crdt.Participants(ch.Conv); ch.Conv != "" && (a == user || b == user) {
				convs[ch.Conv] = true
			}
		}
	}
	for conv := range convs {
		var first []string
		for k, i := range convHolders(tab, c, conv) {
			n := c.Nodes[i]
			markers, others := markersHeld(ctx, n.DB(), conv)
			switch {
			case others > 0:
				return false, fmt.Sprintf("%s still stores %d messages of %s with the erased user", n.Name, others, conv)
			case len(markers) == 0:
				return false, fmt.Sprintf("%s holds %s and stores no erasure marker of it", n.Name, conv)
			case k == 0:
				first = markers
			case !slices.Equal(markers, first):
				return false, fmt.Sprintf("holders of %s store different markers: %d and %d", conv, len(first), len(markers))
			}
		}
		for _, n := range c.AliveNodes() {
			if cs, _ := n.DB().Conversations(ctx, otherUser(conv, user)); slices.ContainsFunc(cs, func(x storage.Conversation) bool { return x.ID == conv }) {
				return false, fmt.Sprintf("%s lists %s", n.Name, conv)
			}
		}
	}
	return true, ""
}

func otherUser(conv, user string) string {
	a, b, _ := crdt.Participants(conv)
	if a == user {
		return b
	}
	return a
}
