package crdt

import "hash/fnv"

// Digest summarises a replica's key space so that two replicas can find which keys differ
// with traffic proportional to the difference. Keys hash into DigestLeaves leaves grouped
// under DigestBranches branches; a leaf holds the XOR of the hashes of its (key, value)
// pairs, so a write updates it in O(1) (Toggle the old pair out, the new pair in). Two
// replicas compare the root, then the branches that differ, then the leaves under those,
// then exchange key lists only for the leaves that differ. Replicas in sync exchange one
// root; a single differing key costs one branch list, one leaf list and one key list.
//
// A Digest is a plain value of 32 KiB; it is not safe for concurrent use.
type Digest struct {
	leaves [DigestLeaves]uint64
}

const (
	// DigestBranches is the number of branches under the root.
	DigestBranches = 64
	// DigestLeaves is the number of leaves, DigestBranches per branch.
	DigestLeaves = DigestBranches * DigestBranches
)

// PairHash returns the hash a (key, value) pair contributes to its leaf. value must be
// the canonical encoding of the key's state.
func PairHash(key string, value []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(value)
	return mix(h.Sum64())
}

// LeafOf returns the leaf that key belongs to.
func LeafOf(key string) int {
	h := fnv.New64a()
	h.Write([]byte(key))
	return int(mix(h.Sum64()) >> (64 - 12))
}

// mix is the splitmix64 finaliser: it spreads FNV's weak high bits.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Toggle adds a pair's hash to key's leaf, or removes it if it was added before.
func (d *Digest) Toggle(key string, pairHash uint64) {
	d.leaves[LeafOf(key)] ^= pairHash
}

// Leaf returns the hash of leaf i.
func (d *Digest) Leaf(i int) uint64 { return d.leaves[i] }

// Branch returns the hash of branch b: the XOR of its leaves.
func (d *Digest) Branch(b int) uint64 {
	var h uint64
	for _, l := range d.leaves[b*DigestBranches : (b+1)*DigestBranches] {
		h ^= l
	}
	return h
}

// Root returns the hash of the whole key space.
func (d *Digest) Root() uint64 {
	var h uint64
	for _, l := range d.leaves {
		h ^= l
	}
	return h
}

// Branches returns the hashes of all branches.
func (d *Digest) Branches() []uint64 {
	out := make([]uint64, DigestBranches)
	for b := range out {
		out[b] = d.Branch(b)
	}
	return out
}

// LeavesOf returns the hashes of the leaves of branch b, in order.
func (d *Digest) LeavesOf(b int) []uint64 {
	out := make([]uint64, DigestBranches)
	copy(out, d.leaves[b*DigestBranches:])
	return out
}
