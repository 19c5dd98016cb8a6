package crdt

import (
	"math"
	"time"
)

// Counter is a windowed grow-only counter (a G-counter per key and fixed time window):
// for every key and window each node counts only its own events, and merging takes the
// maximum per (key, window, node), so merges are commutative, associative and idempotent
// and a count never goes down however messages are lost, duplicated or reordered.
//
// Time is cut into fixed windows of Window (window w covers [w·Window, (w+1)·Window) since
// the Unix epoch), and a key's rate is estimated by a sliding window over the current and
// the previous one (Estimate). Only those two windows matter, so older ones are dropped
// (Prune, and Add when the key table is full); cells of such windows that arrive later are
// ignored. That drop depends on the time passed in, so two replicas converge on the
// windows both still keep.
//
// Memory is bounded: at most MaxKeys keys are tracked, each with at most two windows of
// one cell per node that counted. When the table is full even after pruning, a local event
// for a new key is counted under OverflowKey, which Estimate reads for every untracked key
// (limits get coarser and stricter, never off), and remote cells for new keys are dropped
// (the sender's events on them are missed on this node until a key frees up).
//
// A Counter is a value with no goroutines or clock of its own; it is not safe for
// concurrent use.
type Counter struct {
	Window  time.Duration // window length; must be positive
	MaxKeys int           // bound on tracked keys; default DefaultCounterKeys

	keys map[string]*counterKey
}

// DefaultCounterKeys is the default Counter.MaxKeys. A key costs about 200 bytes with one
// node's cells, so the default table stays under about 25 MiB.
const DefaultCounterKeys = 1 << 17

// OverflowKey is the key under which a full Counter counts events for new keys.
const OverflowKey = "\x00overflow"

// counterKey holds a key's cells in its two newest windows.
type counterKey struct {
	win   [2]int64 // window numbers; win[0] > win[1] when both are set
	cells [2]map[NodeID]uint64
}

// CounterCell is one node's count of a key in one window: the unit of replication.
type CounterCell struct {
	Key    string
	Window int64 // window number: Unix time / Counter.Window
	Node   NodeID
	Count  uint64
}

// NewCounter returns an empty counter with the given window length and key bound (0:
// DefaultCounterKeys).
func NewCounter(window time.Duration, maxKeys int) *Counter {
	return &Counter{Window: window, MaxKeys: maxKeys}
}

func (c *Counter) maxKeys() int {
	if c.MaxKeys > 0 {
		return c.MaxKeys
	}
	return DefaultCounterKeys
}

