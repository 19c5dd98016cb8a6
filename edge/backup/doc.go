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
//
// A file is written and read in one pass, never held in memory: a node streams it as it
// copies, and Reader checks the trailer when the body ends, so a reader that reaches
// io.EOF has read a complete, undamaged file with nothing after it. A file that is cut
// short, damaged or not a backup at all fails with ErrTruncated, ErrChecksum or
// ErrForeign. The checksum is not keyed: it tells damage, not a deliberate change (whoever
// can write the file can rewrite its trailer).
//
// It imports storage, crdt and the standard library; nothing here knows HTTP or the
// node.
package backup
