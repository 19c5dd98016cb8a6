package cluster

// Fuzz targets for what the replicator does with a peer's bytes once they decode: the
// replies to its anti-entropy rounds, pushes and handoff offers (FuzzReplicatorReplies),
// and the requests it serves (FuzzServeMessage), each against a real storage.DB. A faulty
// peer may send anything; the replicator must answer with an error, never a panic, must
// call an invalid reply invalid (ErrInvalidMessage) and back the peer off, and must not
// let a reply make it believe it holds writes it could not hold. Run one with
//
//	go test -run=^$ -fuzz=FuzzReplicatorReplies -fuzztime=60s ./edge/cluster/

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// replyTransport answers every call with a reply decoded from fixed bytes, as the TLS
// transport decodes a peer's reply.
type replyTransport struct {
	push, digest, leaves []byte
	calls                int
}

func decodeReply(b []byte, rep interface{ UnmarshalBinary([]byte) error }) error {
	if err := rep.UnmarshalBinary(b); err != nil {
		return invalid(err)
	}
	return nil
}

func (t *replyTransport) Push(_ context.Context, _ Peer, _ PushRequest) (PushReply, error) {
	t.calls++
	var rep PushReply
	return rep, decodeReply(t.push, &rep)
}

func (t *replyTransport) Digest(_ context.Context, _ Peer, _ DigestRequest) (DigestReply, error) {
	t.calls++
	var rep DigestReply
	return rep, decodeReply(t.digest, &rep)
}

func (t *replyTransport) Leaves(_ context.Context, _ Peer, _ LeavesRequest) (LeavesReply, error) {
	t.calls++
	var rep LeavesReply
	return rep, decodeReply(t.leaves, &rep)
}

