package backup

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"
)

// FileVersion is the version of the backup file format this build writes; it reads it
// and version 1, whose files are not sealed.
const FileVersion = 2

// MaxHeader bounds the header's JSON: a reader refuses a longer one unread.
const MaxHeader = 64 << 10

var (
	headMagic  = []byte("SDBACKUP")
	trailMagic = []byte("SDBKEND\n")
)

// Trailer lengths: magic, length, SHA-256; from version 2 the seal's key ID and MAC.
const (
	trailerLenV1 = 8 + 8 + sha256.Size
	trailerLen   = trailerLenV1 + sealIDLen + sha256.Size
	sealIDLen    = 8
)

// Errors of a file that is not a complete, undamaged backup.
var (
	ErrForeign   = errors.New("not a sessiond backup file")
	ErrTruncated = errors.New("backup file is truncated")
	ErrChecksum  = errors.New("backup file is corrupt: checksum mismatch")
	// ErrUnsealed is a file whose seal no key given checks: sealed under another
	// cluster key, altered by someone without the key, or from before seals (format 1).
	ErrUnsealed = errors.New("backup file's seal does not check with the cluster keys given")
)

// Seals. A node seals each backup it writes with a key derived from its cluster key
// (SealKey): the trailer carries an HMAC-SHA256 of the file's checksum under it, so that
// whoever can write where backups are kept, but holds no cluster key, cannot alter one
// (the checksum alone tells only damage: anyone can recompute it). Reading needs no key;
// Reader.SealedBy says whether one of the given keys sealed the file.
const (
	sealPurpose   = "sessiond/backup-seal/v1" // derives a seal key from a cluster key
	sealIDPurpose = "sessiond/backup-seal-id/v1"
	sealMACDomain = "sessiond backup file v2\n"
)

// SealKey returns the key that seals backups under clusterKey.
func SealKey(clusterKey []byte) []byte {
	m := hmac.New(sha256.New, clusterKey)
	m.Write([]byte(sealPurpose))
	return m.Sum(nil)
}

// sealID names a seal key without telling it: a file's trailer says which key sealed it.
func sealID(seal []byte) []byte {
	h := sha256.Sum256(append([]byte(sealIDPurpose), seal...))
	return h[:sealIDLen]
}

// sealMAC is the seal of a file whose body has length n and whose checksum is sum, under
// seal (named id).
func sealMAC(seal []byte, n uint64, sum, id []byte) []byte {
	m := hmac.New(sha256.New, seal)
	m.Write([]byte(sealMACDomain))
	m.Write(binary.BigEndian.AppendUint64(nil, n))
	m.Write(sum)
	m.Write(id)
	return m.Sum(nil)
}

// Header describes a backup: where and when it was taken and what it holds. It is
// written before the copy, from the read transaction that copies.
type Header struct {
	Node       string    `json:"node"`        // the node's name
	NodeID     string    `json:"node_id"`     // the node's identity (crdt.NodeID)
	Region     string    `json:"region"`      // the node's region
	Version    string    `json:"version"`     // the node's sessiond version
	CreatedAt  time.Time `json:"created_at"`  // when the copy was taken, node's clock
	DataFormat uint64    `json:"data_format"` // the data file's format (storage.FormatVersion)
	Clock      string    `json:"clock"`       // the node's HLC high-water mark in the copy
	Size       int64     `json:"size"`        // bytes of the data file that follow
	Users      int       `json:"users"`       // counts in the copy (storage.Stats)
	Sessions   int       `json:"sessions"`
	Messages   int       `json:"messages"`
}

// Writer writes a backup file to an underlying writer: NewWriter writes the header,
// Write takes exactly Header.Size bytes of body, and Close writes the trailer. Not safe
// for concurrent use.
type Writer struct {
	w    io.Writer
	sum  hash.Hash
	seal []byte
	size int64
	n    int64
}

// NewWriter writes the header for h to w and returns the Writer of the body, whose
// trailer Close seals with seal (SealKey of the node's cluster key).
func NewWriter(w io.Writer, h Header, seal []byte) (*Writer, error) {
	if h.Size < 0 {
		return nil, fmt.Errorf("backup header: negative size %d", h.Size)
	}
	if len(seal) == 0 {
		return nil, errors.New("backup: no seal key")
	}
	j, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode backup header: %w", err)
	}
	if len(j) > MaxHeader {
		return nil, fmt.Errorf("backup header of %d bytes, at most %d", len(j), MaxHeader)
	}
	bw := &Writer{w: w, sum: sha256.New(), seal: seal, size: h.Size}
	head := append([]byte(nil), headMagic...)
	head = binary.BigEndian.AppendUint16(head, FileVersion)
	head = binary.BigEndian.AppendUint32(head, uint32(len(j))) // #nosec G115 -- at most MaxHeader
	head = append(head, j...)
	bw.sum.Write(head)
	if _, err := w.Write(head); err != nil {
		return nil, fmt.Errorf("write backup header: %w", err)
	}
	return bw, nil
}

// Write writes body bytes. Writing more than Header.Size bytes in all is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if int64(len(p)) > w.size-w.n {
		return 0, fmt.Errorf("backup body over its declared %d bytes", w.size)
	}
	n, err := w.w.Write(p)
	w.sum.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Close writes the trailer once exactly Header.Size bytes of body were written; it does
