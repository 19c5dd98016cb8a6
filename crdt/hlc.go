package crdt

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// NodeID identifies a replica. It is random, generated when a node's data directory is
// created, so a node whose disk is wiped comes back as a new origin and never reuses the
// sequence numbers of its former self.
type NodeID uint64

// String returns the ID as 16 hex digits.
func (id NodeID) String() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	return hex.EncodeToString(b[:])
}

// ParseNodeID parses the form String returns.
func ParseNodeID(s string) (NodeID, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 8 {
		return 0, fmt.Errorf("parse node id %q: want 16 hex digits", s)
	}
	return NodeID(binary.BigEndian.Uint64(b)), nil
}

// Timestamp is a hybrid logical clock reading: physical time in nanoseconds since the Unix
// epoch, a logical counter for events within the same nanosecond or while the wall clock
// lags, and the issuing node, which breaks ties. Timestamps are totally ordered by
// (Wall, Logical, Node). The zero Timestamp is before every issued one.
type Timestamp struct {
	Wall    int64
	Logical uint32
	Node    NodeID
}

// TimestampSize is the length of a Timestamp's binary encoding.
const TimestampSize = 20

// Compare returns -1, 0 or +1 as t is before, equal to or after u.
func (t Timestamp) Compare(u Timestamp) int {
	switch {
	case t.Wall < u.Wall:
		return -1
	case t.Wall > u.Wall:
		return 1
	case t.Logical < u.Logical:
		return -1
	case t.Logical > u.Logical:
		return 1
	case t.Node < u.Node:
		return -1
	case t.Node > u.Node:
		return 1
	}
	return 0
}

// Less reports whether t orders before u.
func (t Timestamp) Less(u Timestamp) bool { return t.Compare(u) < 0 }

// IsZero reports whether t is the zero Timestamp.
func (t Timestamp) IsZero() bool { return t == Timestamp{} }

// Time returns the physical part of t.
func (t Timestamp) Time() time.Time { return time.Unix(0, t.Wall).UTC() }

// String formats t for logs and tests.
func (t Timestamp) String() string {
	return fmt.Sprintf("%d.%d@%s", t.Wall, t.Logical, t.Node)
}

// AppendBinary appends the fixed-size, order-preserving encoding of t: comparing two
// encodings as bytes orders them as Compare does (for Wall ≥ 0).
func (t Timestamp) AppendBinary(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Wall))
	b = binary.BigEndian.AppendUint32(b, t.Logical)
	return binary.BigEndian.AppendUint64(b, uint64(t.Node))
}

// DecodeTimestamp decodes the first TimestampSize bytes of b.
func DecodeTimestamp(b []byte) (Timestamp, error) {
	if len(b) < TimestampSize {
		return Timestamp{}, errShort
	}
	return Timestamp{
		Wall:    int64(binary.BigEndian.Uint64(b)),
		Logical: binary.BigEndian.Uint32(b[8:]),
		Node:    NodeID(binary.BigEndian.Uint64(b[12:])),
	}, nil
}

// ErrClockSkew is matched (errors.Is) by the error Clock.Observe returns for a remote
// timestamp too far ahead of local physical time.
var ErrClockSkew = errors.New("remote timestamp too far ahead")

// SkewError reports a rejected remote timestamp.
type SkewError struct {
	Remote Timestamp
	Local  time.Time     // local physical time when it was observed
	Bound  time.Duration // the configured bound it exceeded
}

func (e *SkewError) Error() string {
	ahead := time.Duration(e.Remote.Wall - e.Local.UnixNano())
	return fmt.Sprintf("remote timestamp %s is %s ahead of local time, bound %s", e.Remote, ahead, e.Bound)
}

// Is makes errors.Is(err, ErrClockSkew) true.
func (e *SkewError) Is(target error) bool { return target == ErrClockSkew }

// Clock is a hybrid logical clock (Kulkarni et al.). It issues strictly increasing
// timestamps even when the physical clock stalls or steps back, and moves past every
// remote timestamp it observes, so a write that causally follows another orders after it.
// A Clock is safe for concurrent use.
type Clock struct {
	node    NodeID
	now     func() time.Time
	maxSkew time.Duration

	mu   sync.Mutex
	last Timestamp
}

// NewClock returns a clock for node reading physical time from now (time.Now when nil).
// Observe rejects remote timestamps more than maxSkew ahead of now; maxSkew ≤ 0 disables the
// check.
func NewClock(node NodeID, now func() time.Time, maxSkew time.Duration) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{node: node, now: now, maxSkew: maxSkew}
}

// Node returns the node the clock issues timestamps for.
func (c *Clock) Node() NodeID { return c.node }

// PhysicalNow returns the clock's physical time source's current reading.
func (c *Clock) PhysicalNow() time.Time { return c.now() }

// Next issues a new timestamp, strictly after every timestamp issued or observed before.
func (c *Clock) Next() Timestamp {
	pt := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.last.Wall {
		c.last = Timestamp{Wall: pt, Node: c.node}
	} else {
		c.last = bump(c.last)
		c.last.Node = c.node
	}
	return c.last
}

// Last returns the latest timestamp issued or observed, without advancing the clock.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Observe advances the clock past remote, a timestamp received from another node. A
// remote timestamp more than the skew bound ahead of local physical time is rejected with a
// *SkewError and leaves the clock unchanged.
func (c *Clock) Observe(remote Timestamp) error {
	now := c.now()
	pt := now.UnixNano()
	// remote.Wall-pt can overflow int64 (a far-past remote wraps to "far ahead"); when
	// remote.Wall > pt the difference fits in a uint64.
	if c.maxSkew > 0 && remote.Wall > pt && uint64(remote.Wall-pt) > uint64(c.maxSkew) {
		return &SkewError{Remote: remote, Local: now, Bound: c.maxSkew}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.last
	wall := max(l.Wall, remote.Wall, pt)
	var next Timestamp
	switch {
	case wall == l.Wall && wall == remote.Wall:
		next = bump(Timestamp{Wall: wall, Logical: max(l.Logical, remote.Logical)})
	case wall == l.Wall:
		next = bump(l)
	case wall == remote.Wall:
		next = bump(remote)
	default:
		next = Timestamp{Wall: wall}
	}
	next.Node = c.node
	c.last = next
	return nil
}

// bump returns the smallest (Wall, Logical) after t's, carrying into Wall when the
// logical counter would overflow.
func bump(t Timestamp) Timestamp {
	if t.Logical == math.MaxUint32 {
		return Timestamp{Wall: t.Wall + 1, Node: t.Node}
	}
	t.Logical++
	return t
}
