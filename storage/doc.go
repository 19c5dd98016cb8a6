// Package storage keeps a node's replica of sessiond's state in one bbolt file: the
// records (users, username claims, sessions, the service API's key-value records) as
// crdt.Map values, the per-conversation message logs, and what replication needs to find
// and ship differences — a change feed, a digest of every replicated key, and the merge
// of remote state.
//
// It imports crdt, bbolt and the standard library only; nothing here knows HTTP, the
// handlers or the cluster. The handlers reach it through small interfaces they own
// (DB satisfies them), the cluster layer through ChangesSince, Digest, LeafPairs,
// Changes and ApplyRemote.
//
// # Writes and durability
//
// Every write, local (Update) or remote (ApplyRemote), goes through one committer
// goroutine. It takes all queued requests into one group commit, runs them in turn in its
// bbolt transaction, appends their writes to a write-ahead log as one record, syncs the
// log (one fdatasync), and then answers each caller: concurrent writers share one commit
// and its one sync, and a nil error always means the write is on disk. Each function's
// writes are buffered and applied only if it returns nil, so one failing caller does not
// abort the others. The bbolt transaction is committed to the file (without a sync) after
// the answers, and only once no more writers wait, a reader waits, or 16 group commits or
// 1 MiB of records are in it (commit.go): while writers keep the committer busy, one
// bbolt commit carries several group commits. A read of the file first waits until the
// file holds every write acknowledged when it began (DB.settle); the record cache, the
// digest and the counters are updated when a write is acknowledged, so reads served from
// them wait for nothing.
//
// When the log passes Options.WALLimit the committer checkpoints: it syncs the bbolt
// file and starts a new, empty log; Close syncs the file and removes the log, which a
// file closed cleanly does not need. Open restores the file to its last
// checkpoint and replays the log on top, so a crash at any point, a power loss included,
// leaves a consistent file with every acknowledged write. checkpoint.go explains why
// committing with bbolt's NoSync cannot corrupt the file: until the next checkpoint a
// read transaction keeps bbolt from overwriting any page of the checkpoint's tree, and
// the checkpoint's meta pages, kept in the log, are written back on Open.
// NoFreelistSync is set (the freelist is rebuilt on Open instead of written with every
// commit), which the restore relies on.
//
// # Files
//
// The data directory holds, for a data file at path (sessiond.db):
//
//   - path: the bbolt file.
//   - path + "-wal": the write-ahead log. It is part of the data: copy, move or delete
//     it with the file, never apart from it. Opening a file without its log after a
//     crash may open a corrupt file or lose acknowledged writes; a log whose data file
//     is missing or empty is deleted by Open (the file was wiped). Close removes the
//     log, so a data directory whose node stopped cleanly holds none, and a file put in
//     place of its data file opens as it is. A node that crashed leaves its log: a file
//     restored from a Backup must go in without it; Open refuses a file whose meta pages
//     are older than the log's checkpoint, which is what a backup beside a newer log
//     looks like (a backup taken after the checkpoint cannot be told apart: remove the
//     log).
//   - path + "-wal.tmp": the next log while a checkpoint writes it; Open deletes it.
//
// The log's format, version 1, all integers big-endian, checksums CRC-32C:
//
//	header:  "SESSWAL" 0x01 (version byte) | epoch u64 | page size u32 | length u32 (2 × page size)
//	         | the bbolt file's two meta pages at the checkpoint | checksum u32 of all before it
//	record:  payload length u32 | checksum u32 of (epoch u64, number u64, payload) | number u64 | payload
//	payload: operations, each: 1 (put) or 2 (delete) | bucket u8 (its index in allBuckets)
//	         | key length uvarint | key | for a put: value length uvarint | value
//
// The epoch counts checkpoints; records are numbered from 1 in each log. A checkpoint
// writes the new log to path + "-wal.tmp", syncs it and renames it over the old one, so
// the log on disk is always whole. The log ends at the first record that is incomplete
// or fails its checksum (a record torn by a crash; it was never acknowledged), unless a
// valid record with a later number follows: then the damage is in the middle and Open
// fails with ErrCorruptWAL rather than skip acknowledged writes. (Damage to the last
// record after it was synced cannot be told from a torn write; it is dropped.)
//
// # Reads
//
// Record and Records keep the decoded state of the records they read in a bounded cache
// (Options.RecordCache), so the session and user that nearly every request reads are
// decoded once per change, not once per request. The committer refreshes or drops every
// cached record a commit wrote before it answers the commit's writers, a read that
// misses the cache waits until the file holds every acknowledged write (see above), and
// a read that raced a commit never fills the cache, so a read never returns a state older
// than a write already acknowledged.
//
// # Replicated state and derived state
//
// Only records and log entries are replicated. Everything else in the file is derived
// from them on each node — the indexes (sessions by owner and by expiry, conversations
// by user, per-origin log sequence numbers, digest leaves), the counters, the erasure
// marks — and so are deletions: an expiry or an erasure is never shipped as a deletion;
// every node performs it when its own state calls for it, so digests converge. (An
// erasure travels as state that calls for it: the user record's deleted flag, and the
// erasure markers in the conversation logs; see Erasure.) The keys of the replicated key
// space are the record keys of crdt (u/, n/, s/, g/, k/) and LogKey for
// entries.
//
// # Erasure
//
// When a user record has the deleted flag after a merge (local or remote), the node
// deletes every session record of that user and the messages of every conversation
// involving them (the cascade), and from then on drops arriving session records of that
// user and messages of conversations with them. The user record stays, stripped to its
// username, deleted flag and sessions_until (later profile edits are stripped too): it is
// the tombstone that makes the erasure win on every node, whatever arrives after.
//
// With placement, a conversation also lives with the other participant, on nodes that
// never hold the erased user's record. The erasure reaches them through what they do
// hold, the conversation's log: an erasure marker (crdt.ErasureMarker, an entry whose
// data says "From was erased") is the tombstone of a conversation. The node that serves
// the erasure appends one to each of the user's conversations in the transaction that
// sets the deleted flag (functions.Users.Delete), and markers replicate like any entry.
// The rules, the same on every node:
//
//   - Applying a marker (local or remote) marks its From erased here, whether or not the
//     node holds From's record, deletes the conversation's messages with everything
//     derived from them (indexes, counters, digest, the conversation's listing), and
//     stores the marker. A conversation that holds a marker holds nothing else and is
//     gone for both participants: Conversations does not list it, ReadLog reads it as
//     empty. Later messages of it are dropped, as are sessions of From (it is erased).
//     From's other conversations held here keep their messages until a marker of theirs
//     arrives (or a message of theirs, which is dropped and leaves one, as below): each
//     gets one from the nodes that hold From's partition.
//   - Markers are never deleted by an erasure or by other markers: several markers of one
//     conversation, from several nodes, may coexist, and all are kept. Two markers with
//     the same origin and sequence number resolve like any two entries.
//   - A node never removes messages because of an erasure without leaving a marker: when
//     the cascade deletes a conversation's messages, or drops an arriving message of a
//     conversation with an erased participant (a remote one, or a local one appended in
//     the transaction that erases its participant), and the conversation holds no
//     marker, the node appends one of its own in the same batch — From the erased
//     participant, stamped like any local entry (its clock, its next sequence number in
//     the conversation, past any it issued before the conversation was dropped). So the
//     holders of the other participant's partition, which may not know of the erasure,
//     learn of it, also for a conversation started concurrently with it or that the
//     serving node did not hold. A marker never leads to another marker (applying one
//     purges; only dropping or deleting a message leaves one), so this cannot loop.
//   - Within one transaction, markers are applied first, then records, then messages:
//     the cascade that an erasure in the same transaction triggers finds the markers in
//     place, keeps them and leaves none of its own beside them.
//
// Markers a node leaves of its own make the stored state depend on the order things
// arrived in (a node that got the deleted flag before the serving node's markers holds a
// marker of its own too), but they are ordinary entries: anti-entropy carries every
// marker to every holder of the conversation, nothing ever deletes one, and so the
// replicas converge to the same set. The cost is one small entry (67 bytes of data, under
// a kilobyte on disk with its indexes and feed position) per conversation of an erased
// user, more only when a node deleted or dropped messages before any marker of that
// conversation reached it.
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
// A key-value record (crdt.KVPrefix) is deleted by Sweep once its keep time
// (crdt.KVKeepNanos) has passed, and one already past it is never stored. Its expiry can
// move both ways (the latest write wins), so the keep time is the latest expiry ever
// written to it, which every copy reaches as the writes replicate: a record is not
// dropped while a write this node has seen still wants it. A deleted key is a tombstone
// (its deleted flag, every value field gone) until its keep time — at least the
// deletion's grace after it (functions.KVTombstoneGrace) — so a late write of the same
// key, however it is stamped, finds it and stays hidden. What the keep time cannot cover
// is a write no node holding the record has seen: a write made concurrently with a
// deletion, on a node cut off until after the tombstone's keep time, brings the key back
// with that write's fields when it arrives; and a write that moved the expiry earlier,
// made on a node cut off until after that earlier expiry, is lost (its node drops the
// record, and copies elsewhere keep the later expiry).
//
// Erased users' records (and their username claims) are never dropped, and neither are
// erasure markers: without the tombstone, a delayed copy of the user, its sessions or its
// messages would come back — on a node that holds only the other participant's partition,
// the marker is the only tombstone. (Drop, which stops storing keys at a node that no
// longer holds them while their holders keep them, is not a deletion and treats markers
// like any entry.) No other tombstone is ever dropped: deleted fields of live records are
// part of their state until the record goes.
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
// (Backup) carries it, so a copy is restored under a fresh identity (Reidentify: a new
// ID, and no sequence state of the old one), never as the node it came from; two nodes
// with one ID would reuse log sequence numbers, whose conflicts resolve the same way on
// every node (the entry with the lower ID wins) but may drop messages. Check examines a
// copy without changing it.
//
// # Format
//
// The meta bucket holds the file's format version (FormatVersion). Open migrates an
// older file in place, in the transaction that opens it, so a crash leaves the old format
// or the new one; it refuses a newer file (FormatError). A migration changes derived
// state or adds what the older format lacked; it never drops replicated state. Format 1
// is the first release's (see FormatVersion).
package storage
