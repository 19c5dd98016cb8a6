// Package cluster replicates a node's storage to its peers: membership and failure
// detection through hashicorp/serf (encrypted gossip, small change notices as user
// events), and data over an authenticated, encrypted node-to-node channel of its own —
// deltas pushed promptly after each local commit, and digest-based anti-entropy on join,
// on a member's recovery, on a notice that a peer's digest differs, and periodically.
//
// With Config.Replicas, each region's live members share the partitions of the key space
// (placement, a pure sub-package): pushes go to the holders of a change's partitions,
// anti-entropy compares only partitions both nodes hold, keys a node no longer holds are
// handed off and dropped once their holders confirm them (holding.go, handoff.go), and
// what a node knows it holds, for read-your-writes, is per partition (bookmarks.go). The
// same channel carries client requests forwarded to a holder (TLSTransport.Forward).
//
// The Replicator depends only on the Store and Transport interfaces and learns its peers
// through SetPeers, so tests run several nodes in one process over a fault-injecting
// in-memory transport, with peers set by the test (the test-support package clustersim,
// which the scenario tests use as external tests, package cluster_test). TLSTransport is the production
// Transport, and Membership (serf) calls SetPeers and Notice in production.
//
// It imports storage (for its types) and crdt; it must not import edge or functions.
package cluster
