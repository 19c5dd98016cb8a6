// Package storage keeps a node's replica of sessiond's state in one bbolt file: the
// records (users, username claims, sessions) as crdt.Map values, the per-conversation
// message logs, and what replication needs to find and ship differences — a change
// feed, a digest of every replicated key, and the merge of remote state.
//
// It imports crdt, bbolt and the standard library only; nothing here knows HTTP, the
// handlers or the cluster. The handlers reach it through small interfaces they own
// (DB satisfies them), the cluster layer through ChangesSince, Digest, LeafPairs,
// Changes and ApplyRemote.
//
// # Writes and durability
//
// Every write, local (Update) or remote (ApplyRemote), goes through one committer
// goroutine. It takes all queued requests into a single bbolt transaction, runs them in
// turn, commits once and only then answers each caller, so concurrent writers share one
// commit and its fsyncs, and a nil error always means the write is on disk. Each
// function's writes are buffered and applied only if it returns nil, so one failing
// caller does not abort the others. bbolt's NoSync is never set; NoFreelistSync is (the freelist is rebuilt on
// Open instead of written with every commit).
//
// # Reads
//
// Record and Records keep the decoded state of the records they read in a bounded cache
// (Options.RecordCache), so the session and user that nearly every request reads are
// decoded once per change, not once per request. The committer refreshes or drops every
// cached record a commit wrote before it answers the commit's writers, and a read that
// raced a commit never fills the cache, so a read never returns a state older than a
// write already acknowledged.
//
// # Replicated state and derived state
//
// Only records and log entries are replicated. Everything else in the file is derived
// from them on each node — the indexes (sessions by owner and by expiry, conversations
// by user, per-origin log sequence numbers, digest leaves), the counters, the erasure
// marks — and so are deletions: an erasure or an expiry is never shipped as such; every
// node performs it when its own state calls for it, so digests converge. The keys of the
// replicated key space are the record keys of crdt (u/, n/, s/) and LogKey for entries.
//
// # Erasure
//
// When a user record has the deleted flag after a merge (local or remote), the node
// deletes every session record of that user and every conversation involving them, and
// from then on drops arriving session records of that user and log entries of
// conversations with them. The user record stays, stripped to its username, deleted flag
// and sessions_until (later profile edits are stripped too): it is the tombstone that
// makes the erasure win on every node, whatever arrives after.
//
// # Expiry, and when tombstones may be dropped
//
// A session record is deleted by Sweep once its absolute expiry (crdt.SessionExpires)
// has passed, and a session record already past it is never stored, whether it arrives
// by ApplyRemote or is produced by a local merge. This is safe because absolute expiry
// is fixed at creation: every copy of the record anywhere is expired too and is refused
// wherever it arrives, so a swept session cannot come back. Until then a session record
// is kept whatever its state:
//
//   - A revoked session (the revoked flag, a tombstone) stays until its absolute expiry.
//     Dropping it earlier would let a copy without the flag — a concurrent touch or an
//     update from a node that had not seen the revocation — recreate it as active.
//   - An idle-expired session stays until its absolute expiry too. Another node may
//     have used it within its idle window, and that touch may still be on its way;
//     dropping the record early would lose it. Readers decide idleness with
//     crdt.Session.ActiveAt.
//
// Each node decides these drops from its own state and clock, so for a while one node may
// hold a session another has already swept; the drop rules make them agree once both have
// passed the expiry. (Dropping is not itself a merge: were one session ID ever created
// twice with different owners or expiries — the handlers' random IDs rule it out — nodes
// could keep different versions of it until it expires.)
//
// Erased users' records (and their username claims) are never dropped: without the
// tombstone, a delayed copy of the user, its sessions or its messages would come back.
// No other tombstone is ever dropped: deleted fields of live records are part of their
// state until the record goes.
//
// # Clock
//
// The node's hybrid logical clock is stored with every commit (its latest timestamp).
// On Open the clock resumes past it, and physical time reads no earlier than it, so a
// node whose wall clock stepped back across a restart still issues increasing timestamps.
//
// # Identity and backups
//
// Open generates a random node ID when it creates the file; it is never reused. A backup
// (Backup) carries it, so a restored backup must replace the node it came from and never
// run beside it. Even then the restored node may reissue log sequence numbers it used
// after the backup was taken; those conflicts resolve the same way on every node (the
// entry with the lower ID wins), which may drop messages sent in that window. Restoring a
// backup under a fresh identity avoids that; no tool for it exists yet.
package storage
