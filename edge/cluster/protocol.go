package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// ProtocolVersion is the newest sync protocol version this build speaks, and
// MinProtocolVersion the oldest. Each node announces the range it speaks in serf tags
// (tagProto: the newest, tagProtoMin: the oldest), each pair of nodes speaks the highest
// version both speak (Peer.Proto), and a node that shares no version with a member treats
// it as partitioned (and logs so, once). Every message starts with its version, and the
// decoders read every version in the range, so a node refuses a message it cannot read
// rather than misread it.
//
// Compatibility promise: release N speaks at least N-1's newest version, so a rolling
// upgrade keeps every pair of nodes replicating. A release that changes the wire bumps
// ProtocolVersion, keeps MinProtocolVersion at the previous release's ProtocolVersion,
// and encodes and decodes both (the message's Version says which); the release after it
// may raise MinProtocolVersion. See docs/PROTOCOL.md.
//
// Version 2 added PushRequest.Through and DigestReply.Have (bookmarks); version 3 added
// LeafPairs.From and To (a leaf compared in parts, so no request outgrows MaxMessage);
// version 4 added DigestRequest.Mask and the placement fingerprints of PushRequest and
// DigestReply (placement: each node holds some partitions; see holding.go); version 5
// added the eras of PushRequest, DigestReply and PushReply (see haveState.era).
const ProtocolVersion = 5

// MinProtocolVersion is the oldest sync protocol version this build speaks. Releases
// before the one that introduced negotiation (tagProtoMin) speak only their own version.
const MinProtocolVersion = 5

// ProtocolRange is a range of sync protocol versions, both ends included.
type ProtocolRange struct {
	Min, Max uint8
}

// Supported returns the versions this build's codecs read and write:
// [MinProtocolVersion, ProtocolVersion] (and one more while a test fakes the next
// version; see fakeNext).
func Supported() ProtocolRange {
	r := ProtocolRange{MinProtocolVersion, ProtocolVersion}
	if fakeNext.Load() {
		r.Max++
	}
	return r
}

// fakeNext, set only by tests (export_test.go), makes the codecs read and write
// ProtocolVersion+1 as well: a fake next version that differs on the wire only in its
// version byte, so that negotiation, mixed clusters and rolling upgrades between two
// versions can be tested before a second version exists.
var fakeNext atomic.Bool

// Valid reports whether r is a non-empty range within Supported.
func (r ProtocolRange) Valid() bool {
	s := Supported()
	return r.Min <= r.Max && r.Min >= s.Min && r.Max <= s.Max
}

// Contains reports whether v lies in r.
func (r ProtocolRange) Contains(v uint8) bool { return r.Min <= v && v <= r.Max }

// Common returns the highest version both r and o contain, and false if none.
func (r ProtocolRange) Common(o ProtocolRange) (uint8, bool) {
	hi, lo := min(r.Max, o.Max), max(r.Min, o.Min)
	return hi, lo <= hi
}

// String formats r as [min,max].
func (r ProtocolRange) String() string { return fmt.Sprintf("[%d,%d]", r.Min, r.Max) }

// wireVersion returns the version to encode a message of Version v in: v, or
// ProtocolVersion for 0; it fails on a version the codecs do not speak.
func wireVersion(v uint8) (uint8, error) {
	if v == 0 {
		return ProtocolVersion, nil
	}
	if !Supported().Contains(v) {
		return 0, fmt.Errorf("sync protocol version %d: this build speaks %s", v, Supported())
	}
	return v, nil
}

// MaxMessage bounds every sync message, request or reply, in bytes.
const MaxMessage = 32 << 20

// Message kinds.
const (
	kindPush    = 1
	kindDigest  = 2
	kindLeaves  = 3
	kindReply   = 4 // 5 is kindCounters (counters.go)
	maxChanges  = 1 << 20
	maxLeafList = crdt.DigestLeaves
	maskWords   = crdt.Partitions / 64
)

