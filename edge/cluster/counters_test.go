package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// Counters implements CounterTransport over the simnet, so counter exchange meets the
// same partitions, drops, duplicates and delays as sync traffic.
func (t *simTransport) Counters(ctx context.Context, to Peer, m CountersMessage) error {
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = t.net.call(ctx, t.from, to, "counters", b, func(ctx context.Context, h Handler, b []byte) ([]byte, error) {
		ch, ok := h.(CounterHandler)
		if !ok {
			return nil, errors.New("no counters handler")
		}
		r, err := decodeInto[CountersMessage](b)
		if err != nil {
			return nil, err
		}
		return nil, ch.HandleCounters(ctx, r)
	})
	return err
}

var _ CounterTransport = (*simTransport)(nil)

// noSync is a Handler for nodes that only exchange counters.
type noSync struct{}

func (noSync) HandlePush(context.Context, PushRequest) (PushReply, error) {
	return PushReply{}, errors.New("no sync")
}
func (noSync) HandleDigest(context.Context, DigestRequest) (DigestReply, error) {
	return DigestReply{}, errors.New("no sync")
}
func (noSync) HandleLeaves(context.Context, LeavesRequest) (LeavesReply, error) {
	return LeavesReply{}, errors.New("no sync")
}

// counterNodes starts n Counters on a simnet, each knowing all the others as peers.
func counterNodes(t *testing.T, net *simnet, n int) ([]*Counters, []Peer) {
	t.Helper()
	var peers []Peer
	for i := range n {
		peers = append(peers, Peer{ID: crdt.NodeID(i + 1), Name: fmt.Sprint("c", i), Addr: fmt.Sprint("c", i)})
	}
	var cs []*Counters
	for i, p := range peers {
		c, err := NewCounters(CountersConfig{
			Self: p.ID, Transport: net.transport(p.Addr), Windows: []time.Duration{time.Minute, 10 * time.Minute},
			FlushEvery: 5 * time.Millisecond, Timeout: time.Second,
		})
		if err != nil {
			t.Fatalf("NewCounters: %v", err)
		}
		net.register(p.Addr, p.ID, WithCounters(noSync{}, c))
		c.Start()
		t.Cleanup(c.Close)
		cs = append(cs, c)
		_ = i
	}
	for _, c := range cs {
		c.SetPeers(peers)
	}
	return cs, peers
}