// fuzzDB opens a DB in a temporary directory holding the sample changes.
func fuzzDB(f *testing.F) *storage.DB {
	f.Helper()
	db, err := storage.Open(filepath.Join(f.TempDir(), "fuzz.db"), storage.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	if _, err := db.ApplyRemote(context.Background(), sampleSyncChanges()); err != nil {
		f.Fatal(err)
	}
	return db
}

// everyLeafDiffers is a digest reply in which every branch differs.
func everyLeafDiffers() DigestReply {
	var rep DigestReply
	for b := range crdt.DigestBranches {
		leaves := make([]uint64, crdt.DigestBranches)
		for j := range leaves {
			leaves[j] = uint64(b*crdt.DigestBranches+j) | 1
		}
		rep.Branches = append(rep.Branches, BranchLeaves{Branch: b, Leaves: leaves})
	}
	return rep
}

func FuzzReplicatorReplies(f *testing.F) {
	db := fuzzDB(f)
	cs := sampleSyncChanges()
	var keys []string
	for _, c := range cs {
		keys = append(keys, c.Key)
	}
	far := crdt.Timestamp{Wall: time.Now().Add(1000 * time.Hour).UnixNano(), Node: 0xfa}
	var farHave crdt.Bookmark
	farHave.Add(far)
	digests := [][]byte{
		mustEncode(f, everyLeafDiffers()),
		mustEncode(f, DigestReply{Have: farHave, Era: 7}),
		mustEncode(f, DigestReply{Branches: everyLeafDiffers().Branches[:3], HaveMask: make([]uint64, maskWords)}),
	}
	leaves := [][]byte{
		mustEncode(f, LeavesReply{Changes: cs, Want: keys}),
		mustEncode(f, LeavesReply{Want: []string{crdt.UserKey("nobody-asked")}}),
		mustEncode(f, LeavesReply{Truncated: true}),
	}
	pushes := [][]byte{mustEncode(f, PushReply{Era: 1}), {ProtocolVersion, kindReply}}
	for i, d := range digests {
		f.Add(d, leaves[i%len(leaves)], pushes[i%len(pushes)])
		f.Add(d[:len(d)/2], leaves[i%len(leaves)], pushes[(i+1)%len(pushes)])
	}
	f.Fuzz(func(t *testing.T, digest, leavesRep, push []byte) {
		tr := &replyTransport{push: push, digest: digest, leaves: leavesRep}
		r := NewReplicator(Config{DB: db, Transport: tr, MoveRate: -1})
		r.Start()
		defer r.Close()
		// A reply can make a round long (64 rounds of cut replies, each applied durably);
		// a deadline bounds it, as the worker's context does.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		peer := Peer{ID: 0xfa, Name: "faulty", Addr: "faulty:1"}

		var d DigestReply
		var l LeavesReply
		var p PushReply
		digestOK, leavesOK, pushOK := d.UnmarshalBinary(digest) == nil, l.UnmarshalBinary(leavesRep) == nil, p.UnmarshalBinary(push) == nil

		err := r.SyncWith(ctx, peer)
		switch {
		case !digestOK && !errors.Is(err, ErrInvalidMessage):
			t.Fatalf("sync with an undecodable digest reply: err %v, want ErrInvalidMessage", err)
		case err != nil && errors.Is(err, ErrInvalidMessage) && r.Guard().Backoff(peer.Name) == 0:
			t.Fatalf("invalid reply (%v), yet the peer is not backed off", err)
		case err != nil && !errors.Is(err, ErrInvalidMessage) && ctx.Err() == nil:
			// Only a reply can fail this round: the DB and the transport otherwise work.
			t.Fatalf("sync failed with %v, not ErrInvalidMessage", err)
		}
		limit := time.Now().Add(time.Minute).UnixNano()
		for _, m := range r.Have().Marks() {
			if m.Wall > limit {
				t.Fatalf("a reply made the replicator believe it holds %v, beyond what it could hold", m)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err := r.pushEach(ctx, peer, cs, 0); pushOK != (err == nil) {
			t.Fatalf("push with reply decodable=%v: err %v", pushOK, err)
		}
		if _, err := r.offer(ctx, peer, []strayLeaf{{leaf: crdt.KeyHomes(keys[0]).First(), extra: []storage.KeyHash{{Key: keys[0], Hash: 1}}}}); !leavesOK && !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("offer with an undecodable leaves reply: err %v, want ErrInvalidMessage", err)
		}
	})
}

func FuzzServeMessage(f *testing.F) {
	db := fuzzDB(f)
	cs := sampleSyncChanges()
	far := crdt.Timestamp{Wall: time.Now().Add(1000 * time.Hour).UnixNano(), Node: 0xfa}
	hashes := make([]uint64, crdt.DigestBranches)
	mask := make([]uint64, maskWords)
	mask[1] = 0xff
	for kind, msgs := range map[string][][]byte{
		"push": {
			mustEncode(f, PushRequest{From: 0xfa, Changes: cs, Through: far, Held: mask, Era: 3}),
			mustEncode(f, PushRequest{From: 0xfa, Through: fuzzTS(time.Now().UnixNano(), 0xfa)}),
		},
		"digest": {mustEncode(f, DigestRequest{Branches: hashes}), mustEncode(f, DigestRequest{Branches: hashes, Mask: mask})},
		"leaves": {mustEncode(f, LeavesRequest{Leaves: []LeafPairs{
			{Leaf: crdt.KeyHomes(cs[0].Key).First(), Pairs: []storage.KeyHash{{Key: cs[0].Key, Hash: 1}}},
			{Leaf: 5, From: "a", To: "b", Only: true},
		}})},
		"counters": {mustEncode(f, CountersMessage{From: 0xfa, Cells: []CountersCell{{Set: 0, Key: "k", Window: 9, Count: 1 << 62}}})},
	} {
		for _, m := range msgs {
			f.Add(kind, m)
			f.Add(kind, m[:len(m)*2/3])
		}
	}
	f.Fuzz(func(t *testing.T, kind string, body []byte) {
		r := NewReplicator(Config{DB: db, Transport: &replyTransport{}, MoveRate: -1})
		r.Start()
		defer r.Close()
		c, err := NewCounters(CountersConfig{Self: 1, Windows: []time.Duration{time.Minute}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g := NewGuard(nil, nil)
		_, err = ServeMessage(ctx, WithCounters(r, c), g, "faulty", 0, kind, body)
		if errors.Is(err, ErrInvalidMessage) && g.Count("faulty") != 1 {
			t.Fatalf("invalid message (%v) not counted", err)
		}
		limit := time.Now().Add(time.Minute).UnixNano()
		for _, m := range r.Have().Marks() {
			if m.Wall > limit {
				t.Fatalf("a push made the replicator believe it holds %v, beyond what it could hold", m)
			}
		}
	})
}
