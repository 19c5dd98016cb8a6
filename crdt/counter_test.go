package crdt_test

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

var counterEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func sortedCells(c *crdt.Counter) []crdt.CounterCell {
	cells := c.Cells()
	slices.SortFunc(cells, func(a, b crdt.CounterCell) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Window, b.Window), cmp.Compare(a.Node, b.Node))
	})
	return cells
}

// counterOf builds a counter from cells, merged in order.
func counterOf(cells []crdt.CounterCell) *crdt.Counter {
	c := crdt.NewCounter(time.Minute, 0)
	for _, cell := range cells {
		c.Merge(cell)
	}
	return c
}

// genCells draws cells over few keys, nodes and adjacent windows, so merges collide.
func genCells(t *rapid.T, label string) []crdt.CounterCell {
	return rapid.SliceOfN(rapid.Custom(func(t *rapid.T) crdt.CounterCell {
		return crdt.CounterCell{
			Key:    rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "key"),
			Window: rapid.Int64Range(100, 102).Draw(t, "window"),
			Node:   crdt.NodeID(rapid.IntRange(1, 3).Draw(t, "node")),
			Count:  rapid.Uint64Range(0, 20).Draw(t, "count"),
		}
	}), 0, 30).Draw(t, label)
}

func TestCounter_MergeLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a, b, c := genCells(t, "a"), genCells(t, "b"), genCells(t, "c")
		merge := func(x, y *crdt.Counter) *crdt.Counter {
			out := counterOf(nil)
			out.MergeCounter(x)
			out.MergeCounter(y)
			return out
		}
		ab := merge(counterOf(a), counterOf(b))
		ba := merge(counterOf(b), counterOf(a))
		if got, want := sortedCells(ab), sortedCells(ba); !slices.Equal(got, want) {
			t.Fatalf("not commutative:\na∪b = %v\nb∪a = %v", got, want)
		}
		l := merge(merge(counterOf(a), counterOf(b)), counterOf(c))
		r := merge(counterOf(a), merge(counterOf(b), counterOf(c)))
		if got, want := sortedCells(l), sortedCells(r); !slices.Equal(got, want) {
			t.Fatalf("not associative:\n(a∪b)∪c = %v\na∪(b∪c) = %v", got, want)
		}
		aa := merge(counterOf(a), counterOf(a))
		if got, want := sortedCells(aa), sortedCells(counterOf(a)); !slices.Equal(got, want) {
			t.Fatalf("not idempotent:\na∪a = %v\na = %v", got, want)
		}
		// Oracle: the newest two adjacent windows of each key keep the max per node.
		// (Windows 100..102 are drawn; a key seen in 102 keeps 101 and 102.)
		all := append(append(slices.Clone(a), b...), c...)
		newest := map[string]int64{}
		for _, cell := range all {
			if cell.Count > 0 {
				newest[cell.Key] = max(newest[cell.Key], cell.Window)
			}
		}
		want := map[[3]string]uint64{}
		for _, cell := range all {
			if cell.Count > 0 && cell.Window >= newest[cell.Key]-1 {
				k := [3]string{cell.Key, fmt.Sprint(cell.Window), cell.Node.String()}
				want[k] = max(want[k], cell.Count)
			}
		}
		got := map[[3]string]uint64{}
		for _, cell := range l.Cells() {
			got[[3]string{cell.Key, fmt.Sprint(cell.Window), cell.Node.String()}] = cell.Count
		}
		if !maps.Equal(got, want) {
			t.Fatalf("merged cells = %v, want %v", got, want)
		}
	})
}

// TestCounter_AddAndEstimate checks Add and the sliding estimate against a naive log of
// event times, with events from several nodes merged in.
func TestCounter_AddAndEstimate(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const window = time.Minute
		nodes := []*crdt.Counter{crdt.NewCounter(window, 0), crdt.NewCounter(window, 0)}
		now := counterEpoch
		var events []time.Time
		for i := range rapid.IntRange(0, 60).Draw(t, "events") {
			now = now.Add(time.Duration(rapid.Int64Range(0, int64(40*time.Second)).Draw(t, fmt.Sprint("gap", i))))
			n := rapid.IntRange(0, 1).Draw(t, fmt.Sprint("node", i))
			cell := nodes[n].Add("k", crdt.NodeID(n+1), now)
			nodes[1-n].Merge(cell)
			events = append(events, now)
		}
		w := crdt.NewCounter(window, 0).WindowOf(now)
		var cur, prev uint64
		for _, e := range events {
			switch crdt.NewCounter(window, 0).WindowOf(e) {
			case w:
				cur++
			case w - 1:
				prev++
			}
		}
		for i, c := range nodes {
			e := c.Estimate("k", now)
			if e.Current != cur || e.Previous != prev {
				t.Fatalf("node %d: Estimate = %d current, %d previous; want %d, %d", i, e.Current, e.Previous, cur, prev)
			}
		}
	})
}

