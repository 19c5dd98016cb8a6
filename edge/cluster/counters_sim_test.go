package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// noSync is a cluster.Handler for nodes that only exchange counters.
type noSync struct{}

func (noSync) HandlePush(context.Context, cluster.PushRequest) (cluster.PushReply, error) {
	return cluster.PushReply{}, errors.New("no sync")
}
func (noSync) HandleDigest(context.Context, cluster.DigestRequest) (cluster.DigestReply, error) {
	return cluster.DigestReply{}, errors.New("no sync")
}
func (noSync) HandleLeaves(context.Context, cluster.LeavesRequest) (cluster.LeavesReply, error) {
	return cluster.LeavesReply{}, errors.New("no sync")
}

// counterNodes starts n cluster.Counters on a clustersim.Network, each knowing all the others as peers.
// counterClock is the counters' clock in these tests: fixed inside a window, so that the
// counts they wait for never roll over into the next window mid-test (with the wall
// clock, a test that crossed a minute boundary saw the current window's counts go back
// to 0 and waited in vain, the likelier the slower the machine).
func counterClock() time.Time { return time.Date(2026, 12, 1, 12, 0, 30, 0, time.UTC) }

func counterNodes(t *testing.T, net *clustersim.Network, n int) ([]*cluster.Counters, []cluster.Peer) {
	t.Helper()
	var peers []cluster.Peer
	for i := range n {
		peers = append(peers, cluster.Peer{ID: crdt.NodeID(i + 1), Name: fmt.Sprint("c", i), Addr: fmt.Sprint("c", i)})
	}
	var cs []*cluster.Counters
	for i, p := range peers {
		c, err := cluster.NewCounters(cluster.CountersConfig{
			Self: p.ID, Transport: net.Transport(p.Addr), Windows: []time.Duration{time.Minute, 10 * time.Minute},
			FlushEvery: 5 * time.Millisecond, Timeout: time.Second, Now: counterClock,
		})
		if err != nil {
			t.Fatalf("NewCounters: %v", err)
		}
		net.Register(p.Addr, p.ID, cluster.WithCounters(noSync{}, c))
		c.Start()
		t.Cleanup(c.Close)
		cs = append(cs, c)
		_ = i
	}
	for _, c := range cs {
		c.SetPeers(peers)
	}
	return cs, peers
}

func waitCounts(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestCounters_ClusterWide checks that events counted on one node are counted on every
// other, across sets, through drops, duplicates and delays, and that a partition leaves
// each side with its own count until it heals.
func TestCounters_ClusterWide(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	net := clustersim.NewNetwork(seed)
	net.SetFaults(clustersim.Faults{Drop: 0.2, DropReply: 0.1, Dup: 0.2, Delay: 0.3})
	cs, peers := counterNodes(t, net, 3)
	for i := range 30 {
		cs[i%3].Add(0, "addr|10.0.0.1")
	}
	cs[1].Add(1, "signup|10.0.0.1")
	for i, c := range cs {
		waitCounts(t, fmt.Sprintf("node %d to count 30 login events", i), func() bool {
			return c.Estimate(0, "addr|10.0.0.1").Current == 30
		})
		waitCounts(t, fmt.Sprintf("node %d to count the sign-up", i), func() bool {
			return c.Estimate(1, "signup|10.0.0.1").Current == 1
		})
	}
	if e := cs[0].Estimate(0, "signup|10.0.0.1"); e.Current != 0 {
		t.Errorf("set 0 counts set 1's key: %d", e.Current)
	}

	t.Run("Partition", func(t *testing.T) {
		net.SetFaults(clustersim.Faults{})
		net.SetGroups(map[string]int{peers[2].Addr: 1})
		for range 5 {
			cs[0].Add(0, "acct|alice")
			cs[2].Add(0, "acct|alice")
		}
		waitCounts(t, "node 1 to hear node 0", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 5 })
		if got := cs[2].Estimate(0, "acct|alice").Current; got != 5 {
			t.Errorf("cut-off node counts %d, want its own 5", got)
		}
		if got := cs[1].Estimate(0, "acct|alice").Current; got != 5 {
			t.Errorf("node 1 counts %d during the partition, want node 0's 5", got)
		}
		net.Heal()
		for i, c := range cs {
			waitCounts(t, fmt.Sprintf("node %d to count 10 after healing", i), func() bool {
				return c.Estimate(0, "acct|alice").Current == 10
			})
		}
	})
	t.Run("NewPeerGetsState", func(t *testing.T) {
		c, err := cluster.NewCounters(cluster.CountersConfig{Self: 9, Transport: net.Transport("c9"), Windows: []time.Duration{time.Minute, 10 * time.Minute}, FlushEvery: 5 * time.Millisecond, Now: counterClock})
		if err != nil {
			t.Fatal(err)
		}
		net.Register("c9", 9, cluster.WithCounters(noSync{}, c))
		c.Start()
		t.Cleanup(c.Close)
		all := append(peers, cluster.Peer{ID: 9, Name: "c9", Addr: "c9"})
		for _, x := range append(cs, c) {
			x.SetPeers(all)
		}
		waitCounts(t, "the new node to learn the counts", func() bool {
			return c.Estimate(0, "addr|10.0.0.1").Current == 30 && c.Estimate(0, "acct|alice").Current == 10
		})
	})
}

// TestCounters_RestartAddsUp: a node that restarts counts under a fresh ID, so what its
// earlier run counted, which its peers keep, adds to what it counts now; under its old
// ID the new counts (from zero) would merge by maximum into the old and vanish.
func TestCounters_RestartAddsUp(t *testing.T) {
	net := clustersim.NewNetwork(1)
	cs, peers := counterNodes(t, net, 2)
	for range 5 {
		cs[0].Add(0, "acct|alice")
	}
	waitCounts(t, "the peer to count the first run's 5", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 5 })

	cs[0].Close() // the node restarts: a new Counters, a new ID, the same address
	again, err := cluster.NewCounters(cluster.CountersConfig{
		Self: crdt.NodeID(99), Transport: net.Transport(peers[0].Addr), Windows: []time.Duration{time.Minute, 10 * time.Minute},
		FlushEvery: 5 * time.Millisecond, Timeout: time.Second, Now: counterClock,
	})
	if err != nil {
		t.Fatal(err)
	}
	net.Register(peers[0].Addr, peers[0].ID, cluster.WithCounters(noSync{}, again))
	again.Start()
	t.Cleanup(again.Close)
	again.SetPeers(peers)
	cs[1].SetPeers(peers[1:]) // the peer sees it go and come back (serf)
	cs[1].SetPeers(peers)
	for range 2 {
		again.Add(0, "acct|alice")
	}
	waitCounts(t, "the peer to count 5 + 2", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 7 })
	// The restarted node learns again what its earlier run counted: the peer relays it.
	waitCounts(t, "the restarted node to count 5 + 2", func() bool { return again.Estimate(0, "acct|alice").Current == 7 })
}
