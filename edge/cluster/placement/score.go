package placement

import (
	"hash/fnv"

	"github.com/sessiond/sessiond/crdt"
)

// seedOf returns the seed of the scores of the member called name: FNV-1a 64 of the bytes
// of name, mixed so that names differing in one byte give unrelated seeds. It depends on
// those bytes only, so it is the same in every process, on every platform and under every
// Go version (no maphash, no map order).
func seedOf(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name)) // never fails
	return mix(h.Sum64())
}

// golden is splitmix64's increment, 2⁶⁴ divided by the golden ratio, odd.
const golden = 0x9e3779b97f4a7c15

// score returns the weight for partition p of the member whose seed is seed: the p-th
// output of a splitmix64 stream started at seed. Outputs of one stream are
// pseudo-independent, and so are those of two streams at one index (they are two
// different points of one stream), which is what rendezvous hashing needs: for each
// partition, the ranking of members by score is a uniformly random-looking permutation.
func score(seed uint64, p int) uint64 {
	return mix(seed + uint64(p+1)*golden)
}

// mix is crdt.Mix64, the finaliser the digest uses too.
func mix(x uint64) uint64 { return crdt.Mix64(x) }