func TestEstimate_Until(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cur, prev uint64
		elapsed   time.Duration
		limit     float64
		want      time.Duration
	}{
		{"Below", 3, 0, 0, 10, 0},
		{"CurrentFull", 10, 0, 15 * time.Second, 10, 45*time.Second + 1},
		{"CurrentOver", 20, 0, 0, 10, time.Minute + 30*time.Second + 1},
		{"PreviousDecays", 5, 10, 0, 10, 30*time.Second + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := crdt.Estimate{Current: tc.cur, Previous: tc.prev, Elapsed: tc.elapsed, Window: time.Minute}
			got := e.Until(tc.limit)
			if got != tc.want {
				t.Errorf("Until(%v) = %s, want %s", tc.limit, got, tc.want)
			}
			if got > 0 {
				after := e
				after.Elapsed += got
				if after.Elapsed >= after.Window {
					after = crdt.Estimate{Current: 0, Previous: e.Current, Elapsed: after.Elapsed - after.Window, Window: e.Window}
				}
				if v := after.Value(); v >= tc.limit {
					t.Errorf("after Until: Value = %v, want < %v", v, tc.limit)
				}
			}
		})
	}
	t.Run("Property", func(t *testing.T) {
		rapid.Check(t, func(t *rapid.T) {
			e := crdt.Estimate{
				Current:  rapid.Uint64Range(0, 1000).Draw(t, "cur"),
				Previous: rapid.Uint64Range(0, 1000).Draw(t, "prev"),
				Elapsed:  time.Duration(rapid.Int64Range(0, int64(time.Minute)-1).Draw(t, "elapsed")),
				Window:   time.Minute,
			}
			limit := float64(rapid.IntRange(1, 200).Draw(t, "limit"))
			d := e.Until(limit)
			if d < 0 || d > 2*time.Minute+1 {
				t.Fatalf("Until = %s, want within two windows", d)
			}
			at := e.Elapsed + d
			after := e
			switch {
			case at < e.Window:
				after.Elapsed = at
			case at < 2*e.Window:
				after = crdt.Estimate{Current: 0, Previous: e.Current, Elapsed: at - e.Window, Window: e.Window}
			default:
				after = crdt.Estimate{Window: e.Window}
			}
			if v := after.Value(); v >= limit {
				t.Fatalf("Value after Until(%v) = %s is %v", limit, d, v)
			}
		})
	})
}

func TestCounter_Bounded(t *testing.T) {
	c := crdt.NewCounter(time.Minute, 4)
	now := counterEpoch
	for i := range 10 {
		c.Add(fmt.Sprint("k", i), 1, now)
	}
	if c.Len() > 5 {
		t.Errorf("Len = %d, want at most MaxKeys+1 = 5 (the overflow key)", c.Len())
	}
	if e := c.Estimate("k9", now); e.Current != 6 {
		t.Errorf("untracked key reads %d, want the overflow count 6", e.Current)
	}
	if c.Merge(crdt.CounterCell{Key: "remote", Window: c.WindowOf(now), Node: 2, Count: 3}) {
		t.Errorf("Merge of a new key into a full table = true, want dropped")
	}
	t.Run("Expires", func(t *testing.T) {
		later := now.Add(2 * time.Minute)
		if n := c.Prune(later); n != 5 || c.Len() != 0 {
			t.Errorf("Prune two windows later dropped %d (Len %d), want all 5", n, c.Len())
		}
		c.Add("new", 1, later)
		if e := c.Estimate("new", later); e.Current != 1 {
			t.Errorf("after expiry a new key counts %d, want 1", e.Current)
		}
	})
	t.Run("OldWindowIgnored", func(t *testing.T) {
		later := now.Add(2 * time.Minute)
		if c.Merge(crdt.CounterCell{Key: "new", Window: c.WindowOf(now), Node: 2, Count: 9}) {
			t.Errorf("Merge of a window two behind = true, want ignored")
		}
		if e := c.Estimate("new", later); e.Previous != 0 || e.Current != 1 {
			t.Errorf("Estimate = %+v, want the old cell ignored", e)
		}
	})
	t.Run("Saturates", func(t *testing.T) {
		c := crdt.NewCounter(time.Minute, 0)
		w := c.WindowOf(now)
		c.Merge(crdt.CounterCell{Key: "x", Window: w, Node: 1, Count: math.MaxUint64})
		c.Merge(crdt.CounterCell{Key: "x", Window: w, Node: 2, Count: math.MaxUint64})
		c.Add("x", 1, now)
		if e := c.Estimate("x", now); e.Current != math.MaxUint64 {
			t.Errorf("Current = %d, want saturated", e.Current)
		}
	})
}
