package crdt_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// manualClock is a physical clock the test moves by hand. It is safe for concurrent use.
type manualClock struct{ ns atomic.Int64 }

func (c *manualClock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }
func (c *manualClock) Set(ns int64)   { c.ns.Store(ns) }
func (c *manualClock) Get() int64     { return c.ns.Load() }

// epoch2026 is a realistic physical time, so that steps back stay in range.
const epoch2026 = int64(1767225600) * int64(time.Second)

func TestNodeID(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		rapid.Check(t, func(t *rapid.T) {
			id := crdt.NodeID(rapid.Uint64().Draw(t, "id"))
			s := id.String()
			if len(s) != 16 {
				t.Fatalf("len(String())=%d, want 16", len(s))
			}
			got, err := crdt.ParseNodeID(s)
			if err != nil || got != id {
				t.Fatalf("ParseNodeID(%q)=%v, %v, want %v", s, got, err, id)
			}
		})
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, s := range []string{"", "0", "00000000000000", "000000000000000g", "000000000000000000"} {
			if _, err := crdt.ParseNodeID(s); err == nil {
				t.Errorf("ParseNodeID(%q) succeeded, want an error", s)
			}
		}
	})
}

// TestClockMonotonic drives a clock with a physical clock that stalls, ticks, steps back
// and jumps both ways, interleaved with remote timestamps from skewed peers. Every Next
// must be strictly after everything issued or accepted before, its physical part must be
// exactly the largest physical reading or accepted remote wall so far (the HLC bound), and
// rejected remote timestamps must leave the clock unchanged.
func TestClockMonotonic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var pc manualClock
		pc.Set(epoch2026 + rapid.Int64Range(0, int64(time.Hour)).Draw(t, "start"))
		maxSkew := rapid.SampledFrom([]time.Duration{0, time.Microsecond, time.Second, time.Minute}).Draw(t, "maxSkew")
		node := crdt.NodeID(rapid.Uint64().Draw(t, "node"))
		c := crdt.NewClock(node, pc.Now, maxSkew)

		var last crdt.Timestamp // the latest timestamp issued or accepted
		var maxWall int64       // the largest physical reading or accepted remote wall
		advance := func(t *rapid.T, ts crdt.Timestamp, what string) {
			if !last.Less(ts) {
				t.Fatalf("%s=%v, want after %v", what, ts, last)
			}
			if ts.Node != node {
				t.Fatalf("%s.Node=%v, want %v", what, ts.Node, node)
			}
			if ts.Wall != maxWall {
				t.Fatalf("%s.Wall=%d, want %d (max physical or observed)", what, ts.Wall, maxWall)
			}
			last = ts
		}
		step := func(d int64) { pc.Set(pc.Get() + d) }

		t.Repeat(map[string]func(*rapid.T){
			"Stall": func(t *rapid.T) {},
			"Tick": func(t *rapid.T) {
				step(rapid.Int64Range(1, int64(time.Millisecond)).Draw(t, "tick"))
			},
			"JumpForward": func(t *rapid.T) {
				step(rapid.Int64Range(int64(time.Second), int64(48*time.Hour)).Draw(t, "jump"))
			},
			"StepBack": func(t *rapid.T) {
				step(-rapid.Int64Range(1, int64(time.Millisecond)).Draw(t, "back"))
			},
			"JumpBack": func(t *rapid.T) {
				step(-rapid.Int64Range(int64(time.Second), int64(48*time.Hour)).Draw(t, "jumpBack"))
			},
			"Next": func(t *rapid.T) {
				pt := pc.Get()
				maxWall = max(maxWall, pt)
				advance(t, c.Next(), "Next()")
			},
			"Observe": func(t *rapid.T) {
				pt := pc.Get()
				// A peer whose clock is behind, a little ahead or far ahead of ours, or whose
				// timestamp is exactly our last one (same wall, logical counter collisions).
				remote := crdt.Timestamp{
					Wall:    pt + rapid.Int64Range(-int64(time.Hour), int64(2*time.Minute)).Draw(t, "offset"),
					Logical: rapid.Uint32Range(0, 3).Draw(t, "logical"),
					Node:    crdt.NodeID(rapid.Uint64().Draw(t, "remoteNode")),
				}
				if rapid.Bool().Draw(t, "sameWall") {
					remote.Wall, remote.Logical = last.Wall, last.Logical+rapid.Uint32Range(0, 1).Draw(t, "plus")
				}
				observe(t, c, remote, pt, maxSkew, &maxWall, advance)
			},
			"ObserveAncient": func(t *rapid.T) {
				// Garbage from the far past, even before the Unix epoch, is not "ahead".
				remote := crdt.Timestamp{Wall: rapid.Int64Range(-1<<63, 0).Draw(t, "wall"), Node: 7}
				observe(t, c, remote, pc.Get(), maxSkew, &maxWall, advance)
			},
			"": func(t *rapid.T) {
				if got := c.Last(); got != last {
					t.Fatalf("Last()=%v, want %v", got, last)
				}
			},
		})
	})
}