// PushRequest carries changes committed at (or relayed by) From.
type PushRequest struct {
	// Version is the protocol version the message is encoded in (0: ProtocolVersion);
	// the decoder sets it. Every message type has one; a reply is in its request's.
	Version uint8
	From    crdt.NodeID
	Changes []storage.Change
	// Through, when not zero, is a reading of From's clock such that the receiver, once it
	// has applied this push, holds every write From stamped at or before it, or the write
	// that replaced it on From (From's pushes to it since its worker's first anti-entropy
	// round, in order, carried them all; see pushPass and storage.DB.Overtaken).
	Through crdt.Timestamp
	// Placement is the fingerprint of the placement the sender pushed by (0: every node
	// holds everything); Through counts for all the receiver holds only for a receiver
	// with the same placement.
	Placement uint64
	// Held, with Through under placement, is the partitions the sender pushed for (the
	// receiver's, by the sender's placement): Through counts for those the receiver
	// holds whatever its own placement.
	Held []uint64
	// Era, with Through, is the receiver's era (DigestReply.Era) as of the sender's latest
	// completed anti-entropy round with it: Through counts only if the receiver is still
	// in that era (it has dropped nothing it then held since).
	Era uint64
}

// PushReply answers a push with the receiver's era: a sender whose pushes went by
// another era runs a round with it before it tells Through again.
type PushReply struct {
	Version uint8
	Era     uint64
}

// DigestRequest carries the sender's branch hashes.
type DigestRequest struct {
	Version  uint8
	Branches []uint64 // crdt.DigestBranches of them
	// Mask, when not nil, is the partitions to compare (crdt.Digest.Restrict): Branches
	// are of the digest restricted to it, and the receiver restricts its own the same way.
	Mask []uint64
}

// DigestReply lists, for each branch whose hash differs, the receiver's leaf hashes.
type DigestReply struct {
	Version  uint8
	Branches []BranchLeaves
	// Have is what the replier held before it read its digest: for each origin (itself
	// included), every write stamped at or before the mark. A requester that completes
	// the round holds all of it too.
	Have crdt.Bookmark
	// HaveMask, when not nil, is the partitions Have is about (of those the request
	// compared): the replier holds them, and knows it holds Have of them. Nil: all.
	HaveMask []uint64
	// Era is the replier's era when it read its digest (see PushRequest.Era).
	Era uint64
}

// BranchLeaves is one branch's leaf hashes.
type BranchLeaves struct {
	Branch int
	Leaves []uint64 // crdt.DigestBranches of them
}

// LeavesRequest carries the sender's (key, hash) pairs for the leaves it found differing.
type LeavesRequest struct {
	Version uint8
	Leaves  []LeafPairs
}

// LeafPairs is one leaf's keys and pair hashes, or a part of them: those with keys from
// From (inclusive; "" is the leaf's start) to To (exclusive; "" is the leaf's end). The
// receiver compares only its own keys in that range.
type LeafPairs struct {
	Leaf     int
	Pairs    []storage.KeyHash
	From, To string
	// Only: compare only the listed keys. The sender holds keys of this leaf without
	// holding the partition (a key with another home, or a leftover of an earlier
	// placement) and offers them; it wants none of the receiver's other keys — but for
	// the erasure markers of a conversation it offers entries of, which a receiver that
	// holds them sends beside (its messages there are purged: see erasedConvs).
	Only bool
}

// covers reports whether key lies in lp's range.
func (lp *LeafPairs) covers(key string) bool {
	return key >= lp.From && (lp.To == "" || key < lp.To)
}

// LeavesReply carries the receiver's state of every key in those leaves that the sender
// lacks or holds differently, and the keys the receiver wants from the sender. Truncated
// says the reply was cut at the size bound; the next round finishes it.
type LeavesReply struct {
	Version   uint8
	Changes   []storage.Change
	Want      []string
	Truncated bool
}

// wire is a small append-only encoder.
type wire []byte

func (w wire) uvarint(v uint64) wire { return binary.AppendUvarint(w, v) }
func (w wire) u64(v uint64) wire     { return binary.BigEndian.AppendUint64(w, v) }
func (w wire) bytes(b []byte) wire   { return append(w.uvarint(length(len(b))), b...) }

type reader struct {
	b       []byte
	err     error
	version uint8 // of the message, once header has read it
}

