package cluster

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

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
	m.Version = ProtocolVersion // 0 encodes as ProtocolVersion; the decoder says which it read
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
		{"WrongKind", append(header(kindPush, ProtocolVersion), make([]byte, 9)...)},
		{"HugeCount", header(kindCounters, ProtocolVersion).u64(1).uvarint(1 << 40)},
		{"ZeroCount", header(kindCounters, ProtocolVersion).u64(1).uvarint(1).uvarint(0).bytes([]byte("k")).uvarint(0).uvarint(0)},
		{"BadSet", header(kindCounters, ProtocolVersion).u64(1).uvarint(1).uvarint(MaxCounterSets).bytes([]byte("k")).uvarint(0).uvarint(1)},
		{"LongKey", header(kindCounters, ProtocolVersion).u64(1).uvarint(1).uvarint(0).bytes(bytes.Repeat([]byte("k"), MaxCounterKey+1)).uvarint(0).uvarint(1)},
		{"Trailing", append(header(kindCounters, ProtocolVersion).u64(1).uvarint(0), 0)},
		{"Truncated", header(kindCounters, ProtocolVersion).u64(1).uvarint(2).uvarint(0).bytes([]byte("k")).uvarint(0).uvarint(1)},
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
	f.Add([]byte(header(kindCounters, ProtocolVersion).u64(1).uvarint(1 << 30)))
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
