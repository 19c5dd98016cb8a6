package cluster

import (
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/storage"
)

// Replication that cannot jam: messages bounded in bytes however many keys differ, a
// failing anti-entropy round that does not stop pushes, and a change a peer cannot take
// that does not hold back the others.

// TestLeafRequests: the requests that compare leaves stay within the budget, carry every
// pair of every leaf once and in order, and a leaf too large for one request goes in parts
// whose key ranges hold their pairs and follow each other without a gap.
func TestLeafRequests(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		budget := rapid.IntRange(600, 4000).Draw(t, "budget")
		nLeaves := rapid.IntRange(0, 40).Draw(t, "leaves")
		leaves := make([]int, nLeaves)
		pairs := make(map[int][]storage.KeyHash)
		for i := range leaves {
			leaves[i] = i * 7
			keys := rapid.SliceOfNDistinct(rapid.StringMatching(`[a-z]{1,60}`), 0, 120, rapid.ID).Draw(t, fmt.Sprintf("keys%d", i))
			slices.Sort(keys)
			for _, k := range keys {
				pairs[leaves[i]] = append(pairs[leaves[i]], storage.KeyHash{Key: k, Hash: uint64(len(k))})
			}
		}
		got := make(map[int][]storage.KeyHash)
		next := make(map[int]string) // the From the leaf's next part must have
		for req, err := range leafRequests(leaves, budget, func(l int) ([]storage.KeyHash, error) { return pairs[l], nil }) {
			if err != nil {
				t.Fatalf("leafRequests: %v", err)
			}
			b, _ := req.MarshalBinary()
			if len(b) > budget || len(req.Leaves) > leavesPerRequest || len(req.Leaves) == 0 {
				t.Fatalf("request of %d bytes and %d leaves, budget %d", len(b), len(req.Leaves), budget)
			}
			var back LeavesRequest
			if err := back.UnmarshalBinary(b); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			for _, lp := range back.Leaves {
				if lp.From != next[lp.Leaf] {
					t.Fatalf("leaf %d part from %q, want %q", lp.Leaf, lp.From, next[lp.Leaf])
				}
				for _, p := range lp.Pairs {
					if !lp.covers(p.Key) {
						t.Fatalf("leaf %d part [%q, %q) holds %q", lp.Leaf, lp.From, lp.To, p.Key)
					}
				}
				got[lp.Leaf] = append(got[lp.Leaf], lp.Pairs...)
				next[lp.Leaf] = lp.To
				if lp.To == "" {
					next[lp.Leaf] = "\xff(done)"
				}
			}
		}
		for _, l := range leaves {
			if next[l] != "\xff(done)" {
				t.Fatalf("leaf %d never finished (next %q)", l, next[l])
			}
			if !slices.Equal(got[l], pairs[l]) && !(len(got[l]) == 0 && len(pairs[l]) == 0) {
				t.Fatalf("leaf %d: requests carry %v, want %v", l, got[l], pairs[l])
			}
		}
	})
}
