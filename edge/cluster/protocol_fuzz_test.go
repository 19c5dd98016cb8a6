package cluster

// Fuzz targets for the decoders of every node-to-node sync message. A peer is trusted
// only after authentication, but a decoder must still hold against any bytes: a bug or
// a corrupted stream must cost an error, never a panic or an allocation out of
// proportion to the input. Each target checks that arbitrary bytes decode without panic
// and within allocBound, that what a decoder accepts is well formed, and that it
// re-encodes to a message that decodes to the same value (decode(encode(x)) == x for
// every decoded x). Run one with
//
//	go test -run=^$ -fuzz=FuzzPushRequest -fuzztime=60s ./edge/cluster/

import (
	"bytes"
	"encoding"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// allocBound is the most heap a decoder may allocate for n input bytes. The largest
// decoded element is a storage.Change (120 bytes) for at least 2 input bytes, and
// append may double a slice once more; what a Change holds (keys, fields, bodies) is
// copied from the input. 16 KiB covers fixed costs (error values, small maps).
func allocBound(n int) uint64 { return 256*uint64(n) + 16<<10 }

// checkDecode decodes b into m and fails if that allocates more than allocBound(len(b)).
// It returns the decoder's error.
func checkDecode(t *testing.T, m encoding.BinaryUnmarshaler, b []byte) error {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := m.UnmarshalBinary(b)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > allocBound(len(b)) {
		t.Fatalf("decoding %d bytes allocated %d bytes, bound %d (err %v)", len(b), got, allocBound(len(b)), err)
	}
	return err
}

// reencode encodes m, which a decoder accepted, decodes it into fresh and returns the
// encoding; fresh must then equal m.
func reencode(t *testing.T, m encoding.BinaryMarshaler, fresh encoding.BinaryUnmarshaler) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatalf("re-encode a decoded %T: %v", m, err)
	}
	if err := fresh.UnmarshalBinary(b); err != nil {
		t.Fatalf("decode the re-encoding of a decoded %T: %v", m, err)
	}
	return b
}

func fuzzTS(wall int64, node crdt.NodeID) crdt.Timestamp {
	return crdt.Timestamp{Wall: wall, Logical: 3, Node: node}
}

// sampleSyncChanges returns changes of every kind the replicator sends: user, claim and
// session records (fresh, revoked, erased), and message log entries.
func sampleSyncChanges() []storage.Change {
	wall := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC).UnixNano()
	ts := fuzzTS(wall, 0xa1)
	user := crdt.NewUser("alice", "$argon2id$v=19$m=65536,t=1,p=2$c2FsdA$aGFzaA", map[string]string{"first_name": "Alice", "email": "a@example.com"}, ts)
	session := crdt.NewSession("u1", time.Unix(0, wall).Add(24*time.Hour), time.Hour, ts)
	session.Set(crdt.DataPrefix+"theme", []byte(`"dark"`), fuzzTS(wall+1, 0xb2))
	session.Delete(crdt.DataPrefix+"cart", fuzzTS(wall+2, 0xb2))
	revoked := crdt.NewSession("u1", time.Unix(0, wall).Add(24*time.Hour), time.Hour, ts)
	revoked.Merge(crdt.RevokeSession(fuzzTS(wall+3, 0xc3)))
	erased := crdt.NewUser("bob", "h", nil, ts)
	erased.Merge(crdt.EraseUser(fuzzTS(wall+4, 0xc3)))
	conv := crdt.ConversationID("u1", "u2")
	e := crdt.Entry{ID: crdt.EntryID{TS: fuzzTS(wall+5, 0xa1), Seq: 7},
		Data: crdt.Message{From: "u1", To: "u2", Body: "hello"}.AppendBinary(nil)}
	return []storage.Change{
		{Key: crdt.UserKey("u1"), Map: user},
		{Key: crdt.ClaimKey("alice"), Map: crdt.NewClaim("u1", ts)},
		{Key: crdt.SessionKey("0123456789abcdef0123456789abcdef"), Map: session},
		{Key: crdt.SessionKey("fedcba9876543210fedcba9876543210"), Map: revoked},
		{Key: crdt.UserKey("u2"), Map: erased},
		{Key: crdt.UserKey("u3"), Map: crdt.RevokeSessionsUntil(fuzzTS(wall+6, 0xa1), time.Minute)},
		{Key: storage.LogKey(conv, e.ID), Conv: conv, Entry: e},
	}
}

func sampleBookmark() crdt.Bookmark {
	var b crdt.Bookmark
	b.Add(fuzzTS(1_700_000_000_000_000_000, 0xa1))
	b.Add(fuzzTS(1_700_000_000_000_000_123, 0xb2))
	return b
}

// mustEncode returns m's encoding for a seed.
func mustEncode(f *testing.F, m encoding.BinaryMarshaler) []byte {
	f.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		f.Fatalf("encode seed %T: %v", m, err)
	}
	return b
}