func observe(t *rapid.T, c *crdt.Clock, remote crdt.Timestamp, pt int64, maxSkew time.Duration, maxWall *int64, advance func(*rapid.T, crdt.Timestamp, string)) {
	before := c.Last()
	err := c.Observe(remote)
	if maxSkew > 0 && remote.Wall > pt && remote.Wall-pt > int64(maxSkew) {
		if !errors.Is(err, crdt.ErrClockSkew) {
			t.Fatalf("Observe(%v) at %d, bound %v: err=%v, want ErrClockSkew", remote, pt, maxSkew, err)
		}
		var se *crdt.SkewError
		if !errors.As(err, &se) || se.Remote != remote || se.Bound != maxSkew || se.Local.UnixNano() != pt {
			t.Fatalf("Observe(%v): err=%#v, want a *SkewError naming it", remote, err)
		}
		if got := c.Last(); got != before {
			t.Fatalf("Last() after rejected Observe=%v, want unchanged %v", got, before)
		}
		return
	}
	if err != nil {
		t.Fatalf("Observe(%v) at %d, bound %v: err=%v, want nil", remote, pt, maxSkew, err)
	}
	*maxWall = max(*maxWall, pt, remote.Wall)
	got := c.Last()
	if !remote.Less(got) {
		t.Fatalf("Last() after Observe(%v)=%v, want after it", remote, got)
	}
	advance(t, got, "Last() after Observe")
	next := c.Next()
	if !remote.Less(next) {
		t.Fatalf("Next() after Observe(%v)=%v, want after it", remote, next)
	}
	*maxWall = max(*maxWall, pt)
	advance(t, next, "Next() after Observe")
}

func TestClockObserve(t *testing.T) {
	var pc manualClock
	pc.Set(epoch2026)
	t.Run("OK", func(t *testing.T) {
		c := crdt.NewClock(1, pc.Now, time.Second)
		remote := crdt.Timestamp{Wall: epoch2026 + int64(time.Second), Logical: 5, Node: 2}
		if err := c.Observe(remote); err != nil {
			t.Fatalf("Observe(%v)=%v, want nil", remote, err)
		}
		want := crdt.Timestamp{Wall: remote.Wall, Logical: 7, Node: 1}
		if got := c.Next(); got != want {
			t.Fatalf("Next()=%v, want %v", got, want)
		}
	})
	t.Run("ErrClockSkew", func(t *testing.T) {
		c := crdt.NewClock(1, pc.Now, time.Second)
		first := c.Next()
		remote := crdt.Timestamp{Wall: epoch2026 + int64(time.Second) + 1, Node: 2}
		err := c.Observe(remote)
		if !errors.Is(err, crdt.ErrClockSkew) {
			t.Fatalf("Observe(%v)=%v, want ErrClockSkew", remote, err)
		}
		if got := c.Last(); got != first {
			t.Fatalf("Last()=%v, want %v", got, first)
		}
		if err.Error() == "" {
			t.Fatal("Error()=\"\", want a message")
		}
	})
	t.Run("SkewCheckDisabled", func(t *testing.T) {
		c := crdt.NewClock(1, pc.Now, 0)
		remote := crdt.Timestamp{Wall: epoch2026 + int64(24*time.Hour), Node: 2}
		if err := c.Observe(remote); err != nil {
			t.Fatalf("Observe(%v)=%v, want nil", remote, err)
		}
		if got := c.Next(); !remote.Less(got) {
			t.Fatalf("Next()=%v, want after %v", got, remote)
		}
	})
	t.Run("LogicalOverflow", func(t *testing.T) {
		c := crdt.NewClock(1, pc.Now, time.Second)
		remote := crdt.Timestamp{Wall: epoch2026, Logical: ^uint32(0), Node: 2}
		if err := c.Observe(remote); err != nil {
			t.Fatalf("Observe(%v)=%v, want nil", remote, err)
		}
		want := crdt.Timestamp{Wall: epoch2026 + 1, Logical: 0, Node: 1}
		if got := c.Last(); got != want {
			t.Fatalf("Last()=%v, want %v", got, want)
		}
		if got := c.Next(); !want.Less(got) {
			t.Fatalf("Next()=%v, want after %v", got, want)
		}
	})
	t.Run("DefaultNow", func(t *testing.T) {
		c := crdt.NewClock(3, nil, 0)
		if c.Node() != 3 {
			t.Fatalf("Node()=%v, want 3", c.Node())
		}
		before := time.Now()
		ts := c.Next()
		if ts.Time().Before(before.Add(-time.Second)) || c.PhysicalNow().Before(before) {
			t.Fatalf("Next()=%v at %v, want the wall clock", ts, before)
		}
	})
}

// TestClockConcurrentNext calls Next from several goroutines (run it with -race): every
// timestamp is unique and each goroutine sees its own strictly increasing.
func TestClockConcurrentNext(t *testing.T) {
	for _, tc := range []struct {
		name string
		now  func() time.Time
	}{
		{"WallClock", time.Now},
		{"Stalled", func() time.Time { return time.Unix(0, epoch2026) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const goroutines, perG = 8, 2000
			c := crdt.NewClock(9, tc.now, time.Second)
			out := make([][]crdt.Timestamp, goroutines)
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					ts := make([]crdt.Timestamp, perG)
					for i := range ts {
						ts[i] = c.Next()
					}
					out[g] = ts
				})
			}
			wg.Wait()
			seen := make(map[crdt.Timestamp]bool, goroutines*perG)
			for g, ts := range out {
				for i, x := range ts {
					if seen[x] {
						t.Fatalf("goroutine %d: Next()=%v issued twice", g, x)
					}
					seen[x] = true
					if i > 0 && !ts[i-1].Less(x) {
						t.Fatalf("goroutine %d: Next()=%v after %v, want increasing", g, x, ts[i-1])
					}
				}
			}
		})
	}
}

func BenchmarkClockNext(b *testing.B) {
	b.Run("WallClock", func(b *testing.B) {
		c := crdt.NewClock(1, nil, time.Second)
		for b.Loop() {
			c.Next()
		}
	})
	b.Run("Stalled", func(b *testing.B) {
		now := time.Unix(0, epoch2026)
		c := crdt.NewClock(1, func() time.Time { return now }, time.Second)
		for b.Loop() {
			c.Next()
		}
	})
	b.Run("Parallel", func(b *testing.B) {
		c := crdt.NewClock(1, nil, time.Second)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Next()
			}
		})
	})
}
