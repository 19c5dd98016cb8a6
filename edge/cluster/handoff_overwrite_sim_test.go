package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// TestSimHandoffOverwrittenOwnWrite: a stray key that carried a write of this node's own
// waits for the holders of every region even once another node's write has replaced it.
// x writes a user's first name on a record it does not hold (e, the holder in eu, is cut
// off), u (the holder in us) writes it again, and x merges u's state: the record no
// longer shows x's write. Were x to judge it by that state, it would drop the key once u
// confirmed it; and once x reaches e again, its pushes' Through would make e vouch for
// x's write while e, still cut off from u, shows the name from before both (a
// read-your-writes violation). Whether x's handoff saw the key before the overwrite (it
// remembers the key as its own) or only after (storage remembers the overtaken write), x
// keeps it until e holds it, and remembers it across a restart (storage keeps the
// replaced write in the file). The same holds when u erases the user instead: the erased
// record u replicates carries none of the profile, so merging it on x prunes x's write
// without a later write to the field (found by an outside review).
func TestSimHandoffOverwrittenOwnWrite(t *testing.T) {
	for _, tc := range []struct {
		name        string
		roundBefore bool // a handoff round on x sees the key before u overwrites it
		restart     bool // x restarts once it has merged u's write
		erase       bool // u erases the user rather than writing the first name
	}{
		{"SeenBefore", true, false, false},
		{"OnlyAfter", false, false, false},
		{"SeenBeforeRestarted", true, true, false},
		{"OnlyAfterRestarted", false, true, false},
		{"Erased", false, false, true},
		{"ErasedSeenBeforeRestarted", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// n0 (x) and n2 (u) in us, n1 (e) in eu; one holder per partition and region.
			c := newTestCluster(t, 3, []string{"us", "eu"}, clustersim.WithReplicas(1),
				clustersim.WithAntiEntropy(time.Hour))
			x, e, u := c.Nodes[0], c.Nodes[1], c.Nodes[2]
			ctx := context.Background()
			tab := c.Table()

			// A user registered on u, whose record u holds in us; e gets it too.
			w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(7, 8)), 1)
			a := w.MustRegisterWhere(t, 2, "over", 200, func(a *clustersim.Account) bool {
				return c.OwnerIn(tab, "us", crdt.KeyHomes(crdt.UserKey(a.ID)).First()) == 2
			})
			key := crdt.UserKey(a.ID)
			p := crdt.KeyHomes(key).First()
			have := func(n *clustersim.Node) crdt.Map {
				got, _ := n.DB().Changes(ctx, []string{key})
				if len(got) != 1 {
					return crdt.Map{}
				}
				return got[0].Map
			}
			clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
				m := have(e)
				return m.Len() > 0, "e lacks " + key
			})
			onE := have(e)
			registered := onE.Version()

			// e is cut off from both. x, which does not hold the record, has a copy and
			// writes the first name: its pushes reach u, not e.
			for _, pair := range [][2]int{{0, 1}, {1, 0}, {2, 1}, {1, 2}} {
				c.CutOneWay(pair[0], pair[1])
			}
			if _, err := x.DB().ApplyRemote(ctx, mustChanges(t, u, key)); err != nil {
				t.Fatal(err)
			}
			first := "by-x"
			if _, err := x.API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{FirstName: &first}); err != nil {
				t.Fatal(err)
			}
			mine := have(x)
			var b crdt.Bookmark // the client's bookmark: x's write
			b.Add(mine.Version())
			clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
				m := have(u)
				return !m.Version().Less(mine.Version()), "u lacks x's write"
			})
			if tc.roundBefore {
				if err := x.Rep().HandoffRound(ctx); err != nil {
					t.Logf("HandoffRound while e is cut off: %v", err)
				}
			}

			// u writes the first name again, and x merges it (by handoff, or by an
			// anti-entropy round with u before any handoff round): the record no longer
			// shows x's write. u confirms it; e cannot.
			if tc.erase {
				mustOK(t, "erase", u.API().Users.Delete(ctx, a.ID))
			} else {
				again := "by-u"
				if _, err := u.API().Users.UpdateProfile(ctx, a.ID, functions.ProfilePatch{FirstName: &again}); err != nil {
					t.Fatal(err)
				}
			}
			clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
				if tc.roundBefore {
					if err := x.Rep().HandoffRound(ctx); err != nil {
						t.Logf("HandoffRound while e is cut off: %v", err)
					}
				} else if err := x.Rep().SyncWith(ctx, u.Peer()); err != nil { // no handoff round yet
					t.Logf("SyncWith(u): %v", err)
				}
				m := have(x)
				if _, erased := m.Flag(crdt.FieldDeleted); tc.erase && !erased {
					return false, "x has not merged u's erasure"
				}
				return m.Len() == 0 || m.Version().Node == u.DB().NodeID(), "x has not merged u's write"
			})
			if tc.restart {
				c.Kill(0)
				c.Restart(0)
			}
			for range 3 {
				if err := x.Rep().HandoffRound(ctx); err != nil {
					t.Logf("HandoffRound while e is cut off: %v", err)
				}
			}
			if m := have(x); m.Len() == 0 {
				t.Errorf("x dropped %s (partition %#x), which carried its write before u's replaced it, while e, its holder in eu, was cut off", key, p)
			}

			// x reaches e again (u still cannot): once e vouches for the bookmark in p, it
			// must hold x's write or what replaced it.
			c.Heal()
			c.CutOneWay(2, 1)
			c.CutOneWay(1, 2)
			// x goes on writing, as a live node does: each write's push tells e a Through.
			tick := 0
			clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
				if e.Rep().Covers(b, p) {
					return true, ""
				}
				tick++
				if _, err := w.RegisterOn(0, fmt.Sprintf("tick%d", tick)); err != nil {
					t.Logf("register on x: %v", err)
				}
				return false, fmt.Sprintf("e does not vouch for %v in %#x", b, p)
			})
			if m := have(e); m.Version().Less(mine.Version()) {
				got := m.Version()
				t.Fatalf("e vouches for %v in partition %#x but holds %s as of %v (registered %v): neither x's write nor u's", b, p, key, got, registered)
			}
		})
	}
}

// mustChanges returns n's stored changes of keys.
func mustChanges(t *testing.T, n *clustersim.Node, keys ...string) []storage.Change {
	t.Helper()
	got, err := n.DB().Changes(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	return got
}
