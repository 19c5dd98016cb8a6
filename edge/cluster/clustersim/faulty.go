package clustersim

import (
	"bytes"
	"context"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
)

// Faulty is the faulty-peer nemesis: a node that holds the cluster key — it is on the
// network and in every honest node's peer list — but whose every message and reply is
// made to hurt. It sends to live honest nodes, and answers their calls with, a seeded mix
// of:
//   - random bytes, and random bytes behind a valid version and kind;
//   - truncated and bit-flipped copies of valid messages it received (a flip that leaves
//     the message valid is not used: see invalidOf);
//   - out-of-range values in a well-formed frame: list lengths beyond the input, branch
//     and leaf indexes beyond the digest, partition masks of the wrong length, counter
//     sets beyond the limit, marks stamped far in the future, a leaves reply naming keys
//     that were not compared;
//   - oversized messages (beyond the network's message bound);
//   - replays of valid messages it received, to another node or as a reply of another
//     kind.
//
// It never sends a change of its own making, so an honest node that refuses everything
// invalid holds exactly what the cluster acknowledged. Lies a valid message can tell (a
// made-up Have or Through within the skew bound) are beyond this nemesis: a peer that
// holds the key can tell them, and they cost read-your-writes, not data.
//
// Create it with Cluster.AddFaulty; Stop it (Cluster's cleanup does too).
type Faulty struct {
	Name string // its address on the network
	ID   crdt.NodeID

	c *Cluster

	mu   sync.Mutex
	rng  *rand.Rand
	seen [][]byte // valid messages received, for replays and mutations; bounded

	sent, refused, answered atomic.Int64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// FaultyStats counts what a Faulty did.
type FaultyStats struct {
	Sent     int64 // messages sent
	Refused  int64 // of them, refused with an error (invalid, or backed off)
	Answered int64 // calls of honest nodes it answered with its own bytes
}

// maxSeen bounds the messages a Faulty keeps for replays.
const maxSeen = 64

// AddFaulty adds a faulty peer named name with a seeded source and puts it in every
// honest node's peer list; Start makes it send. The cluster's cleanup stops it.
func (c *Cluster) AddFaulty(name string, seed int64) *Faulty {
	id := crdt.NodeID(0xfa0175eed0000000 | uint64(seed)&0xffffff)                            // #nosec G115 -- a made-up ID
	f := &Faulty{Name: name, ID: id, c: c, rng: rand.New(rand.NewPCG(uint64(seed), 0xfa17))} // #nosec G115 G404 -- a seeded test source
	c.Net.RegisterFunc(name, f.ID, f.answer)
	c.mu.Lock()
	c.faulty = append(c.faulty, f)
	c.mu.Unlock()
	c.t.Cleanup(f.Stop)
	c.Logf("add faulty peer %s", name)
	c.updatePeers()
	return f
}

// Peer returns how honest nodes address the faulty peer.
func (f *Faulty) Peer() cluster.Peer {
	return cluster.Peer{ID: f.ID, Name: f.Name, Region: "faulty", Addr: f.Name}
}

// Start sends a faulty message to a random live honest node every interval, until Stop.
func (f *Faulty) Start(every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f.sendOne(ctx)
			}
		}
	}()
}

// Stop stops sending and waits for the sender. Safe to call twice, and without Start.
func (f *Faulty) Stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

// Stats returns what the faulty peer did so far.
func (f *Faulty) Stats() FaultyStats {
	return FaultyStats{Sent: f.sent.Load(), Refused: f.refused.Load(), Answered: f.answered.Load()}
}

var kinds = []string{"push", "digest", "leaves", "counters"}

// sendOne sends one faulty message to a random live honest node.
func (f *Faulty) sendOne(ctx context.Context) {
	live := f.c.AliveNodes()
	if len(live) == 0 {
		return
	}
	f.mu.Lock()
	to := live[f.rng.IntN(len(live))].Peer()
	kind := kinds[f.rng.IntN(len(kinds))]
	msg := f.makeLocked(kind, true)
	f.mu.Unlock()
	f.sent.Add(1)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := f.c.Net.Send(cctx, f.Name, to, kind, msg); err != nil {
		f.refused.Add(1)
	}
}

// answer is the faulty peer's server: it keeps the valid request for later replays and
// answers with a faulty reply.
func (f *Faulty) answer(_ context.Context, _, kind string, req []byte) ([]byte, error) {
	f.answered.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) < maxSeen {
		f.seen = append(f.seen, bytes.Clone(req))
	} else {
		f.seen[f.rng.IntN(maxSeen)] = bytes.Clone(req)
	}
	if f.rng.IntN(8) == 0 {
		return nil, errors.New("faulty peer: made-up failure")
	}
	return f.makeLocked(kind, false), nil
}