// WindowOf returns the number of the window that holds t.
func (c *Counter) WindowOf(t time.Time) int64 {
	return floorDiv(t.UnixNano(), int64(c.Window))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// Add counts one event of node on key at now and returns the cell it changed (its key is
// OverflowKey when the table was full). The key is copied.
func (c *Counter) Add(key string, node NodeID, now time.Time) CounterCell {
	w := c.WindowOf(now)
	if _, ok := c.keys[key]; !ok && len(c.keys) >= c.maxKeys() {
		c.Prune(now)
		if len(c.keys) >= c.maxKeys() {
			key = OverflowKey
		}
	}
	cells := c.cells(key, w, true)
	if cells == nil { // an older window than the key's two newest: cannot happen for now
		return CounterCell{Key: key, Window: w, Node: node}
	}
	if cells[node] < math.MaxUint64 {
		cells[node]++
	}
	return CounterCell{Key: key, Window: w, Node: node, Count: cells[node]}
}

// cells returns the cell map of key in window w, creating it (and the key, with a
// private copy of its string, even past MaxKeys: callers check) when create is set. It
// returns nil when w is older than the key's two newest windows.
func (c *Counter) cells(key string, w int64, create bool) map[NodeID]uint64 {
	k := c.keys[key]
	if k == nil {
		if !create {
			return nil
		}
		if c.keys == nil {
			c.keys = make(map[string]*counterKey)
		}
		k = &counterKey{win: [2]int64{math.MinInt64, math.MinInt64}}
		c.keys[string([]byte(key))] = k
	}
	switch {
	case k.cells[0] != nil && w == k.win[0]:
		return k.cells[0]
	case k.cells[1] != nil && w == k.win[1]:
		return k.cells[1]
	case !create:
		return nil
	case k.cells[0] == nil || w > k.win[0]:
		if k.cells[0] != nil && w == k.win[0]+1 {
			k.win[1], k.cells[1] = k.win[0], k.cells[0]
		} else {
			k.cells[1] = nil
		}
		k.win[0], k.cells[0] = w, make(map[NodeID]uint64, 1)
		return k.cells[0]
	case k.cells[1] == nil || w > k.win[1]:
		if w != k.win[0]-1 {
			return nil // not adjacent to the newest: outside the sliding window
		}
		k.win[1], k.cells[1] = w, make(map[NodeID]uint64, 1)
		return k.cells[1]
	default:
		return nil
	}
}

// Merge applies a cell: the (key, window, node) count becomes the larger of the two. It
// reports whether the counter changed. A cell of a window older than the key's two newest,
// or of a new key while the table is full, is ignored.
func (c *Counter) Merge(cell CounterCell) bool {
	if cell.Count == 0 {
		return false
	}
	if _, ok := c.keys[cell.Key]; !ok && len(c.keys) >= c.maxKeys() {
		return false
	}
	cells := c.cells(cell.Key, cell.Window, true)
	if cells == nil || cells[cell.Node] >= cell.Count {
		if k := c.keys[cell.Key]; k != nil && k.cells[0] == nil {
			delete(c.keys, cell.Key)
		}
		return false
	}
	cells[cell.Node] = cell.Count
	return true
}

// MergeCounter merges every cell of o into c.
func (c *Counter) MergeCounter(o *Counter) {
	for _, cell := range o.Cells() {
		c.Merge(cell)
	}
}

// Cell returns node's count of key in window w (0 when untracked).
func (c *Counter) Cell(key string, w int64, node NodeID) uint64 {
	return c.cells(key, w, false)[node]
}

// Cells returns every cell, in no particular order; the slice is the caller's.
func (c *Counter) Cells() []CounterCell {
	var out []CounterCell
	for key, k := range c.keys {
		for i := range k.cells {
			for node, n := range k.cells[i] {
				out = append(out, CounterCell{Key: key, Window: k.win[i], Node: node, Count: n})
			}
		}
	}
	return out
}

// Len returns the number of tracked keys.
func (c *Counter) Len() int { return len(c.keys) }

// Prune drops the windows that no longer count at now (all but the current and the
// previous one) and the keys left with none. It returns how many keys it dropped.
func (c *Counter) Prune(now time.Time) int {
	cur := c.WindowOf(now)
	dropped := 0
	for key, k := range c.keys {
		if k.cells[1] != nil && k.win[1] < cur-1 {
			k.cells[1] = nil
		}
		if k.cells[0] != nil && k.win[0] < cur-1 {
			k.cells[0] = nil
		}
		if k.cells[0] == nil && k.cells[1] != nil {
			k.win[0], k.cells[0], k.cells[1] = k.win[1], k.cells[1], nil
		}
		if k.cells[0] == nil {
			delete(c.keys, key)
			dropped++
		}
	}
	return dropped
}

// Estimate returns the sliding-window view of key at now, summed over all nodes. An
// untracked key reads OverflowKey's counts when the table is full.
func (c *Counter) Estimate(key string, now time.Time) Estimate {
	cur := c.WindowOf(now)
	if _, ok := c.keys[key]; !ok && len(c.keys) >= c.maxKeys() {
		key = OverflowKey
	}
	start := time.Unix(0, cur*int64(c.Window))
	e := Estimate{
		Window:  c.Window,
		Elapsed: now.Sub(start),
		Current: sum(c.cells(key, cur, false)),
	}
	e.Previous = sum(c.cells(key, cur-1, false))
	return e
}

func sum(cells map[NodeID]uint64) uint64 {
	var s uint64
	for _, n := range cells {
		if s+n < s {
			return math.MaxUint64
		}
		s += n
	}
	return s
}

// Estimate is a key's count in the current window and the previous one, and how far the
// current window has run.
type Estimate struct {
	Current, Previous uint64
	Elapsed           time.Duration // into the current window, in [0, Window)
	Window            time.Duration
}

// Value returns the sliding-window count: the current window's events plus the previous
// window's weighted by how much of it still lies within one Window of now.
func (e Estimate) Value() float64 {
	if e.Window <= 0 { // the zero Estimate
		return float64(e.Current)
	}
	f := 1 - float64(e.Elapsed)/float64(e.Window)
	return float64(e.Current) + float64(e.Previous)*f
}

// Until returns how long until Value drops below limit with no new events (0 if it is
// already below). It is at most two windows.
func (e Estimate) Until(limit float64) time.Duration {
	if e.Value() < limit {
		return 0
	}
	w := float64(e.Window)
	// Within the current window: Current + Previous·(1 − t/W) < limit.
	if float64(e.Current) < limit && e.Previous > 0 {
		t := w * (1 - (limit-float64(e.Current))/float64(e.Previous))
		return time.Duration(math.Ceil(t)) - e.Elapsed + 1 // +1: strictly past (and float rounding)
	}
	// In the next window, Current becomes the previous one: Current·(1 − t/W) < limit.
	// Here Current ≥ limit (else Previous is 0 and Value < limit).
	rest := e.Window - e.Elapsed
	t := w * (1 - limit/float64(e.Current))
	return rest + time.Duration(math.Ceil(t)) + 1
}
