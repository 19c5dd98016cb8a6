package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// strayCluster is four nodes of one region, each partition held by one of them, where
// n0 stores keys it holds none of: three users registered on n0 for each of n1, n2 and
// n3 (their holders), whose pushes have reached the holders. Anti-entropy and the
// periodic handoff round are an hour away, so only the rounds a test runs, or a
// placement change, move anything. It returns the keys n0 stores, with the node that
// holds each.
func strayCluster(t *testing.T, offerTimeout time.Duration, opts ...clustersim.Option) (*clustersim.Cluster, map[string]int) {
	t.Helper()
	c := newTestCluster(t, 4, []string{"eu"}, append([]clustersim.Option{clustersim.WithReplicas(1),
		clustersim.WithAntiEntropy(time.Hour), clustersim.WithOfferTimeout(offerTimeout)}, opts...)...)
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
	tab := c.Table()
	perHolder := map[int]int{}
	used := map[int]bool{} // partitions: one user each, so that each is offered apart
	for k := 0; perHolder[1] < 3 || perHolder[2] < 3 || perHolder[3] < 3; k++ {
		name := fmt.Sprintf("stray%d", k)
		p := crdt.NamePartition(name)
		h := c.OwnerIn(tab, "eu", p)
		if tab.Owns(c.Nodes[0].Peer().ID, p) || used[p] || perHolder[h] == 3 {
			continue
		}
		used[p] = true
		perHolder[h]++
		w.MustRegister(t, 0, name)
	}
	ctx := context.Background()
	stored, err := clustersim.State(ctx, c.Nodes[0].DB())
	if err != nil {
		t.Fatal(err)
	}
	holder := map[string]int{}
	for key := range stored {
		homes := crdt.KeyHomes(key)
		if _, two := homes.Second(); two {
			t.Fatalf("key %s has two homes: registrations should write one-home keys", key)
		}
		holder[key] = c.OwnerIn(tab, "eu", homes.First())
		if holder[key] == 0 {
			t.Fatalf("n0 holds %s", key)
		}
	}
	// The holders have n0's writes (pushed), so that an offer confirms them at once.
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		for key, enc := range stored {
			h := c.Nodes[holder[key]]
			got, err := clustersim.State(ctx, h.DB())
			if err != nil {
				return false, err.Error()
			}
			if string(got[key]) != string(enc) {
				return false, fmt.Sprintf("%s lacks n0's %s", h.Name, key)
			}
		}
		return true, ""
	})
	return c, holder
}

// TestSimHandoffStalledPeer: a holder that never answers an offer, or answers only long
// after the offer's timeout, costs a handoff round one bounded call: the round goes on
// with the other holders, drops what they confirmed, keeps every key the stalled holder
// has not confirmed (no key is held by nobody), and reports those truthfully while it
// waits. Once the holder answers again, the rest settles. A holder that is slow but
// answers within the timeout holds nothing up.
func TestSimHandoffStalledPeer(t *testing.T) {
	for _, tc := range []struct {
		name         string
		stall        time.Duration // of every leaves request to n3; negative: it never answers
		offerTimeout time.Duration
		stuck        bool // n3's keys wait: the stall outlasts the offer's timeout
	}{
		{"NeverAnswers", -1, 100 * time.Millisecond, true},
		{"AnswersTooSlowly", time.Minute, 100 * time.Millisecond, true},
		{"SlowWithinTimeout", 20 * time.Millisecond, 10 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, holder := strayCluster(t, tc.offerTimeout)
			n0 := c.Nodes[0]
			var stalled atomic.Int64
			c.Net.SetStall(func(from, to, kind string) time.Duration {
				if from == "n0" && to == "n3" && kind == "leaves" {
					stalled.Add(1)
					return tc.stall
				}
				return 0
			})
			before := c.Net.LinkStats("n0", "n3").Calls["leaves"]
			base := n0.Rep().Handoff().Dropped
			// The test's own bound only turns a round held up for good into a failure
			// rather than a hang.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := n0.Rep().HandoffRound(ctx)
			if ctx.Err() != nil {
				t.Fatalf("the handoff round was held up by n3 until the test gave up: %v", err)
			}
			if calls := c.Net.LinkStats("n0", "n3").Calls["leaves"] - before; calls != 1 && tc.stuck {
				t.Errorf("the round offered n3 %d times; want once: a holder that timed out is offered nothing more that round", calls)
			}
			stored, serr := clustersim.State(context.Background(), n0.DB())
			if serr != nil {
				t.Fatal(serr)
			}
			want := cluster.HandoffStatus{Dropped: base}
			parts := map[int]bool{} // of the keys n0 keeps
			for key, h := range holder {
				_, kept := stored[key]
				switch {
				case h == 3 && tc.stuck:
					if !kept {
						t.Errorf("n0 dropped %s, which n3 never confirmed", key)
					}
					want.Keys++
					parts[crdt.KeyHomes(key).First()] = true
				case kept:
					t.Errorf("n0 still stores %s, which n%d confirmed", key, h)
				default:
					want.Dropped++
				}
			}
			want.Partitions = len(parts)
			if tc.stuck {
				if err == nil || !strings.Contains(err.Error(), "n3") {
					t.Errorf("HandoffRound = %v, want an error naming n3", err)
				}
				if stalled.Load() == 0 {
					t.Errorf("no offer to n3 was stalled")
				}
			} else if err != nil {
				t.Errorf("HandoffRound = %v, want nil: n3 answers within the timeout", err)
			}
			if got := n0.Rep().Handoff(); got != want {
				t.Errorf("Handoff() = %+v, want %+v", got, want)
			}

			// n3 answers again: the next round settles the rest.
			c.Net.SetStall(nil)
			if err := n0.Rep().HandoffRound(context.Background()); err != nil {
				t.Fatalf("HandoffRound with every holder answering: %v", err)
			}
			if got, want := n0.Rep().Handoff(), (cluster.HandoffStatus{Dropped: base + len(holder)}); got != want {
				t.Errorf("Handoff() once n3 answers = %+v, want %+v", got, want)
			}
			c.CheckPlaced(t, 10*time.Second, true)
		})
	}
}