// addSeeds adds each encoding, and a truncated and a bit-flipped copy of it.
func addSeeds(f *testing.F, encs ...[]byte) {
	for _, b := range encs {
		f.Add(b)
		f.Add(b[:len(b)/2])
		flipped := bytes.Clone(b)
		flipped[len(flipped)*2/3] ^= 0x40
		f.Add(flipped)
	}
}

func changesEqual(a, b []storage.Change) bool {
	return slices.EqualFunc(a, b, func(x, y storage.Change) bool {
		return x.Key == y.Key && x.Conv == y.Conv && x.Map.Equal(y.Map) &&
			x.Entry.ID == y.Entry.ID && bytes.Equal(x.Entry.Data, y.Entry.Data)
	})
}

func branchesEqual(a, b []BranchLeaves) bool {
	return slices.EqualFunc(a, b, func(x, y BranchLeaves) bool {
		return x.Branch == y.Branch && slices.Equal(x.Leaves, y.Leaves)
	})
}

func leavesEqual(a, b []LeafPairs) bool {
	return slices.EqualFunc(a, b, func(x, y LeafPairs) bool {
		return x.Leaf == y.Leaf && x.From == y.From && x.To == y.To && slices.Equal(x.Pairs, y.Pairs)
	})
}

func FuzzPushRequest(f *testing.F) {
	cs := sampleSyncChanges()
	addSeeds(f,
		mustEncode(f, PushRequest{From: 0xa1, Changes: cs, Through: fuzzTS(1_700_000_000_000_000_000, 0xa1)}),
		mustEncode(f, PushRequest{From: 0xb2, Changes: cs[:1]}),
		mustEncode(f, PushRequest{From: 0xb2}),
	)
	f.Add([]byte(header(kindPush, ProtocolVersion).u64(1).uvarint(1 << 40)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m PushRequest
		if checkDecode(t, &m, b) != nil {
			return
		}
		var again PushRequest
		reencode(t, m, &again)
		if again.From != m.From || again.Through != m.Through || again.Era != m.Era || !changesEqual(again.Changes, m.Changes) {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

func FuzzPushReply(f *testing.F) {
	addSeeds(f, mustEncode(f, PushReply{Era: 0xfeedface}), mustEncode(f, PushReply{}))
	f.Add([]byte(header(kindReply, ProtocolVersion)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m PushReply
		if checkDecode(t, &m, b) != nil {
			return
		}
		var again PushReply
		reencode(t, m, &again)
		if again != m {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

func FuzzDigestRequest(f *testing.F) {
	hashes := make([]uint64, crdt.DigestBranches)
	for i := range hashes {
		hashes[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	addSeeds(f,
		mustEncode(f, DigestRequest{Branches: hashes}),
		mustEncode(f, DigestRequest{Branches: make([]uint64, crdt.DigestBranches)}),
	)
	f.Add([]byte(header(kindDigest, ProtocolVersion).uvarint(1 << 40)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m DigestRequest
		if checkDecode(t, &m, b) != nil {
			return
		}
		if len(m.Branches) != crdt.DigestBranches {
			t.Fatalf("accepted a digest of %d branches", len(m.Branches))
		}
		var again DigestRequest
		reencode(t, m, &again)
		if !slices.Equal(again.Branches, m.Branches) {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

func FuzzDigestReply(f *testing.F) {
	leaves := make([]uint64, crdt.DigestBranches)
	for i := range leaves {
		leaves[i] = uint64(i+1) * 0xbf58476d1ce4e5b9
	}
	addSeeds(f,
		mustEncode(f, DigestReply{Branches: []BranchLeaves{{Branch: 0, Leaves: leaves}, {Branch: crdt.DigestBranches - 1, Leaves: leaves}}, Have: sampleBookmark()}),
		mustEncode(f, DigestReply{}),
	)
	f.Add([]byte(header(kindReply, ProtocolVersion).uvarint(1).uvarint(1 << 40)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m DigestReply
		if checkDecode(t, &m, b) != nil {
			return
		}
		for _, bl := range m.Branches {
			if bl.Branch < 0 || bl.Branch >= crdt.DigestBranches || len(bl.Leaves) != crdt.DigestBranches {
				t.Fatalf("accepted branch %d with %d leaves", bl.Branch, len(bl.Leaves))
			}
		}
		var again DigestReply
		reencode(t, m, &again)
		if !branchesEqual(again.Branches, m.Branches) || !again.Have.Equal(m.Have) {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

func FuzzLeavesRequest(f *testing.F) {
	pairs := []storage.KeyHash{{Key: crdt.UserKey("u1"), Hash: 1}, {Key: crdt.SessionKey("0123"), Hash: 1 << 63}, {Key: "l/u1:u2/00", Hash: 42}}
	addSeeds(f,
		mustEncode(f, LeavesRequest{Leaves: []LeafPairs{
			{Leaf: 0, Pairs: pairs},
			{Leaf: crdt.DigestLeaves - 1, Pairs: pairs[:1], From: "s/", To: "u/"},
			{Leaf: 17, From: "n/alice"},
		}}),
		mustEncode(f, LeavesRequest{}),
	)
	f.Add([]byte(header(kindLeaves, ProtocolVersion).uvarint(1).uvarint(0).uvarint(1 << 40)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m LeavesRequest
		if checkDecode(t, &m, b) != nil {
			return
		}
		for _, lp := range m.Leaves {
			if lp.Leaf < 0 || lp.Leaf >= crdt.DigestLeaves || (lp.To != "" && lp.To <= lp.From) {
				t.Fatalf("accepted leaf %d with range [%q, %q)", lp.Leaf, lp.From, lp.To)
			}
		}
		var again LeavesRequest
		reencode(t, m, &again)
		if !leavesEqual(again.Leaves, m.Leaves) {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

func FuzzLeavesReply(f *testing.F) {
	cs := sampleSyncChanges()
	addSeeds(f,
		mustEncode(f, LeavesReply{Changes: cs, Want: []string{crdt.UserKey("u9"), crdt.SessionKey("ab")}, Truncated: true}),
		mustEncode(f, LeavesReply{Want: []string{"n/bob"}}),
		mustEncode(f, LeavesReply{}),
	)
	f.Add([]byte(header(kindReply, ProtocolVersion).uvarint(0).uvarint(1 << 40)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m LeavesReply
		if checkDecode(t, &m, b) != nil {
			return
		}
		var again LeavesReply
		reencode(t, m, &again)
		if again.Truncated != m.Truncated || !slices.Equal(again.Want, m.Want) || !changesEqual(again.Changes, m.Changes) {
			t.Fatalf("decode(encode(%+v)) = %+v", m, again)
		}
	})
}

// TestSyncMessageSeeds checks the seeds themselves: each sample message survives a round
// trip, so the fuzz targets start from real, accepted encodings.
func TestSyncMessageSeeds(t *testing.T) {
	cs := sampleSyncChanges()
	for _, tc := range []struct {
		m     encoding.BinaryMarshaler
		fresh encoding.BinaryUnmarshaler
	}{
		{PushRequest{From: 0xa1, Changes: cs, Through: fuzzTS(5, 0xa1), Era: 0xfeed}, new(PushRequest)},
		{PushReply{Era: 0xbeef}, new(PushReply)},
		{DigestRequest{Branches: make([]uint64, crdt.DigestBranches)}, new(DigestRequest)},
		{DigestReply{Branches: []BranchLeaves{{Branch: 3, Leaves: make([]uint64, crdt.DigestBranches)}}, Have: sampleBookmark(), Era: 42}, new(DigestReply)},
		{LeavesRequest{Leaves: []LeafPairs{{Leaf: 9, Pairs: []storage.KeyHash{{Key: "u/x", Hash: 1}}, From: "a", To: "b"}}}, new(LeavesRequest)},
		{LeavesReply{Changes: cs, Want: []string{"u/y"}, Truncated: true}, new(LeavesReply)},
	} {
		t.Run(fmt.Sprintf("%T", tc.m), func(t *testing.T) {
			b := reencode(t, tc.m, tc.fresh)
			again, err := tc.fresh.(encoding.BinaryMarshaler).MarshalBinary()
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("encode(decode(encode(m))) = %x, %v; want %x", again, err, b)
			}
		})
	}
}

// TestSyncMessageHostileCounts: list lengths as large as the input could hold, or as the
// hard caps allow, over 64 KiB of zeros, stay within allocBound however decoding ends.
func TestSyncMessageHostileCounts(t *testing.T) {
	pad := make([]byte, 64<<10)
	for _, tc := range []struct {
		name string
		m    encoding.BinaryUnmarshaler
		b    wire
	}{
		{"PushRequest", new(PushRequest), header(kindPush, ProtocolVersion).u64(1).uvarint(uint64(len(pad) / 2))},
		{"DigestRequest", new(DigestRequest), header(kindDigest, ProtocolVersion).uvarint(crdt.DigestBranches)},
		{"DigestReply", new(DigestReply), header(kindReply, ProtocolVersion).uvarint(crdt.DigestBranches)},
		{"LeavesRequest", new(LeavesRequest), header(kindLeaves, ProtocolVersion).uvarint(maxLeafList)},
		{"LeavesReply", new(LeavesReply), header(kindReply, ProtocolVersion).uvarint(uint64(len(pad) / 2))},
		// The hard caps, beyond what the input could hold: refused before allocating.
		{"PushRequestCap", new(PushRequest), header(kindPush, ProtocolVersion).u64(1).uvarint(maxChanges)},
		{"LeavesReplyCap", new(LeavesReply), header(kindReply, ProtocolVersion).uvarint(0).uvarint(maxChanges)},
		{"LeavesRequestPairsCap", new(LeavesRequest), header(kindLeaves, ProtocolVersion).uvarint(1).uvarint(0).uvarint(maxChanges)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_ = checkDecode(t, tc.m, append(tc.b, pad...))
		})
	}
}