var errTruncated = errors.New("sync message truncated")

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errTruncated
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil || len(r.b) < 8 {
		r.err = errTruncated
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > length(len(r.b)) {
		r.err = errTruncated
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// count reads a list length and checks it against what the rest of the input could hold
// (each element at least minSize bytes) and a hard cap, so hostile lengths cannot make us
// allocate.
func (r *reader) count(minSize int, limit uint64) int {
	n := r.uvarint()
	if r.err == nil && (n > limit || n > length(len(r.b)/minSize)) {
		r.err = fmt.Errorf("sync message: list of %d elements does not fit", n)
	}
	if r.err != nil {
		return 0
	}
	return int(n) // #nosec G115 -- n ≤ len(r.b), checked above
}

// index reads a number that is used as an index below limit, and fails on any other.
func (r *reader) index(what string, limit int) int {
	n := r.uvarint()
	if r.err == nil && n >= uint64(limit) { // #nosec G115 -- limit is a positive constant
		r.err = fmt.Errorf("sync message: %s %d out of range [0, %d)", what, n, limit)
	}
	if r.err != nil {
		return 0
	}
	return int(n) // #nosec G115 -- n < limit, checked above
}

// length returns len(n) as a uint64 for an encoder.
func length(n int) uint64 { return uint64(n) } // #nosec G115 -- lengths are never negative

func (r *reader) header(kind byte) {
	if len(r.b) < 2 {
		r.err = errTruncated
		return
	}
	if s := Supported(); !s.Contains(r.b[0]) {
		r.err = fmt.Errorf("sync protocol version %d, this node speaks %s", r.b[0], s)
		return
	}
	r.version = r.b[0]
	if r.b[1] != kind {
		r.err = fmt.Errorf("sync message kind %d, want %d", r.b[1], kind)
		return
	}
	r.b = r.b[2:]
}

// end reports the first error met, or trailing bytes: any error wraps ErrInvalidMessage.
func (r *reader) end() error {
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("sync message: %d trailing bytes", len(r.b))
	}
	return invalid(r.err)
}

// header starts a message of kind in version v (see wireVersion).
func header(kind, v byte) wire { return wire{v, kind} }

func (w wire) changes(cs []storage.Change) wire {
	w = w.uvarint(length(len(cs)))
	for _, c := range cs {
		w = w.bytes(c.AppendBinary(nil))
	}
	return w
}

func (r *reader) changes() []storage.Change {
	n := r.count(2, maxChanges)
	out := make([]storage.Change, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		b := r.bytes()
		if r.err != nil {
			break
		}
		c, err := storage.DecodeChange(b)
		if err != nil {
			r.err = err
			break
		}
		out = append(out, c)
	}
	return out
}

func (w wire) pairs(ps []storage.KeyHash) wire {
	w = w.uvarint(length(len(ps)))
	for _, p := range ps {
		w = w.bytes([]byte(p.Key)).u64(p.Hash)
	}
	return w
}

func (r *reader) pairs() []storage.KeyHash {
	n := r.count(9, maxChanges)
	out := make([]storage.KeyHash, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		k := string(r.bytes())
		out = append(out, storage.KeyHash{Key: k, Hash: r.u64()})
	}
	return out
}

// MarshalBinary encodes a PushRequest.
func (m PushRequest) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindPush, v).u64(uint64(m.From)).changes(m.Changes).timestamp(m.Through).u64(m.Placement).uvarint(length(len(m.Held)))
	for _, x := range m.Held {
		w = w.u64(x)
	}
	return w.u64(m.Era), nil
}

func (w wire) timestamp(ts crdt.Timestamp) wire { return ts.AppendBinary(w) }

func (r *reader) timestamp() crdt.Timestamp {
	if r.err != nil || len(r.b) < crdt.TimestampSize {
		r.err = errTruncated
		return crdt.Timestamp{}
	}
	ts, err := crdt.DecodeTimestamp(r.b)
	if err != nil {
		r.err = err
		return crdt.Timestamp{}
	}
	r.b = r.b[crdt.TimestampSize:]
	return ts
}

func (r *reader) bookmark() crdt.Bookmark {
	p := r.bytes()
	if r.err != nil {
		return crdt.Bookmark{}
	}
	b, err := crdt.DecodeBookmark(p)
	if err != nil {
		r.err = fmt.Errorf("sync message: %w", err)
	}
	return b
}

// UnmarshalBinary decodes a PushRequest.
func (m *PushRequest) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindPush)
	m.Version = r.version
	m.From = crdt.NodeID(r.u64())
	m.Changes = r.changes()
	m.Through = r.timestamp()
	m.Placement = r.u64()
	m.Held = r.mask()
	m.Era = r.u64()
	return r.end()
}

// MarshalBinary encodes a PushReply.
func (m PushReply) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	return header(kindReply, v).u64(m.Era), nil
}

// UnmarshalBinary decodes a PushReply.
func (m *PushReply) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindReply)
	m.Version = r.version
	m.Era = r.u64()
	return r.end()
}

// MarshalBinary encodes a DigestRequest.
func (m DigestRequest) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindDigest, v).uvarint(length(len(m.Branches)))
	for _, h := range m.Branches {
		w = w.u64(h)
	}
	w = w.uvarint(length(len(m.Mask)))
	for _, x := range m.Mask {
		w = w.u64(x)
	}
	return w, nil
}

