package crdt

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Bookmark names what a reader must have seen: for each origin node, a clock reading
// (its Wall and Logical) such that every write that node stamped at or before it must be
// reflected in the state read. A write stamped t by node n is covered by a Bookmark whose
// mark for n is at or after t.
//
// Bookmarks combine by taking the later mark per node (Merge); that is a join, so the
// order in which a client combines them does not matter. A Bookmark holds at most
// MaxBookmarkMarks marks: beyond that, the marks with the oldest physical times are
// dropped (writes that old have long reached every live node). The zero Bookmark covers
// nothing and asks for nothing. Methods with a pointer receiver modify a Bookmark in place;
// a copy made by assignment shares its storage, so only Clone gives an independent one.
// A Bookmark is not safe for concurrent modification.
type Bookmark struct {
	marks []Timestamp // sorted by Node, one per Node; Node is the origin
}

// NewBookmark returns an empty Bookmark that keeps its marks in buf's storage (buf's
// length is ignored) until they outgrow it: a caller that builds many short-lived
// bookmarks can spare the allocations.
func NewBookmark(buf []Timestamp) Bookmark { return Bookmark{marks: buf[:0]} }

// MaxBookmarkMarks bounds the origins a Bookmark names.
const MaxBookmarkMarks = 32

// MaxBookmarkText bounds the text form ParseBookmark accepts.
const MaxBookmarkText = 1024

// Len returns the number of origins b names.
func (b Bookmark) Len() int { return len(b.marks) }

// IsZero reports whether b names nothing.
func (b Bookmark) IsZero() bool { return len(b.marks) == 0 }

// Marks returns b's marks, one per origin (the Timestamp's Node), sorted by node. The
// slice is b's own: do not modify it.
func (b Bookmark) Marks() []Timestamp { return b.marks }

// Mark returns b's mark for node, or the zero Timestamp.
func (b Bookmark) Mark(node NodeID) Timestamp {
	if i, ok := b.find(node); ok {
		return b.marks[i]
	}
	return Timestamp{}
}

func (b Bookmark) find(node NodeID) (int, bool) {
	return slices.BinarySearchFunc(b.marks, node, func(t Timestamp, n NodeID) int {
		switch {
		case t.Node < n:
			return -1
		case t.Node > n:
			return 1
		}
		return 0
	})
}

// Add raises b's mark for ts.Node to ts, if ts is later, and reports whether b changed.
// Timestamps no clock issues — node 0, a negative wall time, or wall and logical both 0 —
// are ignored.
func (b *Bookmark) Add(ts Timestamp) bool {
	if ts.Node == 0 || ts.Wall < 0 || ts.Wall == 0 && ts.Logical == 0 {
		return false
	}
	i, ok := b.find(ts.Node)
	if ok {
		if !b.marks[i].Less(ts) {
			return false
		}
		b.marks[i] = ts
		return true
	}
	b.marks = slices.Insert(b.marks, i, ts)
	if len(b.marks) > MaxBookmarkMarks {
		b.trim()
		_, kept := b.find(ts.Node) // the new mark may be the oldest, dropped at once
		return kept
	}
	return true
}

// Merge raises b to cover everything o covers and reports whether b changed.
func (b *Bookmark) Merge(o Bookmark) bool {
	changed := false
	for _, ts := range o.marks {
		if b.Add(ts) {
			changed = true
		}
	}
	return changed
}

// AddMap adds the timestamp of every field of m: afterwards b covers the state m shows.
func (b *Bookmark) AddMap(m *Map) {
	if o := m.origins; o != nil || m.views != nil {
		if o == nil {
			o = m.views.latestByNode(m)
		}
		for _, ts := range o {
			b.Add(ts)
		}
		return
	}
	for _, f := range m.fields {
		b.Add(f.TS)
	}
}

// Clone returns a copy of b that shares nothing with it.
func (b Bookmark) Clone() Bookmark { return Bookmark{marks: slices.Clone(b.marks)} }

// Covers reports whether b covers ts: b's mark for ts.Node is at or after it.
func (b Bookmark) Covers(ts Timestamp) bool {
	i, ok := b.find(ts.Node)
	return ok && !b.marks[i].Less(ts)
}

// CoveredBy reports whether have covers every mark of b.
func (b Bookmark) CoveredBy(have Bookmark) bool {
	for _, ts := range b.marks {
		if !have.Covers(ts) {
			return false
		}
	}
	return true
}

// Missing returns the marks of b that have does not cover, in node order; nil if none.
func (b Bookmark) Missing(have Bookmark) []Timestamp {
	var out []Timestamp
	for _, ts := range b.marks {
		if !have.Covers(ts) {
			out = append(out, ts)
		}
	}
	return out
}

// Equal reports whether b and o hold the same marks.
func (b Bookmark) Equal(o Bookmark) bool { return slices.Equal(b.marks, o.marks) }

// trim drops the marks with the oldest physical times beyond MaxBookmarkMarks.
func (b *Bookmark) trim() {
	for len(b.marks) > MaxBookmarkMarks {
		oldest := 0
		for i, ts := range b.marks {
			if ts.Wall < b.marks[oldest].Wall || ts.Wall == b.marks[oldest].Wall && ts.Logical < b.marks[oldest].Logical {
				oldest = i
			}
		}
		b.marks = slices.Delete(b.marks, oldest, oldest+1)
	}
}

// bookmarkVersion is the first byte of a Bookmark's binary form.
const bookmarkVersion = 1