// TestSimHandoffRetriedSoon: a handoff round that failed (a holder timed out) is tried
// again soon, not at the next periodic round (an hour away here): the keys of the holder
// that timed out once are dropped shortly after it answers.
func TestSimHandoffRetriedSoon(t *testing.T) {
	c, holder := strayCluster(t, 100*time.Millisecond)
	n0 := c.Nodes[0]
	var stalled atomic.Int64
	c.Net.SetStall(func(from, to, kind string) time.Duration {
		if from == "n0" && to == "n3" && kind == "leaves" && stalled.Add(1) == 1 {
			return -1 // the first offer to n3 is never answered; the next ones are
		}
		return 0
	})
	c.AddNode("us") // a placement change (in another region) wakes n0's handoff loop
	clustersim.WaitFor(t, 20*time.Second, func() (bool, string) {
		got := n0.Rep().Handoff()
		return got.Keys == 0 && got.Partitions == 0 && got.Dropped >= len(holder) && stalled.Load() > 1,
			fmt.Sprintf("n0's handoff %+v, offers to n3 %d; want every one of %d keys dropped after a retry", got, stalled.Load(), len(holder))
	})
	c.CheckPlaced(t, 10*time.Second, true)
}

// TestSimHandoffLostOffer: a request of an offer that fails at once (here the first one
// of the round is refused) costs only the keys it carried: the same holder still gets the
// offer's next requests in that round (a message bound small enough that each carries
// one partition), and confirms them, so that over a lossy network a holder that loses a
// message now and then does not hold back everything after it.
func TestSimHandoffLostOffer(t *testing.T) {
	c, holder := strayCluster(t, 10*time.Second, clustersim.WithMaxMessage(1024))
	n0 := c.Nodes[0]
	var calls atomic.Int64
	refused := make(chan int, 1) // the partition of the refused offer
	c.Net.SetRefuse(func(kind string, req []byte) error {
		if kind != "leaves" || calls.Add(1) != 1 {
			return nil
		}
		var lr cluster.LeavesRequest
		if err := lr.UnmarshalBinary(req); err != nil || len(lr.Leaves) != 1 {
			t.Errorf("the first leaves request of the round: %v, %d leaves; want an offer of one leaf", err, len(lr.Leaves))
			return errors.New("refused by the test")
		}
		refused <- lr.Leaves[0].Leaf
		return errors.New("refused by the test")
	})
	base := n0.Rep().Handoff().Dropped
	if err := n0.Rep().HandoffRound(context.Background()); err == nil {
		t.Fatalf("HandoffRound = nil, want the refused offer's error")
	}
	var p int
	select {
	case p = <-refused:
	default:
		t.Fatalf("no offer was refused")
	}
	stored, err := clustersim.State(context.Background(), n0.DB())
	if err != nil {
		t.Fatal(err)
	}
	want := cluster.HandoffStatus{Dropped: base}
	for key := range holder {
		_, kept := stored[key]
		switch home := crdt.KeyHomes(key).First(); {
		case home == p:
			if !kept {
				t.Errorf("n0 dropped %s, whose offer was refused", key)
			}
			want.Keys, want.Partitions = want.Keys+1, 1
		case kept:
			t.Errorf("n0 still stores %s (partition %d), which its holder n%d confirmed after the refused offer of partition %d", key, home, holder[key], p)
		default:
			want.Dropped++
		}
	}
	if got := n0.Rep().Handoff(); got != want {
		t.Errorf("Handoff() = %+v, want %+v", got, want)
	}
	c.Net.SetRefuse(nil)
	if err := n0.Rep().HandoffRound(context.Background()); err != nil {
		t.Fatalf("HandoffRound with nothing refused: %v", err)
	}
	c.CheckPlaced(t, 10*time.Second, true)
}
