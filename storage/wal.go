package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
)

// The write-ahead log: one file beside the bbolt file (its path with "-wal" appended),
// holding a header and then one record per group commit. The format is described in the
// package documentation ("The write-ahead log"); this file reads and writes it and knows
// nothing of bbolt.

// walMagic opens every log file; the byte after it is the format version.
const walMagic = "SESSWAL"

// walVersion is the format version written and the only one read.
const walVersion = 1

// walSuffix names the log beside the data file; walTempSuffix the next log while a
// checkpoint writes it.
const (
	walSuffix     = "-wal"
	walTempSuffix = "-wal.tmp"
)

const (
	walHeaderFixed = 24 // magic, version, epoch, page size, meta length
	walRecordHead  = 16 // length, checksum, sequence number
	// walMaxRecord bounds a record's payload; a length beyond it is not a record.
	walMaxRecord = 1 << 30
)

// Operations in a record's payload.
const (
	walPut    = 1
	walDelete = 2
)

// ErrCorruptWAL is returned by Open when the write-ahead log is damaged other than at
// its end: a bad header, or a record that fails its checksum followed by a valid one.
var ErrCorruptWAL = errors.New("storage: write-ahead log corrupt")

var walTable = crc32.MakeTable(crc32.Castagnoli)

// walHeader is what a checkpoint wrote at the start of the log: the epoch (checkpoints
// taken so far) and the data file's two meta pages as they were on disk when it was
// synced.
type walHeader struct {
	epoch    uint64
	pageSize int
	metas    []byte // 2 × pageSize bytes
}

func (h walHeader) encode() []byte {
	b := make([]byte, 0, walHeaderFixed+len(h.metas)+4)
	b = append(b, walMagic...)
	b = append(b, walVersion)
	b = binary.BigEndian.AppendUint64(b, h.epoch)
	b = binary.BigEndian.AppendUint32(b, uint32(h.pageSize))   // #nosec G115 -- a bbolt page size
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.metas))) // #nosec G115 -- two pages
	b = append(b, h.metas...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, walTable))
}

// decodeWALHeader parses the header at the start of data and returns it with its length.
func decodeWALHeader(data []byte) (walHeader, int, error) {
	if len(data) < walHeaderFixed+4 || string(data[:len(walMagic)]) != walMagic {
		return walHeader{}, 0, fmt.Errorf("%w: no header", ErrCorruptWAL)
	}
	if v := data[len(walMagic)]; v != walVersion {
		return walHeader{}, 0, fmt.Errorf("write-ahead log format %d, want %d", v, walVersion)
	}
	h := walHeader{
		epoch:    binary.BigEndian.Uint64(data[8:]),
		pageSize: int(binary.BigEndian.Uint32(data[16:])),
	}
	n := int(binary.BigEndian.Uint32(data[20:]))
	if h.pageSize < 512 || n != 2*h.pageSize || len(data) < walHeaderFixed+n+4 {
		return walHeader{}, 0, fmt.Errorf("%w: bad header", ErrCorruptWAL)
	}
	end := walHeaderFixed + n
	if crc32.Checksum(data[:end], walTable) != binary.BigEndian.Uint32(data[end:]) {
		return walHeader{}, 0, fmt.Errorf("%w: header checksum", ErrCorruptWAL)
	}
	h.metas = data[walHeaderFixed:end]
	return h, end + 4, nil
}

// appendWALRecord appends record seq of epoch with payload to b.
func appendWALRecord(b []byte, epoch, seq uint64, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload))) // #nosec G115 -- bounded by walMaxRecord
	b = binary.BigEndian.AppendUint32(b, walChecksum(epoch, seq, payload))
	b = binary.BigEndian.AppendUint64(b, seq)
	return append(b, payload...)
}

// walChecksum covers the epoch too, so that a record can only be valid in its own log.
func walChecksum(epoch, seq uint64, payload []byte) uint32 {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], epoch)
	binary.BigEndian.PutUint64(b[8:], seq)
	return crc32.Update(crc32.Checksum(b[:], walTable), walTable, payload)
}

// walRecordAt returns the payload of a valid record of epoch numbered seq at off in
// data, or false.
func walRecordAt(data []byte, off int, epoch, seq uint64) ([]byte, bool) {
	if len(data)-off < walRecordHead {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(data[off:]))
	if n > walMaxRecord || n > len(data)-off-walRecordHead || binary.BigEndian.Uint64(data[off+8:]) != seq {
		return nil, false
	}
	payload := data[off+walRecordHead : off+walRecordHead+n]
	if walChecksum(epoch, seq, payload) != binary.BigEndian.Uint32(data[off+4:]) {
		return nil, false
	}
	return payload, true
}

// walLog is a parsed log: its header and the payloads of its valid records, in order.
type walLog struct {
	header  walHeader
	records [][]byte // slices of the file's data
	end     int      // offset after the last valid record
}

