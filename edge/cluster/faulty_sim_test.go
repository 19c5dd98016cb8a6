package cluster_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// TestSimFaultyPeer: a faulty peer (clustersim.Faulty) that holds the key sends random,
// truncated, out-of-range, oversized and replayed messages to every node and answers
// their calls with such bytes, while a workload runs and the network drops, duplicates
// and replays. No honest node crashes (a panic in any goroutine fails the test binary),
// none stops replicating: the honest nodes converge on exactly what was acknowledged
// while the faulty peer is still at it, and show it through their handlers. Every
// honest node counted the faulty peer's invalid messages and replies, and backed it off.
func TestSimFaultyPeer(t *testing.T) {
	t.Parallel()
	for _, seed := range []int64{71, 72} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			faults := clustersim.Faults{Drop: 0.05, DropReply: 0.05, Dup: 0.1, Delay: 0.2, Replay: 0.2}
			c := newTestCluster(t, 3, simRegions[:2], clustersim.WithSeed(seed), clustersim.WithFaults(faults),
				clustersim.WithMaxMessage(256<<10))
			w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(uint64(seed), 1)), seed)
			w.Steps(10, 2*time.Millisecond)
			f := c.AddFaulty("faulty", seed)
			f.Start(time.Millisecond)
			for range 6 {
				w.Steps(20, 3*time.Millisecond)
				c.Notices()
			}
			c.CheckConverged(t, time.Minute) // while the faulty peer is still sending
			w.CheckHandlers(t)
			f.Stop()
			st := f.Stats()
			c.Logf("faulty peer: %+v; %s", st, w.Summary())
			if st.Sent == 0 || st.Refused == 0 || st.Answered == 0 {
				t.Errorf("faulty peer stats %+v: want messages sent, refused, and calls answered", st)
			}
			for _, n := range c.Nodes {
				m := n.Metrics()
				total := 0.0
				for _, kind := range []string{"push", "digest", "leaves", "counters", "push_reply", "digest_reply", "leaves_reply"} {
					total += testutil.ToFloat64(m.InvalidMessages.WithLabelValues(kind))
				}
				if total == 0 {
					t.Errorf("%s counted no invalid message", n.Name)
				}
				g := n.Rep().Guard()
				if g.Count("faulty") == 0 {
					t.Errorf("%s counted nothing against the faulty peer", n.Name)
				}
				for _, o := range c.Nodes {
					if k := g.Count(o.Name); k > 0 {
						t.Errorf("%s counted %d invalid messages against honest %s", n.Name, k, o.Name)
					}
				}
			}
		})
	}
}