// AppendBinary appends b's binary form: a version byte, the number of marks, and for each
// mark in node order the node (8 bytes, big-endian), its wall time and its logical
// counter (unsigned varints).
func (b Bookmark) AppendBinary(dst []byte) []byte {
	dst = append(dst, bookmarkVersion)
	dst = binary.AppendUvarint(dst, uint64(len(b.marks)))
	for _, ts := range b.marks {
		dst = binary.BigEndian.AppendUint64(dst, uint64(ts.Node))
		dst = binary.AppendUvarint(dst, uint64(ts.Wall))
		dst = binary.AppendUvarint(dst, uint64(ts.Logical))
	}
	return dst
}

var errBookmark = errors.New("invalid bookmark")

// DecodeBookmark decodes the form AppendBinary writes. It refuses anything else: another
// version, more than MaxBookmarkMarks marks, nodes out of order or repeated, a zero node,
// negative times, overlong varints and trailing bytes.
func DecodeBookmark(p []byte) (Bookmark, error) {
	marks, err := decodeMarks(p, nil)
	return Bookmark{marks: marks}, err
}

// decodeMarks decodes the binary form into dst's storage.
func decodeMarks(p []byte, dst []Timestamp) ([]Timestamp, error) {
	if len(p) < 2 || p[0] != bookmarkVersion {
		return nil, errBookmark
	}
	p = p[1:]
	n, k := binary.Uvarint(p)
	if k <= 0 || k != uvarintLen(n) || n > MaxBookmarkMarks {
		return nil, errBookmark
	}
	p = p[k:]
	marks := dst[:0]
	if cap(marks) < int(n) {
		marks = make([]Timestamp, 0, n)
	}
	for range n {
		if len(p) < 8 {
			return nil, errBookmark
		}
		node := NodeID(binary.BigEndian.Uint64(p))
		p = p[8:]
		wall, k1 := binary.Uvarint(p)
		if k1 <= 0 || k1 != uvarintLen(wall) || wall > 1<<63-1 {
			return nil, errBookmark
		}
		p = p[k1:]
		logical, k2 := binary.Uvarint(p)
		if k2 <= 0 || k2 != uvarintLen(logical) || logical > 1<<32-1 {
			return nil, errBookmark
		}
		p = p[k2:]
		if node == 0 || wall == 0 && logical == 0 || len(marks) > 0 && marks[len(marks)-1].Node >= node {
			return nil, errBookmark
		}
		marks = append(marks, Timestamp{Wall: int64(wall), Logical: uint32(logical), Node: node})
	}
	if len(p) != 0 {
		return nil, errBookmark
	}
	return marks, nil
}

func uvarintLen(v uint64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], v)
}

// bookmarkEncoding is the text form's alphabet, strict: one spelling per value.
var bookmarkEncoding = base64.RawURLEncoding.Strict()

// maxBookmarkBinary bounds the binary form's length.
const maxBookmarkBinary = 2 + MaxBookmarkMarks*(8+binary.MaxVarintLen64+5)

// AppendText appends b's text form (see String) to dst.
func (b Bookmark) AppendText(dst []byte) []byte {
	if b.IsZero() {
		return dst
	}
	var buf [maxBookmarkBinary]byte
	return bookmarkEncoding.AppendEncode(dst, b.AppendBinary(buf[:0]))
}

// String returns b's text form: its binary form in unpadded URL-safe base64 (RFC 4648
// §5), or "" for the zero Bookmark.
func (b Bookmark) String() string {
	var buf [2 * maxBookmarkBinary]byte
	return string(b.AppendText(buf[:0]))
}

// ParseBookmark parses a text form: one bookmark as String writes it, or several joined
// by commas (a client's way to combine bookmarks without reading them), which are merged.
// Surrounding spaces are ignored; "" is the zero Bookmark. Text longer than
// MaxBookmarkText is refused.
func ParseBookmark(s string) (Bookmark, error) {
	var b Bookmark
	err := b.Parse(s)
	return b, err
}

// Parse sets b to the bookmark of text form s, as ParseBookmark reads it, reusing b's
// storage. On error b is left empty.
func (b *Bookmark) Parse(s string) error {
	b.marks = b.marks[:0]
	if len(s) > MaxBookmarkText {
		return fmt.Errorf("%w: longer than %d bytes", errBookmark, MaxBookmarkText)
	}
	first := true
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		if first {
			marks, err := decodeText(part, b.marks)
			if err != nil {
				b.marks = b.marks[:0]
				return err
			}
			b.marks, first = marks, false
			continue
		}
		marks, err := decodeText(part, nil)
		if err != nil {
			b.marks = b.marks[:0]
			return err
		}
		b.Merge(Bookmark{marks: marks})
	}
	return nil
}

// smallText is the longest text form decoded without allocating: a bookmark of up to three
// marks, what most requests carry.
const smallText = 96

// decodeText decodes one bookmark's text form into dst's storage.
func decodeText(part string, dst []Timestamp) ([]Timestamp, error) {
	// The strict decoder still skips CR and LF: refuse them, so that the text form has one
	// spelling per value.
	if strings.ContainsAny(part, "\r\n") {
		return nil, errBookmark
	}
	var bin []byte
	var err error
	if len(part) <= smallText {
		var src [smallText]byte
		var buf [smallText * 3 / 4]byte
		var n int
		n, err = bookmarkEncoding.Decode(buf[:], src[:copy(src[:], part)])
		bin = buf[:n]
		if err == nil {
			return decodeMarks(bin, dst)
		}
	} else {
		bin, err = bookmarkEncoding.DecodeString(part)
	}
	if err != nil {
		return nil, errBookmark
	}
	return decodeMarks(bin, dst)
}