// makeLocked returns a faulty message of kind: a request, or the reply to one. f.mu is
// held.
func (f *Faulty) makeLocked(kind string, request bool) []byte {
	r := f.rng
	var kindByte byte = 4 // a reply
	if request {
		kindByte = map[string]byte{"push": 1, "digest": 2, "leaves": 3, "counters": 5}[kind]
	}
	head := []byte{cluster.ProtocolVersion, kindByte}
	switch r.IntN(8) {
	case 0: // random bytes
		return invalidOf(func() []byte {
			b := make([]byte, r.IntN(256))
			fill(r, b)
			return b
		})
	case 1: // a valid frame, random body
		return invalidOf(func() []byte {
			b := make([]byte, r.IntN(512))
			fill(r, b)
			return append(bytes.Clone(head), b...)
		})
	case 2, 3: // a copy of a valid message, truncated or with a bit flipped, or replayed whole
		if len(f.seen) == 0 {
			return head
		}
		b := f.seen[r.IntN(len(f.seen))]
		switch r.IntN(3) {
		case 0: // a strict prefix never decodes; the whole message is a replay
			return bytes.Clone(b[:r.IntN(len(b)+1)])
		case 1:
			// Most flips leave a valid message: one in a write's timestamp or value
			// is a write of the faulty peer's making (an earlier first-writer-wins
			// claim, say), which no honest node can tell from the real one. Only a
			// flip that makes the message invalid will do.
			return invalidOf(func() []byte {
				c := bytes.Clone(b)
				if len(c) > 0 {
					c[r.IntN(len(c))] ^= 1 << r.IntN(8)
				}
				return c
			})
		}
		return bytes.Clone(b) // whole: a replay, maybe to another node or as a reply of another kind
	case 4: // oversized
		return append(head, make([]byte, f.c.Net.maxMessage+1)...)
	default: // out of range in a well-formed frame
		return f.outOfRangeLocked(head, kind, request)
	}
}

// outOfRangeLocked returns a message whose frame is right and whose values are not.
func (f *Faulty) outOfRangeLocked(head []byte, kind string, request bool) []byte {
	r := f.rng
	u := binary.AppendUvarint
	u64 := binary.BigEndian.AppendUint64
	far := crdt.Timestamp{Wall: time.Now().Add(1000 * time.Hour).UnixNano(), Node: f.ID}
	huge := uint64(1) << (20 + r.IntN(44))
	switch {
	case !request && kind == "leaves" && r.IntN(2) == 0:
		// A well-formed reply that wants, and offers, keys nobody compared.
		rep := cluster.LeavesReply{Want: []string{crdt.UserKey(fmt.Sprintf("faulty-%d", r.IntN(26)))}}
		b, _ := rep.MarshalBinary()
		return b
	case request && kind == "push" && r.IntN(2) == 0:
		// A far-future mark, told as the sender's own.
		b, _ := cluster.PushRequest{From: f.ID, Through: far, Era: r.Uint64()}.MarshalBinary()
		return b
	}
	switch r.IntN(6) {
	case 0: // a list longer than the input
		return u(append(head, u64(nil, uint64(f.ID))...), huge)
	case 1: // a branch beyond the digest
		return u(u(head, 1), huge)
	case 2: // a leaf beyond the digest
		return u(u(head, 1), crdt.DigestLeaves+r.Uint64N(1000))
	case 3: // a partition mask of the wrong length
		b := u(head, 0)
		return u(b, 1+r.Uint64N(crdt.Partitions/64-1))
	case 4: // a counter set beyond the limit
		b := u(u64(head, uint64(f.ID)), 1)
		return u(u(u(u(b, cluster.MaxCounterSets+r.Uint64N(100)), 0), 0), 1)
	default: // a bookmark of far-future, unordered marks
		var bm crdt.Bookmark
		bm.Add(far)
		p := bm.AppendBinary(nil)
		if len(p) > 2 {
			p[2] ^= 0x80
		}
		return append(u(u(head, 0), uint64(len(p))), p...) // #nosec G115 -- a length
	}
}

// maxTries bounds the messages invalidOf makes before it gives up.
const maxTries = 64

// invalidOf returns the first of up to maxTries messages made by gen that no honest
// node would accept (decodes), and an empty message, which none accepts, if every one
// would. A Faulty sends valid messages only as replays, or deliberately (out of range):
// a message that is valid by chance may carry changes, counters or marks of the
// faulty peer's making, and an honest node holds whatever such a message says.
func invalidOf(gen func() []byte) []byte {
	for range maxTries {
		if b := gen(); !decodes(b) {
			return b
		}
	}
	return []byte{}
}

// decodes reports whether b is a valid sync message of some kind, as a request or as a
// reply: whether an honest node could act on it, whatever it was sent as.
func decodes(b []byte) bool {
	for _, m := range []encoding.BinaryUnmarshaler{
		&cluster.PushRequest{}, &cluster.DigestRequest{}, &cluster.LeavesRequest{}, &cluster.CountersMessage{},
		&cluster.PushReply{}, &cluster.DigestReply{}, &cluster.LeavesReply{},
	} {
		if m.UnmarshalBinary(b) == nil {
			return true
		}
	}
	return false
}

// fill fills b with random bytes.
func fill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32() & 0xff)
	}
}
