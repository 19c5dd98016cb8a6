package crdt

import (
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestCounter_CellsBounded: whatever nodes merges name (a peer can name any), the cells
// held stay within MaxCells but for this node's own, which are always counted; the count
// of cells held is exact through adds, merges, window turns and prunes.
func TestCounter_CellsBounded(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const self NodeID = 1
		c := NewCounter(time.Minute, 6)
		c.MaxCells = 10
		now := time.Unix(1_800_000_000, 0)
		keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
		for i := range rapid.IntRange(0, 200).Draw(t, "ops") {
			switch op := rapid.IntRange(0, 9).Draw(t, fmt.Sprint("op", i)); {
			case op < 3:
				key := rapid.SampledFrom(keys).Draw(t, fmt.Sprint("key", i))
				before := c.Estimate(key, now)
				cell := c.Add(key, self, now)
				if cell.Key == key && c.Estimate(key, now).Current != before.Current+1 {
					t.Fatalf("own event on %s not counted", key)
				}
			case op < 8:
				c.Merge(CounterCell{
					Key:    rapid.SampledFrom(keys).Draw(t, fmt.Sprint("key", i)),
					Window: c.WindowOf(now) + rapid.Int64Range(-2, 1).Draw(t, fmt.Sprint("w", i)),
					Node:   NodeID(rapid.IntRange(2, 40).Draw(t, fmt.Sprint("node", i))),
					Count:  rapid.Uint64Range(1, 5).Draw(t, fmt.Sprint("n", i)),
				})
			case op < 9:
				now = now.Add(time.Duration(rapid.Int64Range(0, int64(90*time.Second)).Draw(t, fmt.Sprint("gap", i))))
			default:
				c.Prune(now)
			}
			all, own := c.Cells(), 0
			for _, cell := range all {
				if cell.Node == self {
					own++
				}
			}
			if c.cells != len(all) {
				t.Fatalf("counts %d cells, holds %d", c.cells, len(all))
			}
			if len(all)-own > c.MaxCells {
				t.Fatalf("%d cells of other nodes, over MaxCells %d", len(all)-own, c.MaxCells)
			}
		}
	})
}
