package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Every encoding starts with a format version byte, so that a node can refuse bytes from
// a newer release rather than misread them. Decoders never panic, never allocate more than
// a small multiple of their input's length, and accept only canonical encodings, so equal
// values have equal bytes (digests rely on it).
const (
	mapVersion     = 1
	entryVersion   = 1
	cursorVersion  = 1
	messageVersion = 1
	// markerVersion begins an erasure marker's encoding instead of messageVersion: the
	// first byte tells a marker from a message, and a reader that predates markers
	// refuses one as an unknown version rather than show it as a message.
	markerVersion = 2
)

var (
	errShort   = errors.New("truncated input")
	errVersion = errors.New("unknown encoding version")
	errVarint  = errors.New("non-canonical varint")
)

// decoder reads from a byte slice and remembers the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	// binary.Uvarint also accepts overlong forms (0x80 0x00 for 0), which would give one
	// value two encodings; only the shortest form, whose last byte is not 0, is canonical.
	if n > 1 && d.b[n-1] == 0 {
		d.fail(errVarint)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns the next length-prefixed byte string, aliasing the input.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) timestamp() Timestamp {
	b := d.fixed(TimestampSize)
	if d.err != nil {
		return Timestamp{}
	}
	ts, _ := DecodeTimestamp(b)
	return ts
}

func (d *decoder) version(want byte) {
	if v := d.byte(); d.err == nil && v != want {
		d.fail(fmt.Errorf("%w %d, want %d", errVersion, v, want))
	}
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%d trailing bytes", len(d.b)))
	}
	return d.err
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// Field flag bits in the encoding.
const flagDeleted = 1

// AppendBinary appends the canonical encoding of m: fields in ascending name order.
func (m *Map) AppendBinary(b []byte) []byte {
	b = append(b, mapVersion)
	b = binary.AppendUvarint(b, uint64(len(m.fields)))
	var buf [16]string // the names of most records fit: no allocation
	names := buf[:0]
	for name := range m.fields {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		f := m.fields[name]
		b = appendBytes(b, []byte(name))
		b = append(b, byte(f.Kind))
		b = f.TS.AppendBinary(b)
		var flags byte
		if f.Deleted {
			flags |= flagDeleted
		}
		b = append(b, flags)
		b = appendBytes(b, f.Value)
	}
	return b
}

// EncodedLen returns len(m.AppendBinary(nil)) without encoding: the bytes m takes
// stored or sent. It allocates nothing.
func (m *Map) EncodedLen() int {
	n := 1 + uvarintLen(uint64(len(m.fields)))
	for name, f := range m.fields {
		n += uvarintLen(uint64(len(name))) + len(name) + 1 + TimestampSize + 1 +
			uvarintLen(uint64(len(f.Value))) + len(f.Value)
	}
	return n
}

// MarshalBinary returns the canonical encoding of m.
func (m *Map) MarshalBinary() ([]byte, error) { return m.AppendBinary(nil), nil }

// PeekValue returns the value of field name in the Map encoded in b, aliasing b, without
// decoding the rest: fields are encoded in ascending name order, so it reads only those
// before name. It reports false when b holds no such field with a value, or is not a
// well-formed encoding as far as it reads (DecodeMap checks the whole).
func PeekValue(b []byte, name string) ([]byte, bool) {
	d := decoder{b: b}
	d.version(mapVersion)
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		fname := d.bytes()
		d.fixed(1 + TimestampSize) // kind, timestamp
		flags := d.byte()
		value := d.bytes()
		if d.err != nil {
			return nil, false
		}
		switch c := compareName(fname, name); {
		case c == 0:
			return value, flags&flagDeleted == 0
		case c > 0:
			return nil, false
		}
	}
	return nil, false
}

// compareName is strings.Compare(string(b), s) without converting b.
func compareName(b []byte, s string) int {
	for i := 0; i < len(b) && i < len(s); i++ {
		if b[i] != s[i] {
			return int(b[i]) - int(s[i])
		}
	}
	return len(b) - len(s)
}

// DecodeMap decodes a Map encoded by AppendBinary. The result does not alias b.
func DecodeMap(b []byte) (Map, error) {
	d := decoder{b: b}
	d.version(mapVersion)
	n := d.uvarint()
	// Each field takes at least 24 bytes; a count beyond that is a lie.
	if d.err == nil && n > uint64(len(d.b))/24 {
		d.fail(errShort)
	}
	var m Map
	prev := ""
	for i := uint64(0); i < n && d.err == nil; i++ {
		name := string(d.bytes())
		kind := Kind(d.byte())
		ts := d.timestamp()
		flags := d.byte()
		value := d.bytes()
		if d.err != nil {
			break
		}
		switch {
		case i > 0 && name <= prev:
			d.fail(fmt.Errorf("field %q out of order", name))
		case !kind.valid():
			d.fail(fmt.Errorf("field %q: unknown kind %d", name, kind))
		case flags&^flagDeleted != 0:
			d.fail(fmt.Errorf("field %q: unknown flags %#x", name, flags))
		case flags&flagDeleted != 0 && (kind != KindLWW || len(value) != 0):
			d.fail(fmt.Errorf("field %q: malformed tombstone", name))
		case kind == KindFlag && len(value) != 0:
			d.fail(fmt.Errorf("field %q: flag with a value", name))
		case kind == KindMax && len(value) != 8:
			d.fail(fmt.Errorf("field %q: max register of %d bytes", name, len(value)))
		}
		if d.err != nil {
			break
		}
		f := Field{Kind: kind, TS: ts, Deleted: flags&flagDeleted != 0}
		if !f.Deleted && kind != KindFlag {
			f.Value = slices.Clone(value)
			if f.Value == nil {
				f.Value = []byte{}
			}
		}
		if m.fields == nil {
			m.fields = make(map[string]Field, n)
		}
		m.fields[name] = f
		prev = name
	}
	if err := d.end(); err != nil {
		return Map{}, fmt.Errorf("decode map: %w", err)
	}
	m.origins = m.latestByNode()
	return m, nil
}

