// Package cluster replicates a node's storage to every other node: membership and failure
// detection through hashicorp/serf (encrypted gossip, small change notices as user
// events), and data over an authenticated, encrypted node-to-node channel of its own —
// deltas pushed promptly after each local commit, and digest-based anti-entropy on join,
// on a member's recovery, on a notice that a peer's digest differs, and periodically.
//
// The Replicator depends only on the Transport interface and learns its peers through
// SetPeers, so tests run several nodes in one process over a fault-injecting in-memory
// transport, with peers set by the test. TLSTransport is the production Transport, and
// Membership (serf) calls SetPeers and Notice in production.
//
// It imports storage and crdt; it must not import edge or functions.
package cluster