func waitCounts(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestCounters_ClusterWide checks that events counted on one node are counted on every
// other, across sets, through drops, duplicates and delays, and that a partition leaves
// each side with its own count until it heals.
func TestCounters_ClusterWide(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	net := newSimnet(seed)
	net.setFaults(simFaults{Drop: 0.2, DropReply: 0.1, Dup: 0.2, Delay: 0.3})
	cs, peers := counterNodes(t, net, 3)
	for i := range 30 {
		cs[i%3].Add(0, "addr|10.0.0.1")
	}
	cs[1].Add(1, "signup|10.0.0.1")
	for i, c := range cs {
		waitCounts(t, fmt.Sprintf("node %d to count 30 login events", i), func() bool {
			return c.Estimate(0, "addr|10.0.0.1").Current == 30
		})
		waitCounts(t, fmt.Sprintf("node %d to count the sign-up", i), func() bool {
			return c.Estimate(1, "signup|10.0.0.1").Current == 1
		})
	}
	if e := cs[0].Estimate(0, "signup|10.0.0.1"); e.Current != 0 {
		t.Errorf("set 0 counts set 1's key: %d", e.Current)
	}

	t.Run("Partition", func(t *testing.T) {
		net.setFaults(simFaults{})
		net.setGroups(map[string]int{peers[2].Addr: 1})
		for range 5 {
			cs[0].Add(0, "acct|alice")
			cs[2].Add(0, "acct|alice")
		}
		waitCounts(t, "node 1 to hear node 0", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 5 })
		if got := cs[2].Estimate(0, "acct|alice").Current; got != 5 {
			t.Errorf("cut-off node counts %d, want its own 5", got)
		}
		if got := cs[1].Estimate(0, "acct|alice").Current; got != 5 {
			t.Errorf("node 1 counts %d during the partition, want node 0's 5", got)
		}
		net.heal()
		for i, c := range cs {
			waitCounts(t, fmt.Sprintf("node %d to count 10 after healing", i), func() bool {
				return c.Estimate(0, "acct|alice").Current == 10
			})
		}
	})
	t.Run("NewPeerGetsState", func(t *testing.T) {
		c, err := NewCounters(CountersConfig{Self: 9, Transport: net.transport("c9"), Windows: []time.Duration{time.Minute, 10 * time.Minute}, FlushEvery: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		net.register("c9", 9, WithCounters(noSync{}, c))
		c.Start()
		t.Cleanup(c.Close)
		all := append(peers, Peer{ID: 9, Name: "c9", Addr: "c9"})
		for _, x := range append(cs, c) {
			x.SetPeers(all)
		}
		waitCounts(t, "the new node to learn the counts", func() bool {
			return c.Estimate(0, "addr|10.0.0.1").Current == 30 && c.Estimate(0, "acct|alice").Current == 10
		})
	})
}

// TestCounters_Close checks that Close ends the flush loop with sends in flight to a peer
// that never answers.
func TestCounters_Close(t *testing.T) {
	block := blockingTransport{}
	c, err := NewCounters(CountersConfig{Self: 1, Transport: block, Windows: []time.Duration{time.Minute}, FlushEvery: time.Millisecond, Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	c.SetPeers([]Peer{{ID: 2, Name: "p", Addr: "p"}})
	c.Add(0, "k")
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a send blocked")
	}
	c.Close() // twice is fine
}

type blockingTransport struct{}

func (blockingTransport) Counters(ctx context.Context, _ Peer, _ CountersMessage) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestCounters_RejectsFarFuture(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC)
	c, err := NewCounters(CountersConfig{Self: 1, Windows: []time.Duration{time.Minute}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	c.Add(0, "k")
	w := crdt.NewCounter(time.Minute, 0).WindowOf(now)
	if err := c.HandleCounters(context.Background(), CountersMessage{From: 2, Cells: []CountersCell{
		{Set: 0, Key: "k", Window: w + 5, Count: 1}, // would push the current window out
		{Set: 7, Key: "k", Window: w, Count: 1},     // a set this node lacks
		{Set: 0, Key: "k", Window: w, Count: 4},
	}}); err != nil {
		t.Fatalf("HandleCounters: %v", err)
	}
	if e := c.Estimate(0, "k"); e.Current != 5 {
		t.Errorf("Current = %d, want 5 (own 1 + peer 4; the far-future cell ignored)", e.Current)
	}
	if err := c.HandleCounters(context.Background(), CountersMessage{From: 1, Cells: []CountersCell{{Set: 0, Key: "k", Window: w, Count: 9}}}); err != nil {
		t.Fatalf("HandleCounters of our own cells, relayed back: %v", err)
	}
	if e := c.Estimate(0, "k"); e.Current != 5 {
		t.Errorf("Current = %d after cells claiming this node's id, want 5: they were taken", e.Current)
	}
}

func TestCountersMessage_Encoding(t *testing.T) {
	m := CountersMessage{From: 0xfeed, Cells: []CountersCell{
		{Set: 0, Key: "addr|::1", Window: 29_000_000, Count: 3},
		{Set: 1, Key: "", Window: -2, Count: 1 << 40},
	}}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got CountersMessage
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(m) {
		t.Errorf("round trip = %+v, want %+v", got, m)
	}
	t.Run("ErrTooLarge", func(t *testing.T) {
		big := CountersMessage{Cells: make([]CountersCell, MaxCounterCells+1)}
		for i := range big.Cells {
			big.Cells[i] = CountersCell{Count: 1}
		}
		if _, err := big.MarshalBinary(); err == nil {
			t.Errorf("MarshalBinary of %d cells succeeded", len(big.Cells))
		}
		long := CountersMessage{Cells: []CountersCell{{Key: strings.Repeat("x", MaxCounterKey+1), Count: 1}}}
		if _, err := long.MarshalBinary(); err == nil {
			t.Errorf("MarshalBinary of a %d-byte key succeeded", MaxCounterKey+1)
		}
		full := CountersMessage{Cells: make([]CountersCell, MaxCounterCells)}
		for i := range full.Cells {
			full.Cells[i] = CountersCell{Set: MaxCounterSets - 1, Key: strings.Repeat("k", MaxCounterKey), Window: -1 << 62, Count: 1<<64 - 1}
		}
		b, err := full.MarshalBinary()
		if err != nil || len(b) > MaxCountersMessage {
			t.Errorf("a message at every limit: %d bytes, err %v; want at most %d", len(b), err, MaxCountersMessage)
		}
	})
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"Empty", nil},
		{"WrongKind", append(header(kindPush), make([]byte, 9)...)},
		{"HugeCount", header(kindCounters).u64(1).uvarint(1 << 40)},
		{"ZeroCount", header(kindCounters).u64(1).uvarint(1).uvarint(0).bytes([]byte("k")).uvarint(0).uvarint(0)},
		{"BadSet", header(kindCounters).u64(1).uvarint(1).uvarint(MaxCounterSets).bytes([]byte("k")).uvarint(0).uvarint(1)},
		{"LongKey", header(kindCounters).u64(1).uvarint(1).uvarint(0).bytes(bytes.Repeat([]byte("k"), MaxCounterKey+1)).uvarint(0).uvarint(1)},
		{"Trailing", append(header(kindCounters).u64(1).uvarint(0), 0)},
		{"Truncated", header(kindCounters).u64(1).uvarint(2).uvarint(0).bytes([]byte("k")).uvarint(0).uvarint(1)},
	} {
		t.Run("Err"+tc.name, func(t *testing.T) {
			var m CountersMessage
			if err := m.UnmarshalBinary(tc.b); err == nil {
				t.Errorf("UnmarshalBinary(%x) succeeded: %+v", tc.b, m)
			}
		})
	}
}

// FuzzCountersMessage checks that the decoder never panics or allocates beyond its input,
// and that what it accepts re-encodes to the same bytes.
func FuzzCountersMessage(f *testing.F) {
	ok, _ := CountersMessage{From: 1, Cells: []CountersCell{{Set: 1, Key: "a|b", Window: 5, Count: 2}}}.MarshalBinary()
	f.Add(ok)
	f.Add([]byte(header(kindCounters).u64(1).uvarint(1 << 30)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m CountersMessage
		if err := m.UnmarshalBinary(b); err != nil {
			return
		}
		if len(m.Cells) > MaxCounterCells || cap(m.Cells) > len(b) {
			t.Fatalf("decoded %d cells (cap %d) from %d bytes", len(m.Cells), cap(m.Cells), len(b))
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var m2 CountersMessage
		if err := m2.UnmarshalBinary(again); err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
			t.Fatalf("re-decoded %+v (err %v), want %+v", m2, err, m)
		}
	})
}

// TestCounters_RestartAddsUp: a node that restarts counts under a fresh ID, so what its
// earlier run counted, which its peers keep, adds to what it counts now; under its old
// ID the new counts (from zero) would merge by maximum into the old and vanish.
func TestCounters_RestartAddsUp(t *testing.T) {
	net := newSimnet(1)
	cs, peers := counterNodes(t, net, 2)
	for range 5 {
		cs[0].Add(0, "acct|alice")
	}
	waitCounts(t, "the peer to count the first run's 5", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 5 })

	cs[0].Close() // the node restarts: a new Counters, a new ID, the same address
	again, err := NewCounters(CountersConfig{
		Self: crdt.NodeID(99), Transport: net.transport(peers[0].Addr), Windows: []time.Duration{time.Minute, 10 * time.Minute},
		FlushEvery: 5 * time.Millisecond, Timeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	net.register(peers[0].Addr, peers[0].ID, WithCounters(noSync{}, again))
	again.Start()
	t.Cleanup(again.Close)
	again.SetPeers(peers)
	cs[1].SetPeers(peers[1:]) // the peer sees it go and come back (serf)
	cs[1].SetPeers(peers)
	for range 2 {
		again.Add(0, "acct|alice")
	}
	waitCounts(t, "the peer to count 5 + 2", func() bool { return cs[1].Estimate(0, "acct|alice").Current == 7 })
	// The restarted node learns again what its earlier run counted: the peer relays it.
	waitCounts(t, "the restarted node to count 5 + 2", func() bool { return again.Estimate(0, "acct|alice").Current == 7 })
}
