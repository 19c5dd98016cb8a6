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
// # Protocol versions
//
// Every sync message starts with its protocol version. A node speaks a range of versions
// ([MinProtocolVersion, ProtocolVersion], announced in serf tags), each pair of nodes
// speaks the highest version both speak (Peer.Proto, set by Membership), a reply is in
// its request's version, and a member that shares no version is left out of the peers, as
// partitioned. Release N speaks N-1's newest version, so a rolling upgrade keeps every
// pair replicating; a wire change bumps ProtocolVersion and keeps the old encoding beside
// the new, branching on the message's Version. See docs/PROTOCOL.md.
//
// # Faulty peers
//
// A peer holds the cluster key, but its bytes are input like a client's: ServeMessage is
// the one entry point of a peer's requests, for every transport, and the replicator checks
// replies beyond what the decoders can (checkLeavesReply, clamp). Every decoded number is
// range-checked before it is used as an index, a length or a count, so no goroutine that
// handles a message or reply panics on it. An invalid message or reply (ErrInvalidMessage)
// is counted, logged at most every 10 s per peer, and backs the peer off (Guard). The
// simulation's faulty-peer nemesis (clustersim.Faulty) and the replicator's fuzz targets
// (replicator_fuzz_test.go) hold it to that.
//
// It imports storage (for its types) and crdt; it must not import edge or functions.
package cluster
