package crdt

import "hash/fnv"

// Digest summarises a replica's key space so that two replicas can find which keys differ
// with traffic proportional to the difference. Its DigestLeaves leaves, grouped under
// DigestBranches branches, are the partitions: a key counts in the leaf of each of its
// homes (KeyHomes); a leaf holds the XOR of the hashes of its (key, value)
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

// mix is Mix64: here it spreads FNV's weak high bits.
func mix(x uint64) uint64 { return Mix64(x) }

// Mix64 is splitmix64's finaliser, a bijection of uint64 with full avalanche. Its outputs
// are part of what nodes agree on (digest leaves, placement scores): it never changes.
func Mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Toggle adds a pair's hash to the leaf of each of key's homes (KeyHomes), or removes it
// if it was added before.
func (d *Digest) Toggle(key string, pairHash uint64) {
	h := KeyHomes(key)
	d.leaves[h.first] ^= pairHash
	if h.second != h.first {
		d.leaves[h.second] ^= pairHash
	}
}

// Restrict zeroes every leaf whose bit is clear in mask: DigestLeaves bits, leaf i at bit
// i%64 of word i/64. A nil mask keeps every leaf; a mask of another length keeps none.
// Two replicas that each hold only some partitions compare restricted digests.
func (d *Digest) Restrict(mask []uint64) {
	if mask == nil {
		return
	}
	for i := range d.leaves {
		if w := i >> 6; w >= len(mask) || mask[w]&(1<<(i&63)) == 0 {
			d.leaves[i] = 0
		}
	}
}

// Leaf returns the hash of leaf i.
func (d *Digest) Leaf(i int) uint64 { return d.leaves[i] }

// Branch returns the hash of branch b: the XOR of its leaves, each mixed with its index
// first. A plain XOR would let a key with two homes in one branch cancel itself out.
func (d *Digest) Branch(b int) uint64 {
	var h uint64
	for i, l := range d.leaves[b*DigestBranches : (b+1)*DigestBranches] {
		h ^= position(l, b*DigestBranches+i)
	}
	return h
}

// Root returns the hash of the whole key space: the XOR of the branches, each mixed with
// its index first.
func (d *Digest) Root() uint64 {
	var h uint64
	for b := range DigestBranches {
		h ^= position(d.Branch(b), b)
	}
	return h
}

// position mixes a hash with its index, so that equal hashes at two places do not cancel.
// An empty leaf or branch (0) stays 0, so an empty digest is all zeros.
func position(h uint64, i int) uint64 {
	if h == 0 {
		return 0
	}
	return mix(h ^ (uint64(i)+1)*0x9e3779b97f4a7c15)
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