// UnmarshalBinary decodes a DigestRequest.
func (m *DigestRequest) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindDigest)
	m.Version = r.version
	n := r.count(8, crdt.DigestBranches)
	m.Branches = make([]uint64, n)
	for i := range m.Branches {
		m.Branches[i] = r.u64()
	}
	if r.err == nil && n != crdt.DigestBranches {
		r.err = fmt.Errorf("digest of %d branches, want %d", n, crdt.DigestBranches)
	}
	m.Mask = r.mask()
	return r.end()
}

// MarshalBinary encodes a DigestReply.
func (m DigestReply) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindReply, v).uvarint(length(len(m.Branches)))
	for _, bl := range m.Branches {
		w = w.uvarint(length(bl.Branch)).uvarint(length(len(bl.Leaves)))
		for _, h := range bl.Leaves {
			w = w.u64(h)
		}
	}
	w = w.bytes(m.Have.AppendBinary(nil)).uvarint(length(len(m.HaveMask)))
	for _, x := range m.HaveMask {
		w = w.u64(x)
	}
	return w.u64(m.Era), nil
}

// UnmarshalBinary decodes a DigestReply.
func (m *DigestReply) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindReply)
	m.Version = r.version
	n := r.count(2, crdt.DigestBranches)
	for i := 0; i < n && r.err == nil; i++ {
		bl := BranchLeaves{Branch: r.index("branch", crdt.DigestBranches)}
		k := r.count(8, crdt.DigestBranches)
		bl.Leaves = make([]uint64, k)
		for j := range bl.Leaves {
			bl.Leaves[j] = r.u64()
		}
		if r.err == nil && k != crdt.DigestBranches {
			r.err = errors.New("digest reply: bad branch")
		}
		m.Branches = append(m.Branches, bl)
	}
	m.Have = r.bookmark()
	m.HaveMask = r.mask()
	m.Era = r.u64()
	return r.end()
}

// mask reads a partition mask: none, or maskWords words.
func (r *reader) mask() []uint64 {
	k := r.count(8, maskWords)
	if k == 0 {
		return nil
	}
	out := make([]uint64, k)
	for i := range out {
		out[i] = r.u64()
	}
	if r.err == nil && k != maskWords {
		r.err = fmt.Errorf("partition mask of %d words, want %d", k, maskWords)
	}
	return out
}

// MarshalBinary encodes a LeavesRequest.
func (m LeavesRequest) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindLeaves, v).uvarint(length(len(m.Leaves)))
	for _, lp := range m.Leaves {
		only := uint64(0)
		if lp.Only {
			only = 1
		}
		w = w.uvarint(length(lp.Leaf)).pairs(lp.Pairs).bytes([]byte(lp.From)).bytes([]byte(lp.To)).uvarint(only)
	}
	return w, nil
}

// UnmarshalBinary decodes a LeavesRequest.
func (m *LeavesRequest) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindLeaves)
	m.Version = r.version
	n := r.count(2, maxLeafList)
	for i := 0; i < n && r.err == nil; i++ {
		lp := LeafPairs{Leaf: r.index("leaf", crdt.DigestLeaves)}
		lp.Pairs = r.pairs()
		lp.From, lp.To = string(r.bytes()), string(r.bytes())
		lp.Only = r.uvarint() == 1
		switch {
		case r.err != nil:
		case lp.To != "" && lp.To <= lp.From:
			r.err = errors.New("leaves request: empty key range")
		}
		m.Leaves = append(m.Leaves, lp)
	}
	return r.end()
}

// MarshalBinary encodes a LeavesReply.
func (m LeavesReply) MarshalBinary() ([]byte, error) {
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindReply, v).changes(m.Changes).uvarint(length(len(m.Want)))
	for _, k := range m.Want {
		w = w.bytes([]byte(k))
	}
	t := uint64(0)
	if m.Truncated {
		t = 1
	}
	return w.uvarint(t), nil
}

// UnmarshalBinary decodes a LeavesReply.
func (m *LeavesReply) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.header(kindReply)
	m.Version = r.version
	m.Changes = r.changes()
	n := r.count(1, maxChanges)
	for i := 0; i < n && r.err == nil; i++ {
		m.Want = append(m.Want, string(r.bytes()))
	}
	m.Truncated = r.uvarint() == 1
	return r.end()
}
