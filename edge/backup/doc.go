// Package backup is sessiond's backup file: its format (Writer, Reader), the check of a
// file without restoring it (Verify), and the restore of a file into a new data
// directory under a fresh node identity (Restore).
//
// A backup file is a header, the bytes of a consistent copy of a node's data file
// (storage.DB.Backup), and a trailer:
//
//	magic    8 bytes  "SDBACKUP"
//	version  2 bytes  big endian: the backup file format, FileVersion
//	length   4 bytes  big endian: the header's length, at most MaxHeader
//	header   JSON     Header: where and when the copy was taken, its size and counts
//	body     Header.Size bytes: the bbolt file
//	magic    8 bytes  "SDBKEND\n"
//	length   8 bytes  big endian: the body's length again
//	sha256  32 bytes  SHA-256 of every byte before the trailer (magic to body)
//	seal id  8 bytes  (version 2) which seal key sealed it: SHA-256 of a label and the key
//	seal    32 bytes  (version 2) HMAC-SHA256 under the seal key of a label, the length,
//	                  the SHA-256 and the seal id
//
// A file is written and read in one pass, never held in memory: a node streams it as it
// copies, and Reader checks the trailer when the body ends, so a reader that reaches
// io.EOF has read a complete, undamaged file with nothing after it. A file that is cut
// short, damaged or not a backup at all fails with ErrTruncated, ErrChecksum or
// ErrForeign. The checksum tells damage; the seal (SealKey of the node's cluster key)
// tells a deliberate change by someone without a cluster key, who can rewrite the
// checksum but not the seal: Verify and Restore take only files sealed by a key their
// Trust names, unless it accepts unsealed ones (ErrUnsealed). Version 1 files, from
// before seals, are read, and are unsealed.
//
// It imports storage, crdt and the standard library; nothing here knows HTTP or the
// node.
package backup
