package cluster

import (
	"fmt"
	"slices"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// TestPushBatches: pushes are bounded by count and by encoded size, cover every change
// once, in order, and a change larger than the bound goes alone.
func TestPushBatches(t *testing.T) {
	const maxBytes = MaxMessage / 4
	change := func(i, size int) storage.Change {
		var m crdt.Map
		m.Set("v", make([]byte, size), crdt.Timestamp{Wall: int64(i + 1), Node: 1})
		return storage.Change{Key: fmt.Sprintf("u/%d", i), Map: m}
	}
	var cs []storage.Change
	for i := range 40 {
		cs = append(cs, change(i, maxBytes/7))
	}
	cs = append(cs, change(40, maxBytes+1), change(41, 10))
	for i := range 30 {
		cs = append(cs, change(42+i, 10))
	}
	var got []string
	var sizes []int
	for batch := range pushBatches(cs, 16, maxBytes) {
		size := 0
		for _, c := range batch {
			got = append(got, c.Key)
			size += len(c.AppendBinary(nil))
		}
		sizes = append(sizes, len(batch))
		if len(batch) > 16 || (len(batch) > 1 && size > maxBytes) {
			t.Errorf("batch of %d changes, %d bytes; want ≤ 16 and ≤ %d", len(batch), size, maxBytes)
		}
	}
	var want []string
	for _, c := range cs {
		want = append(want, c.Key)
	}
	if !slices.Equal(got, want) {
		t.Errorf("batches cover %v, want %v", got, want)
	}
	t.Logf("batch lengths %v", sizes)
}