// parseWAL parses a whole log file. Records are numbered from 1 without gaps. The log
// ends at the first record that is incomplete or fails its checksum — the record being
// written when the process or the machine stopped, a torn tail, which was never
// acknowledged — unless a valid record with a later number follows it anywhere in the
// file: then the damaged record is in the middle, acknowledged writes may be in it, and
// parseWAL fails with ErrCorruptWAL rather than skip it.
func parseWAL(data []byte) (walLog, error) {
	h, off, err := decodeWALHeader(data)
	if err != nil {
		return walLog{}, err
	}
	l := walLog{header: h}
	for seq := uint64(1); off < len(data); seq++ {
		payload, ok := walRecordAt(data, off, h.epoch, seq)
		if !ok {
			if later := findLaterRecord(data, off+1, h.epoch, seq); later >= 0 {
				return walLog{}, fmt.Errorf("%w: record %d at offset %d is damaged and a later record follows at offset %d", ErrCorruptWAL, seq, off, later)
			}
			break
		}
		l.records = append(l.records, payload)
		off += walRecordHead + len(payload)
	}
	l.end = off
	return l, nil
}

// findLaterRecord returns the offset of a valid record numbered after seq at or after
// from in data, or -1. Only the record numbers seq+1 … seq+1024 are tried: a damaged
// record hides at most a few behind it. The number is checked before the checksum, so
// the scan costs little more than reading the bytes.
func findLaterRecord(data []byte, from int, epoch, seq uint64) int {
	for off := from; off+walRecordHead <= len(data); off++ {
		n := binary.BigEndian.Uint64(data[off+8:])
		if n == 0 {
			// A record's number has a nonzero byte: skip the preallocated zeros.
			p := nextNonZero(data, off+16)
			if p < 0 {
				return -1
			}
			off = max(off, p-16) // the loop adds 1: p is then in the number's bytes
			continue
		}
		if n <= seq || n > seq+1024 {
			continue
		}
		if _, ok := walRecordAt(data, off, epoch, n); ok {
			return off
		}
	}
	return -1
}

var zeroPage [4096]byte

// nextNonZero returns the index of the first nonzero byte of data at or after from, or -1.
func nextNonZero(data []byte, from int) int {
	for from+len(zeroPage) <= len(data) && bytes.Equal(data[from:from+len(zeroPage)], zeroPage[:]) {
		from += len(zeroPage)
	}
	for ; from < len(data); from++ {
		if data[from] != 0 {
			return from
		}
	}
	return -1
}

// walOps is the payload of one record being built: the batch's bbolt writes, in order.
type walOps struct {
	buf []byte
}

// put records a put and returns the record's copies of k and v. bbolt keeps the slices
// a Put is given until its transaction commits, which may be batches later (commit.go),
// so the batch gives it these: the callers' may be reused, the record's are not (a
// buffer that grows leaves its earlier bytes in place in the old array).
func (o *walOps) put(bucket byte, k, v []byte) (key, value []byte) {
	o.buf = append(o.buf, walPut, bucket)
	o.buf = binary.AppendUvarint(o.buf, uint64(len(k)))
	o.buf = append(o.buf, k...)
	key = o.buf[len(o.buf)-len(k) : len(o.buf) : len(o.buf)]
	o.buf = binary.AppendUvarint(o.buf, uint64(len(v)))
	o.buf = append(o.buf, v...)
	value = o.buf[len(o.buf)-len(v) : len(o.buf) : len(o.buf)]
	return key, value
}

func (o *walOps) delete(bucket byte, k []byte) {
	o.buf = append(o.buf, walDelete, bucket)
	o.buf = binary.AppendUvarint(o.buf, uint64(len(k)))
	o.buf = append(o.buf, k...)
}

// walOp is one decoded write.
type walOp struct {
	op     byte
	bucket byte
	key    []byte
	value  []byte // walPut only
}

