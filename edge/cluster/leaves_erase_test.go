package cluster

// HandleLeaves answering a handoff offer with a conversation's erasure markers
// (erasedConvs, markerOfOffered); the cases an outside review found.

import (
	"context"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// entryChange is an entry of conv, as a Change.
func entryChange(conv string, ts crdt.Timestamp, seq uint64, m crdt.Message) storage.Change {
	e := crdt.Entry{ID: crdt.EntryID{TS: ts, Seq: seq}, Data: m.AppendBinary(nil)}
	return storage.Change{Key: storage.LogKey(conv, e.ID), Conv: conv, Entry: e}
}

func openTestDB(t *testing.T, name string, cs ...storage.Change) *storage.DB {
	t.Helper()
	db, err := storage.Open(filepath.Join(t.TempDir(), name+".db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if len(cs) > 0 {
		if _, err := db.ApplyRemote(context.Background(), cs); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func pairsOfDB(t *testing.T, db *storage.DB, leaf int, keys ...string) []storage.KeyHash {
	t.Helper()
	all, err := db.LeafPairs(context.Background(), leaf)
	if err != nil {
		t.Fatal(err)
	}
	var out []storage.KeyHash
	for _, kh := range all {
		if slices.Contains(keys, kh.Key) {
			out = append(out, kh)
		}
	}
	return out
}

// TestErasedOfferSplitLeaf: the offerer x stores two stray messages m1 < m2 of a
// conversation; its leaf is too large for one request, so leafRequests splits it by key
// range between them: [.., m2) offers m1, [m2, ..) offers m2. The holder h stores the
// conversation's erasure marker, whose key (later than both messages) lies in the second
// range only; h answers each request with it, and checkLeavesReply must accept that
// honest reply (were it refused as invalid, x's offer would fail every round, never
// settle, and back h off).
func TestErasedOfferSplitLeaf(t *testing.T) {
	ctx := context.Background()
	wall := time.Now().Add(-time.Hour).UnixNano()
	conv := crdt.ConversationID("u1", "u2")
	m1 := entryChange(conv, fuzzTS(wall+1, 0xa1), 1, crdt.Message{From: "u1", To: "u2", Body: "one"})
	m2 := entryChange(conv, fuzzTS(wall+2, 0xa1), 2, crdt.Message{From: "u1", To: "u2", Body: "two"})
	mk := entryChange(conv, fuzzTS(wall+3, 0xb2), 1, crdt.ErasureMarker("u1", "u2"))
	leaf := crdt.KeyHomes(m1.Key).First()

	x := openTestDB(t, "x", m1, m2)
	h := openTestDB(t, "h", mk)
	offered := pairsOfDB(t, x, leaf, m1.Key, m2.Key)
	if len(offered) != 2 {
		t.Fatalf("x's pairs: %v", offered)
	}
	L := len(m1.Key)
	budget := 77 + 3*L // one pair per request (see leafRequests' sizes)
	var reqs []LeavesRequest
	for req, err := range leafRequests([]int{leaf}, budget, func(int) ([]storage.KeyHash, error) { return offered, nil }) {
		if err != nil {
			t.Fatal(err)
		}
		for i := range req.Leaves {
			req.Leaves[i].Only = true // as offer sets it
		}
		reqs = append(reqs, req)
	}
	if len(reqs) != 2 {
		t.Fatalf("leafRequests made %d requests, want the leaf split in 2", len(reqs))
	}
	r := NewReplicator(Config{DB: h, Transport: &replyTransport{}, MoveRate: -1})
	for i, req := range reqs {
		rep, err := r.HandleLeaves(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkLeavesReply(req, rep); err != nil {
			t.Errorf("request %d (range [%q, %q)): the holder's own reply is refused: %v", i, req.Leaves[0].From, req.Leaves[0].To, err)
		}
	}
}

// TestErasedOfferMarkerWanted: the offerer x stores, as a stray, an erasure marker of
// its own (a participant being erased there, x left one). The holder h holds another
// marker of the conversation (from the node that served the erasure), but not x's.
// Markers are never deleted by other markers, so h would store x's marker, and must
// want it: offer counts a key not wanted as confirmed ("same"), and once every holder
// answered so, x would drop a key no holder holds.
func TestErasedOfferMarkerWanted(t *testing.T) {
	ctx := context.Background()
	wall := time.Now().Add(-time.Hour).UnixNano()
	conv := crdt.ConversationID("u1", "u2")
	mkU := entryChange(conv, fuzzTS(wall+3, 0xb2), 1, crdt.ErasureMarker("u1", "u2"))
	mkX := entryChange(conv, fuzzTS(wall+4, 0xa1), 5, crdt.ErasureMarker("u2", "u1")) // x's, and of the other participant
	leaf := crdt.KeyHomes(mkX.Key).First()

	x := openTestDB(t, "x", mkU, mkX)
	h := openTestDB(t, "h", mkU)
	req := LeavesRequest{Leaves: []LeafPairs{{Leaf: leaf, Only: true, Pairs: pairsOfDB(t, x, leaf, mkU.Key, mkX.Key)}}}
	r := NewReplicator(Config{DB: h, Transport: &replyTransport{}, MoveRate: -1})
	rep, err := r.HandleLeaves(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkLeavesReply(req, rep); err != nil {
		t.Fatal(err)
	}
	// Would h store it? Apply it to a copy of what h holds.
	probe := openTestDB(t, "probe", mkU)
	res, err := probe.ApplyRemote(ctx, []storage.Change{mkX})
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied == 1 && !slices.Contains(rep.Want, mkX.Key) {
		t.Errorf("the holder would store x's marker %s (applied %+v) but does not want it (reply wants %q): x counts it confirmed and may drop it, held by nobody", mkX.Key, res, rep.Want)
	}
}

// TestErasedOfferReadBound: a handoff offer (a leaf compared Only) that names one key
// the holder lacks of a long conversation must not make the holder read the whole
// conversation to learn whether it holds an erasure marker (a conversation holding a
// marker holds nothing else: one entry tells). The request costs the peer a hundred
// bytes; the conversation here is 200 entries, 12 MB. The bound checked: what the offer
// of that key costs beyond the same offer without it stays under 1 MiB (allocations, the
// least of three runs).
func TestErasedOfferReadBound(t *testing.T) {
	ctx := context.Background()
	wall := time.Now().Add(-time.Hour).UnixNano()
	conv := crdt.ConversationID("u1", "u2")
	body := string(make([]byte, 60<<10))
	h := openTestDB(t, "h")
	for batch := range 10 {
		var cs []storage.Change
		for i := range 20 {
			n := batch*20 + i
			cs = append(cs, entryChange(conv, fuzzTS(wall+int64(n), 0xa1), uint64(n+1), crdt.Message{From: "u1", To: "u2", Body: body}))
		}
		if _, err := h.ApplyRemote(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	stray := entryChange(conv, fuzzTS(wall+1000, 0xc3), 1, crdt.Message{From: "u2", To: "u1", Body: "new"})
	leaf := crdt.KeyHomes(stray.Key).First()
	r := NewReplicator(Config{DB: h, Transport: &replyTransport{}, MoveRate: -1})
	alloc := func(pairs []storage.KeyHash) uint64 {
		req := LeavesRequest{Leaves: []LeafPairs{{Leaf: leaf, Only: true, Pairs: pairs}}}
		var best uint64
		for i := range 3 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			rep, err := r.HandleLeaves(ctx, req)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			_ = rep
			if d := after.TotalAlloc - before.TotalAlloc; i == 0 || d < best {
				best = d
			}
		}
		return best
	}
	base := alloc(nil)
	one := alloc([]storage.KeyHash{{Key: stray.Key, Hash: 1}})
	t.Logf("offer of nothing: %d bytes allocated; of one key of the 200-entry (12 MB) conversation: %d", base, one)
	if one > base+1<<20 {
		t.Errorf("offering one key of a long conversation costs the holder %d bytes more than offering nothing (bound 1 MiB)", one-base)
	}
}
