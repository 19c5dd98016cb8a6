package clustersim

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/storage"
)

// TestFaultyMakesNoWrites: whatever a Faulty sends or answers, an honest node that acts
// on every valid message learns no write, and no count, that the faulty peer did not
// receive from an honest node. A message it makes that decodes is a replay, or one of
// the deliberately well-formed lies that carry neither (a far-future Through, a leaves
// reply that only wants keys).
//
// A bit flip in a timestamp of a valid push used to pass: TestSimFaultyPeer/seed=71 once
// ended with every node holding an erased user's username claim stamped exactly 2^37 ns
// before the acknowledged one (bit 37 of its wall time cleared), the earlier claim winning
// everywhere.
func TestFaultyMakesNoWrites(t *testing.T) {
	now := time.Now()
	node := crdt.NodeID(0x5e55_10d0_0000_0001)
	ts := func(d time.Duration) crdt.Timestamp { return crdt.Timestamp{Wall: now.Add(d).UnixNano(), Node: node} }
	live, erased := "0a"+string(bytes.Repeat([]byte("1"), 30)), "0b"+string(bytes.Repeat([]byte("2"), 30))
	user := crdt.NewUser("alice", "hash", map[string]string{crdt.FieldFirstName: "Alice"}, ts(0))
	gone := crdt.NewUser("bob", "hash", nil, ts(time.Millisecond))
	gone.Merge(crdt.EraseUser(ts(2 * time.Millisecond)))
	gone.Prune(func(name string, _ crdt.Field) bool { return !erasedUserFields[name] })
	conv := live + ":" + erased
	msg := crdt.Message{From: live, To: erased, Body: "hello"}
	entry := crdt.Entry{ID: crdt.EntryID{TS: ts(3 * time.Millisecond), Seq: 1}, Data: msg.AppendBinary(nil)}
	changes := []storage.Change{
		{Key: crdt.UserKey(live), Map: user},
		{Key: crdt.UserKey(erased), Map: gone},
		{Key: crdt.ClaimKey("alice"), Map: crdt.NewClaim(live, ts(0))},
		{Key: crdt.SessionKey("0c" + live[2:]), Map: crdt.NewSession(live, now.Add(time.Hour), time.Hour, ts(4*time.Millisecond))},
		{Key: storage.LogKey(conv, entry.ID), Conv: conv, Entry: entry},
	}
	honest := map[string]bool{} // the encodings of the changes honest nodes sent
	for _, c := range changes {
		honest[string(c.AppendBinary(nil))] = true
	}
	mustMarshal := func(m interface{ MarshalBinary() ([]byte, error) }) []byte {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var branches [crdt.DigestBranches]uint64
	for i := range branches {
		branches[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	seen := [][]byte{
		mustMarshal(cluster.PushRequest{From: node, Changes: changes[:2], Through: ts(5 * time.Millisecond)}),
		mustMarshal(cluster.PushRequest{From: node, Changes: changes[2:]}),
		mustMarshal(cluster.DigestRequest{Branches: branches[:]}),
		mustMarshal(cluster.LeavesRequest{Leaves: []cluster.LeafPairs{{Leaf: 3, Pairs: []storage.KeyHash{{Key: crdt.UserKey(live), Hash: 42}}}}}),
		mustMarshal(cluster.CountersMessage{From: node, Cells: []cluster.CountersCell{{Set: 1, Key: "login/alice", Window: 7, Count: 3}}}),
	}
	replay := map[string]bool{}
	for _, b := range seen {
		replay[string(b)] = true
	}

	net := NewNetwork(71)
	net.maxMessage = 4 << 10 // oversized messages of 32 MiB would only slow the test
	f := &Faulty{ID: 0xfa0175eed0000047, c: &Cluster{Net: net}, rng: rand.New(rand.NewPCG(71, 0xfa17))}
	f.seen = seen
	forged := 0
	for i := range 20000 {
		kind, request := kinds[i%len(kinds)], i%2 == 0
		f.mu.Lock()
		b := f.makeLocked(kind, request)
		f.mu.Unlock()
		if replay[string(b)] {
			continue
		}
		var (
			push   cluster.PushRequest
			leaves cluster.LeavesReply
			counts cluster.CountersMessage
			made   []storage.Change
		)
		switch {
		case push.UnmarshalBinary(b) == nil:
			made = push.Changes
		case leaves.UnmarshalBinary(b) == nil:
			made = leaves.Changes
		case counts.UnmarshalBinary(b) == nil:
			forged++
			if forged <= 5 {
				t.Errorf("made a valid counters message no honest node sent: %+v", counts)
			}
		}
		for _, c := range made {
			if !honest[string(c.AppendBinary(nil))] {
				forged++
				if forged <= 5 {
					t.Errorf("made a valid message carrying a change no honest node sent: %s = %s", c.Key, Describe(c.AppendBinary(nil)))
				}
			}
		}
	}
	if forged > 0 {
		t.Errorf("%d writes or counts of the faulty peer's making in 20000 messages", forged)
	}
}
