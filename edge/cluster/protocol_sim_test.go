package cluster_test

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
)

// Protocol negotiation in the simulation, with a fake next version (cluster.
// FakeNextVersion: ProtocolVersion+1, the same wire but its version byte) standing for
// release N and ProtocolVersion for release N-1. These tests do not run in parallel:
// the fake version is process-wide while they run.

var (
	protoOld  = cluster.ProtocolRange{Min: cluster.ProtocolVersion, Max: cluster.ProtocolVersion}     // N-1, pinned
	protoNew  = cluster.ProtocolRange{Min: cluster.ProtocolVersion, Max: cluster.ProtocolVersion + 1} // N
	protoNext = cluster.ProtocolRange{Min: cluster.ProtocolVersion + 1, Max: cluster.ProtocolVersion + 1}
)

// versionsOn returns the protocol versions of the requests from node i to node j.
func versionsOn(c *clustersim.Cluster, i, j int) []byte {
	return slices.Sorted(maps.Keys(c.Net.LinkStats(c.Nodes[i].Name, c.Nodes[j].Name).Versions))
}

// checkVersions fails unless every link between live nodes carried only the version the
// two speak.
func checkVersions(t *testing.T, c *clustersim.Cluster) {
	t.Helper()
	for i, a := range c.Nodes {
		for j, b := range c.Nodes {
			if i == j {
				continue
			}
			want, ok := a.Protocols().Common(b.Protocols())
			got := versionsOn(c, i, j)
			if !ok && len(got) > 0 || ok && !slices.Equal(got, []byte{want}) && len(got) > 0 {
				t.Errorf("%s → %s (%s, %s) spoke versions %v, want only %d", a.Name, b.Name, a.Protocols(), b.Protocols(), got, want)
			}
		}
	}
}

// TestSimMixedProtocols: two nodes of release N-1 and two of N replicate with each other,
// each pair in the highest version both speak, and converge on what was acknowledged.
func TestSimMixedProtocols(t *testing.T) {
	cluster.FakeNextVersion(t)
	const seed = 81
	c := newTestCluster(t, 4, simRegions[:2], clustersim.WithSeed(seed),
		clustersim.WithProtocols(protoOld, protoOld, protoNew, protoNew))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	for range 5 {
		w.Steps(20, 2*time.Millisecond)
		c.Notices()
	}
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
	checkVersions(t, c)
	if got := versionsOn(c, 2, 3); !slices.Equal(got, []byte{cluster.ProtocolVersion + 1}) {
		t.Errorf("N → N spoke %v, want only %d", got, cluster.ProtocolVersion+1)
	}
	if got := versionsOn(c, 2, 0); !slices.Equal(got, []byte{cluster.ProtocolVersion}) {
		t.Errorf("N → N-1 spoke %v, want only %d", got, cluster.ProtocolVersion)
	}
}

// TestSimRollingUpgrade: a cluster of release N-1 is upgraded one node at a time (stop,
// upgrade, restart, next) while a workload runs on the live nodes; it converges on
// everything acknowledged, and once the last node runs N every pair speaks N's version.
func TestSimRollingUpgrade(t *testing.T) {
	cluster.FakeNextVersion(t)
	const seed = 82
	c := newTestCluster(t, 3, simRegions, clustersim.WithSeed(seed),
		clustersim.WithProtocols(protoOld, protoOld, protoOld))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.Steps(20, 2*time.Millisecond)
	for i := range c.Nodes {
		c.Kill(i)
		w.Steps(10, 2*time.Millisecond) // served by the others meanwhile
		c.SetProtocols(i, protoNew)
		c.Restart(i)
		c.Net.ResetStats()
		w.Steps(15, 2*time.Millisecond)
		c.Notices()
		c.CheckConverged(t, time.Minute)
		checkVersions(t, c)
		t.Logf("after upgrading %s: %s", c.Nodes[i].Name, w.Summary())
	}
	w.CheckHandlers(t)
	for i := range c.Nodes {
		for j := range c.Nodes {
			if got := versionsOn(c, i, j); i != j && len(got) > 0 && !slices.Equal(got, []byte{cluster.ProtocolVersion + 1}) {
				t.Errorf("after the upgrade, %s → %s spoke %v, want only %d", c.Nodes[i].Name, c.Nodes[j].Name, got, cluster.ProtocolVersion+1)
			}
		}
	}
}

// TestSimNoCommonVersion: a node that shares no version with the others (it speaks only
// the next one) is as partitioned: both sides keep serving, nothing crosses, and once the
// others are upgraded to speak it too, everything converges.
func TestSimNoCommonVersion(t *testing.T) {
	cluster.FakeNextVersion(t)
	const seed = 83
	c := newTestCluster(t, 3, simRegions[:2], clustersim.WithSeed(seed),
		clustersim.WithProtocols(protoOld, protoOld, protoNext))
	w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(seed, 1)), seed)
	w.Steps(30, 2*time.Millisecond)
	lonely := w.MustRegister(t, 2, "lonely")
	w.Steps(10, 2*time.Millisecond)
	for _, i := range []int{0, 1} {
		if _, ok, _ := c.Nodes[i].DB().Record(t.Context(), crdt.UserKey(lonely.ID)); ok {
			t.Errorf("%s holds a record written on a node it shares no version with", c.Nodes[i].Name)
		}
		for _, pair := range [][2]int{{i, 2}, {2, i}} {
			if s := c.Net.LinkStats(c.Nodes[pair[0]].Name, c.Nodes[pair[1]].Name); len(s.Versions) > 0 {
				t.Errorf("%s → %s sent %v across no common version", c.Nodes[pair[0]].Name, c.Nodes[pair[1]].Name, s.Versions)
			}
		}
	}
	for _, i := range []int{0, 1} {
		c.Kill(i)
		c.SetProtocols(i, protoNew)
		c.Restart(i)
	}
	c.CheckConverged(t, time.Minute)
	w.CheckHandlers(t)
}