// decodeWALOps calls fn for each write of a payload in order. A payload that passed its
// checksum but does not parse is corruption (or a bug): ErrCorruptWAL.
func decodeWALOps(p []byte, fn func(walOp) error) error {
	for len(p) > 0 {
		if len(p) < 2 {
			return fmt.Errorf("%w: truncated operation", ErrCorruptWAL)
		}
		o := walOp{op: p[0], bucket: p[1]}
		p = p[2:]
		var ok bool
		if o.key, p, ok = walBytes(p); !ok {
			return fmt.Errorf("%w: truncated key", ErrCorruptWAL)
		}
		switch o.op {
		case walPut:
			if o.value, p, ok = walBytes(p); !ok {
				return fmt.Errorf("%w: truncated value", ErrCorruptWAL)
			}
		case walDelete:
		default:
			return fmt.Errorf("%w: unknown operation %d", ErrCorruptWAL, o.op)
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

func walBytes(p []byte) (b, rest []byte, ok bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) { // #nosec G115 -- k ≤ len(p): not negative
		return nil, p, false
	}
	return p[k : k+int(n)], p[k+int(n):], true // #nosec G115 -- n ≤ len(p)
}

// walFile is the open log the committer appends to. Not safe for concurrent use.
type walFile struct {
	f     *os.File
	path  string // its name: f's is the temporary one it was created under (createWAL)
	epoch uint64
	seq   uint64 // records appended
	size  int64  // bytes written and synced
	alloc int64  // the end of the zeros written ahead (extend); below size after one failed
	buf   []byte
}

// named returns err, of an operation on the log, naming the log's file by its name.
func (w *walFile) named(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &fs.PathError{Op: pe.Op, Path: w.path, Err: pe.Err}
	}
	return fmt.Errorf("sync %s: %w", w.path, err)
}

// walChunk is how much of the log extend writes ahead at a time. Its zeros are flushed
// by the record's fdatasync, which therefore takes longer once a chunk (about 1.5 ms for
// 1 MiB here); a larger chunk saves nothing more, since only that one sync writes a new
// file size.
const walChunk = 1 << 20

// append writes a record of payload at the end of the log and syncs it. If either step
// fails, it cuts the log back to where it was and syncs that, so the record is not in the
// log; if that fails too, the log's end is unknown and the error wraps errWALBroken. A
// payload over walMaxRecord is refused before anything is written (errRecordTooBig).
func (w *walFile) append(payload []byte) error {
	if len(payload) > walMaxRecord {
		return fmt.Errorf("%w: %d bytes, at most %d", errRecordTooBig, len(payload), walMaxRecord)
	}
	w.buf = appendWALRecord(w.buf[:0], w.epoch, w.seq+1, payload)
	if end := w.size + int64(len(w.buf)); end > w.alloc {
		w.extend(end)
	}
	_, err := w.f.WriteAt(w.buf, w.size)
	if err == nil {
		err = fdatasync(w.f)
	}
	if err != nil {
		err = w.named(err)
	}
	if cap(w.buf) > 1<<20 {
		w.buf = nil // do not keep one huge batch's buffer
	}
	if err != nil {
		return w.cut(w.size, err)
	}
	w.seq++
	w.size += int64(walRecordHead + len(payload))
	return nil
}

// extend writes walChunk zero bytes from end, where the record being appended will end,
// so that the records that follow it overwrite data already on disk and their fdatasync
// flushes only that data. Appending would change the file's size with every record, and
// blocks allocated without being written (fallocate) are marked unwritten on ext4, where
// the first write into each converts it: either way each record's sync would also write
// the file's metadata. (Measured here, a record of 3.8 KiB and its fdatasync: 49–50 µs
// into written zeros, 69–71 µs into fallocated blocks, 75–93 µs appended; PostgreSQL
// zero-fills its log segments for the same reason.) Zeros past the last record read as
// the log's end (parseWAL). The record itself is not zeroed first: a record larger than
// walChunk is written once. If a write of zeros fails (a full disk), alloc stays, the
// zeros written so far stay past the record, and the record is written all the same (its
// own write reports a full disk); the next append tries again. Zeros start at end, never before, so they never cover a
// record already written.
func (w *walFile) extend(end int64) {
	var zeros [64 << 10]byte
	for off := end; off < end+walChunk; {
		k := min(end+walChunk-off, int64(len(zeros)))
		if _, err := w.f.WriteAt(zeros[:k], off); err != nil {
			return
		}
		off += k
	}
	w.alloc = end + walChunk
}

// errRecordTooBig refuses a batch whose log record would be over walMaxRecord: nothing
// is written, and the log is as it was.
var errRecordTooBig = errors.New("write-ahead log record too large")

// errWALBroken says the log could not be brought back to a known end: the DB refuses
// writes until it is opened again.
var errWALBroken = errors.New("write-ahead log end unknown")

func (w *walFile) cut(size int64, cause error) error {
	w.alloc = size
	if err := w.f.Truncate(size); err != nil {
		return fmt.Errorf("%w: %w (after %w)", errWALBroken, w.named(err), cause)
	}
	if err := fdatasync(w.f); err != nil {
		return fmt.Errorf("%w: %w (after %w)", errWALBroken, w.named(err), cause)
	}
	return cause
}

// createWAL writes a new log holding only h to path+walTempSuffix, syncs it, renames it
// over path+walSuffix and syncs the directory, so that the log on disk is always either
// the old one whole or the new one whole. It returns the new log, open for appending.
func createWAL(path string, h walHeader) (*walFile, error) {
	tmp := path + walTempSuffix
	f, err := os.OpenFile(filepath.Clean(tmp), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	b := h.encode()
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path+walSuffix); err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		_ = f.Close()
		return nil, err
	}
	return &walFile{f: f, path: path + walSuffix, epoch: h.epoch, size: int64(len(b)), alloc: int64(len(b))}, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
