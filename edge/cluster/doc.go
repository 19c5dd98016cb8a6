// Package cluster replicates a node's storage to every other node: membership and failure
// detection through hashicorp/serf (encrypted gossip, small change notices as user
// events), and data over an authenticated, encrypted node-to-node channel of its own —
// deltas pushed promptly after each local commit, and digest-based anti-entropy on join,
// on a member's recovery, on a notice that a peer's digest differs, and periodically.
//
// The Replicator depends only on the Membership and Transport interfaces, so tests run
// several nodes in one process over a fault-injecting in-memory transport. Serf and the
// TLS transport are the production implementations.
//
// It imports storage and crdt; it must not import edge or functions.
package cluster
