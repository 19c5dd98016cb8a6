package storage

import (
	"fmt"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// FormatVersion is the format of the data file this build writes, kept in the meta
// bucket. Open migrates a file of an older format to it in place and refuses a newer one
// (FormatError).
//
// The formats:
//
//  1. The first release (commit cf22e35), and the builds after it until format 2: the
//     leaves index lists each key under one leaf of a hash of its own (leaf scheme 1) or,
//     from the builds that stored meta leaf_scheme 2, under each of its homes. The first
//     release kept no write-ahead log; later builds of format 1 do.
//  2. The leaves index lists each key under each of its homes (crdt.KeyHomes, leaf
//     scheme 2), and the seq_floor bucket exists. The records, the message logs and
//     their encodings are those of format 1: whatever format 1 stored means the same in 2.
//  3. Key-value records (crdt.KVPrefix) are listed in the expiry index under their keep
//     time, and swept when it passes. A file of format 2 holds such records only if a
//     newer node replicated them to it; the migration lists them. A build of format 2
//     would neither sweep them nor keep the index right, hence the new format.
//  4. Subjects' records with a keep time (crdt.SubjectKeepNanos) are listed in the
//     expiry index likewise, and swept when it passes. A file of format 3 holds such
//     records only if a newer node replicated them to it; the migration lists them.
//
// The write-ahead log beside the file has a version of its own, in its header.
const FormatVersion = 4

// oldestFormat is the oldest format Open migrates.
const oldestFormat = 1

// FormatError is Open's error for a data file of a format this build cannot open: one
// written by a newer build, which it must not write to, or one older than any it
// migrates.
type FormatError struct {
	Found     uint64 // the file's format
	Supported uint64 // FormatVersion
}

func (e *FormatError) Error() string {
	if e.Found > e.Supported {
		return fmt.Sprintf("data file format %d is newer than format %d, the newest this build of sessiond opens: run the release that wrote it (or a later one), or restore a backup taken before the upgrade", e.Found, e.Supported)
	}
	return fmt.Sprintf("data file format %d is older than format %d, the oldest this build migrates", e.Found, oldestFormat)
}

// migration turns a file of format from into format from+1. It runs inside the
// transaction that opens the file, with every bucket of allBuckets present; it must only
// change derived state or add to the replicated state's encoding what the older format
// lacked, never lose a record or an entry.
type migration struct {
	from uint64
	what string
	run  func(btx *bolt.Tx) error
}

// migrations are the steps from oldestFormat to FormatVersion, in order.
var migrations = []migration{
	{from: 1, what: "index digest leaves by partition (leaf scheme 2)", run: migrateLeaves},
	{from: 2, what: "list key-value records in the expiry index", run: migrateKeepIndex(crdt.KVPrefix, crdt.KVKeepNanos)},
	{from: 3, what: "list subjects' records in the expiry index", run: migrateKeepIndex(crdt.UserPrefix, crdt.SubjectKeepNanos)},
}

// migrateLeaves rebuilds the leaves index under leaf scheme 2, unless a build between
// format 1 and 2 already did.
func migrateLeaves(btx *bolt.Tx) error {
	meta := btx.Bucket(bucketMeta)
	if getUint(meta.Get(metaLeaves)) == leafScheme {
		return nil
	}
	if err := rebuildLeaves(btx); err != nil {
		return fmt.Errorf("rebuild leaf index: %w", err)
	}
	return meta.Put(metaLeaves, putUint(leafScheme))
}

// migrate brings the file in btx from format found to FormatVersion, a step at a time, in
// the caller's transaction: the file is left in its old format or in the new one, never
// between, whatever stops the process. onStep, if not nil, is called after each step
// with the step's formats, before anything commits.
func migrate(btx *bolt.Tx, found uint64, onStep func(from, to uint64)) error {
	if found > FormatVersion || found < oldestFormat {
		return &FormatError{Found: found, Supported: FormatVersion}
	}
	for _, m := range migrations {
		if m.from < found {
			continue
		}
		if err := m.run(btx); err != nil {
			return fmt.Errorf("migrate data file from format %d to %d (%s): %w", m.from, m.from+1, m.what, err)
		}
		if onStep != nil {
			onStep(m.from, m.from+1)
		}
	}
	return btx.Bucket(bucketMeta).Put(metaFormat, putUint(FormatVersion))
}