// not close the underlying writer.
func (w *Writer) Close() error {
	if w.n != w.size {
		return fmt.Errorf("backup body of %d bytes, declared %d", w.n, w.size)
	}
	t := append([]byte(nil), trailMagic...)
	t = binary.BigEndian.AppendUint64(t, uint64(w.n)) // #nosec G115 -- w.n >= 0
	sum := w.sum.Sum(nil)
	id := sealID(w.seal)
	t = append(append(t, sum...), id...)
	t = append(t, sealMAC(w.seal, uint64(w.n), sum, id)...) // #nosec G115 -- w.n >= 0
	_, err := w.w.Write(t)
	return err
}

// Reader reads a backup file: NewReader reads and checks the header, Read returns the
// body, and at the body's end Read checks the trailer, returning io.EOF only if the
// file is complete and its checksum matches (ErrTruncated or ErrChecksum otherwise).
// The file must end with the trailer. Not safe for concurrent use.
type Reader struct {
	r       *bufio.Reader
	version uint16
	h       Header
	sum     hash.Hash
	left    int64
	err     error  // sticky: the end's result
	digest  []byte // the checked checksum, once complete
	id, mac []byte // the seal's key ID and MAC, once complete (version 2)
}

// NewReader reads the header from r. It returns ErrForeign for a file that is not a
// backup, an error naming both versions for a backup file format it does not read, and
// ErrTruncated for a file that ends within the header.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	sum := sha256.New()
	fixed := make([]byte, len(headMagic)+2+4)
	if n, err := io.ReadFull(br, fixed); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty", ErrForeign)
		}
		if !bytes.HasPrefix(fixed, headMagic[:min(n, len(headMagic))]) {
			return nil, ErrForeign
		}
		return nil, fmt.Errorf("%w: within the header", ErrTruncated)
	}
	if !bytes.Equal(fixed[:len(headMagic)], headMagic) {
		return nil, ErrForeign
	}
	v := binary.BigEndian.Uint16(fixed[len(headMagic):])
	if v != 1 && v != FileVersion {
		return nil, fmt.Errorf("backup file format %d, this build reads formats 1 and %d: use the sessiond release that took it", v, FileVersion)
	}
	hl := binary.BigEndian.Uint32(fixed[len(headMagic)+2:])
	if hl > MaxHeader {
		return nil, fmt.Errorf("%w: header of %d bytes, at most %d", ErrChecksum, hl, MaxHeader)
	}
	j := make([]byte, hl)
	if _, err := io.ReadFull(br, j); err != nil {
		return nil, fmt.Errorf("%w: within the header", ErrTruncated)
	}
	sum.Write(fixed)
	sum.Write(j)
	var h Header
	if err := json.Unmarshal(j, &h); err != nil || h.Size < 0 {
		return nil, fmt.Errorf("%w: unreadable header", ErrChecksum)
	}
	return &Reader{r: br, version: v, h: h, sum: sum, left: h.Size}, nil
}

// Header returns the file's header.
func (r *Reader) Header() Header { return r.h }

// Read reads body bytes; see Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.left == 0 {
		r.err = r.trailer()
		return 0, r.err
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.sum.Write(p[:n])
	r.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if r.left > 0 {
			r.err = fmt.Errorf("%w: %d of %d bytes of data", ErrTruncated, r.h.Size-r.left, r.h.Size)
			return n, r.err
		}
		err = nil
	}
	return n, err
}

// trailer reads and checks the trailer.
func (r *Reader) trailer() error {
	n := trailerLen
	if r.version == 1 {
		n = trailerLenV1
	}
	t := make([]byte, n)
	if _, err := io.ReadFull(r.r, t); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: the trailer is missing", ErrTruncated)
		}
		return err
	}
	if !bytes.Equal(t[:len(trailMagic)], trailMagic) {
		return fmt.Errorf("%w: no trailer where the data ends", ErrChecksum)
	}
	if n := binary.BigEndian.Uint64(t[len(trailMagic):]); n != uint64(r.h.Size) { // #nosec G115 -- Size >= 0
		return fmt.Errorf("%w: trailer says %d bytes of data, header %d", ErrChecksum, n, r.h.Size)
	}
	sum := t[len(trailMagic)+8 : trailerLenV1]
	if !bytes.Equal(sum, r.sum.Sum(nil)) {
		return ErrChecksum
	}
	if _, err := r.r.ReadByte(); !errors.Is(err, io.EOF) {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: data after the trailer", ErrChecksum)
	}
	r.digest = sum
	if r.version >= 2 {
		r.id, r.mac = t[trailerLenV1:trailerLenV1+sealIDLen], t[trailerLenV1+sealIDLen:]
	}
	return io.EOF
}

// SealedBy reports whether one of seals (SealKey of cluster keys) sealed r's file, once
// it is complete; never for a file of format 1, which has no seal.
func (r *Reader) SealedBy(seals [][]byte) bool {
	if !r.Complete() || r.mac == nil {
		return false
	}
	for _, seal := range seals {
		id := sealID(seal)
		if bytes.Equal(id, r.id) && hmac.Equal(sealMAC(seal, uint64(r.h.Size), r.digest, id), r.mac) { // #nosec G115 -- Size >= 0
			return true
		}
	}
	return false
}

// Sealed reports whether r's complete file carries a seal (format 2), checked or not.
func (r *Reader) Sealed() bool { return r.Complete() && r.mac != nil }

// Complete reports whether r's file has been read to its checked end: Read returned
// io.EOF.
func (r *Reader) Complete() bool { return errors.Is(r.err, io.EOF) }
