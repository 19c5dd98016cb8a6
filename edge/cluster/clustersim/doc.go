// Package clustersim runs a sessiond cluster in one test process, for the tests of any
// package, as net/http/httptest runs a server: many nodes, each a real storage.DB, a
// cluster.Replicator and the functions handlers, over a fault-injecting in-memory
// network, with membership, clocks, kills, restarts and disk wipes under the test's
// control, and a checker that compares every node with what was acknowledged.
//
// The parts:
//   - Network carries sync and counter messages between nodes through their encoders, as
//     TLS would, with faults decided per link by a seeded source: loss of requests or
//     replies, delay, duplication, replay of stale pushes (reordering), partitions,
//     one-way cuts, refusals by a hook, and a message size bound; it counts each link's
//     traffic (LinkStats).
//   - Faulty is the faulty-peer nemesis (Cluster.AddFaulty): a node holding the key, in
//     every honest node's peer list, that sends random, truncated, out-of-range, oversized
//     and replayed messages and answers calls with such bytes (Network.Send,
//     Network.RegisterFunc).
//   - Each node speaks a range of sync protocol versions (WithProtocols, SetProtocols);
//     peers speak the highest common one, or are left out as partitioned, and LinkStats
//     counts the versions each link carried.
//   - Cluster is nodes across regions (New), with replicas (WithReplicas), whose
//     membership follows the network (Partition) or not (Cut), or stays as it was
//     (Freeze); nodes can be killed, restarted, wiped, skewed (SetOffset), added or
//     joined while they catch up.
//   - Model is the oracle: every write a node acknowledged, through its handlers (API) or
//     a Store. CheckConverged asserts that every node holds exactly what the model
//     implies; with placement, CheckPlaced asserts that every acknowledged write is on
//     its holders and, once settled, nowhere else, CheckNothingExtra that nothing
//     unexplained is stored, and CheckLogs that holders have whole message logs.
//   - Workload drives the handlers of random live nodes with a seeded mix of operations
//     and remembers what was acknowledged; Workload.CheckHandlers checks what users see
//     through every node.
//   - WaitFor and Poll wait by polling a condition, never by a bare sleep.
//
// A test of another package builds three nodes in two regions, writes through a node
// while the regions are apart, heals, and checks that every node converged on what was
// acknowledged:
//
//	func TestAcrossRegions(t *testing.T) {
//		c := clustersim.New(t, 3, []string{"eu", "us"}, clustersim.WithSeed(1)) // n0, n2 in eu; n1 in us
//		w := clustersim.NewWorkload(c, rand.New(rand.NewPCG(1, 2)), 1)
//		alice := w.MustRegister(t, 0, "alice")
//		c.CheckConverged(t, time.Minute)
//
//		c.PartitionRegions(true, []string{"eu"}) // membership follows: each side sees only itself
//		first := "Alicia"
//		_, err := c.Nodes[1].API().Users.UpdateProfile(context.Background(), alice.ID,
//			functions.ProfilePatch{FirstName: &first})
//		if err != nil {
//			t.Fatalf("update in us: %v", err)
//		}
//		c.Heal()
//		c.CheckConverged(t, time.Minute) // every node holds exactly the acknowledged writes
//		w.CheckHandlers(t)               // and shows them through its handlers
//	}
//
// Functions that fail a test take a testing.TB, and New registers the cluster's shutdown
// with t.Cleanup. The package imports testing, so only tests may import it; it imports
// cluster, so package cluster's own internal tests cannot, and its scenario tests are
// external tests (package cluster_test).
package clustersim