// AppendBinary appends the encoding of e.
func (e Entry) AppendBinary(b []byte) []byte {
	b = append(b, entryVersion)
	b = e.ID.AppendBinary(b)
	return appendBytes(b, e.Data)
}

// DecodeEntry decodes an Entry encoded by AppendBinary. The result does not alias b.
func DecodeEntry(b []byte) (Entry, error) {
	d := decoder{b: b}
	d.version(entryVersion)
	idb := d.fixed(EntryIDSize)
	data := d.bytes()
	if err := d.end(); err != nil {
		return Entry{}, fmt.Errorf("decode entry: %w", err)
	}
	id, _ := DecodeEntryID(idb)
	if id.Seq == 0 {
		return Entry{}, errors.New("decode entry: zero sequence number")
	}
	return Entry{ID: id, Data: slices.Clone(data)}, nil
}

// AppendBinary appends the canonical encoding of c: origins ascending, zero marks omitted.
func (c Cursor) AppendBinary(b []byte) []byte {
	origins := make([]NodeID, 0, len(c))
	for o, s := range c {
		if s > 0 {
			origins = append(origins, o)
		}
	}
	slices.Sort(origins)
	b = append(b, cursorVersion)
	b = binary.AppendUvarint(b, uint64(len(origins)))
	for _, o := range origins {
		b = binary.BigEndian.AppendUint64(b, uint64(o))
		b = binary.AppendUvarint(b, c[o])
	}
	return b
}

// DecodeCursor decodes a Cursor encoded by AppendBinary.
func DecodeCursor(b []byte) (Cursor, error) {
	d := decoder{b: b}
	d.version(cursorVersion)
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b))/9 {
		d.fail(errShort)
	}
	c := make(Cursor)
	var prev NodeID
	for i := uint64(0); i < n && d.err == nil; i++ {
		ob := d.fixed(8)
		s := d.uvarint()
		if d.err != nil {
			break
		}
		o := NodeID(binary.BigEndian.Uint64(ob))
		if (i > 0 && o <= prev) || s == 0 {
			d.fail(errors.New("non-canonical cursor"))
			break
		}
		c[o] = s
		prev = o
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("decode cursor: %w", err)
	}
	return c, nil
}

// Message is the payload of a conversation log entry. From and To are user IDs.
//
// An entry is either a message or an erasure marker (Erased): the tombstone of a
// conversation, saying that From was erased and the conversation is gone. A marker has
// no body. It is written into the conversation's log so that it reaches every node that
// holds the log — also those that hold only To's records and never see From's — and each
// deletes its copy of the conversation (see storage's package documentation).
type Message struct {
	From   string
	To     string
	Body   string // empty in a marker
	Erased bool   // an erasure marker: From was erased
}

// ErasureMarker returns the erasure marker of the conversation between from, who was
// erased, and to.
func ErasureMarker(from, to string) Message {
	return Message{From: from, To: to, Erased: true}
}

// AppendBinary appends the encoding of m: a version byte, then From, To and Body, each
// length-prefixed. A marker has its own version byte and no body (Body is not encoded).
func (m Message) AppendBinary(b []byte) []byte {
	if m.Erased {
		b = append(b, markerVersion)
		b = appendBytes(b, []byte(m.From))
		return appendBytes(b, []byte(m.To))
	}
	b = append(b, messageVersion)
	b = appendBytes(b, []byte(m.From))
	b = appendBytes(b, []byte(m.To))
	return appendBytes(b, []byte(m.Body))
}

// DecodeMessage decodes a Message or an erasure marker encoded by AppendBinary. Both
// participants must be non-empty and without '/'.
func DecodeMessage(b []byte) (Message, error) {
	d := decoder{b: b}
	var m Message
	if len(b) > 0 && b[0] == markerVersion {
		d.version(markerVersion)
		m = Message{From: string(d.bytes()), To: string(d.bytes()), Erased: true}
	} else {
		d.version(messageVersion)
		m = Message{From: string(d.bytes()), To: string(d.bytes()), Body: string(d.bytes())}
	}
	if err := d.end(); err != nil {
		return Message{}, fmt.Errorf("decode message: %w", err)
	}
	if m.From == "" || m.To == "" || strings.Contains(m.From+m.To, "/") {
		return Message{}, errors.New("decode message: bad participants")
	}
	return m, nil
}

// IsErasureMarker reports whether data, a log entry's data, is encoded as an erasure
// marker. It reads only the version byte and allocates nothing; whether the marker is
// well formed is DecodeMessage's to say.
func IsErasureMarker(data []byte) bool {
	return len(data) > 0 && data[0] == markerVersion
}
