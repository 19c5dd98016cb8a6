package placement

import (
	"cmp"
	"math/bits"
	"slices"

	"github.com/sessiond/sessiond/crdt"
)

// partitions is the number of partitions of the key space, one per digest leaf.
const partitions = crdt.DigestLeaves

// Member is a node that may hold partitions.
type Member struct {
	Name   string      // unique in the cluster; the score is computed from it, so a node keeps its partitions across restarts
	ID     crdt.NodeID // the node's replica ID; Owns, Share, Partitions and Moves name members by it
	Region string      // the members of one region share a full copy of the data between them
}

// Table is the placement of every partition over one membership view: for each region
// and partition, the members of that region that hold it. Immutable once built; safe for
// concurrent use.
type Table struct {
	replicas int
	members  []Member // by region, then name
	regions  map[string]*region
	held     map[crdt.NodeID]*holding
}

// region is the placement of every partition over the members of one region.
type region struct {
	lo, hi  int     // its members are Table.members[lo:hi]
	holders int     // holders per partition: hi-lo when replicas is 0, else min(replicas, hi-lo)
	owners  []int32 // owners[p*holders:(p+1)*holders]: indices into Table.members, highest score first
	all     []int32 // the holders of crdt.ClusterPartition: every member, highest score first
}

// row returns the indices into Table.members of the holders of p, highest score first.
func (r *region) row(p int) []int32 {
	if p == crdt.ClusterPartition {
		return r.all
	}
	return r.owners[p*r.holders : (p+1)*r.holders]
}

// holding is what one NodeID holds, as a bitset over partitions, so that Owns is a map
// lookup and a bit test.
type holding struct {
	bits  [partitions / 64]uint64
	share int
}

// New returns the placement of members with replicas holders per partition in each
// region; replicas 0 (or negative, taken as 0) means every member of a region holds
// every partition, and so does every member of a region with replicas or fewer members.
// Whatever replicas, every member holds crdt.ClusterPartition.
//
// It is deterministic: the same members, in any order, and the same replicas give the
// same Table. Members with the same Name as an earlier one in members are ignored (the
// first wins). IDs should be unique too; if several members share one, the ID answers
// Owns, Share and Partitions for all of them together. members is not retained.
func New(members []Member, replicas int) *Table {
	replicas = max(replicas, 0)
	seen := make(map[string]bool, len(members))
	ms := make([]Member, 0, len(members))
	for _, m := range members {
		if !seen[m.Name] {
			seen[m.Name] = true
			ms = append(ms, m)
		}
	}
	slices.SortFunc(ms, func(a, b Member) int {
		return cmp.Or(cmp.Compare(a.Region, b.Region), cmp.Compare(a.Name, b.Name))
	})
	seeds := make([]uint64, len(ms))
	for i, m := range ms {
		seeds[i] = seedOf(m.Name)
	}

	t := &Table{
		replicas: replicas,
		members:  ms,
		regions:  make(map[string]*region),
		held:     make(map[crdt.NodeID]*holding, len(ms)),
	}
	// One holding per distinct ID, shared by the members that carry it.
	holdings := make([]*holding, len(ms))
	for i, m := range ms {
		h := t.held[m.ID]
		if h == nil {
			h = new(holding)
			t.held[m.ID] = h
		}
		holdings[i] = h
	}
	for lo := 0; lo < len(ms); {
		hi := lo + 1
		for hi < len(ms) && ms[hi].Region == ms[lo].Region {
			hi++
		}
		r := place(seeds, lo, hi, replicas)
		r.all = r.owners[crdt.ClusterPartition*r.holders : (crdt.ClusterPartition+1)*r.holders]
		if r.holders < hi-lo {
			every := place(seeds, lo, hi, 0)
			r.all = every.owners[crdt.ClusterPartition*every.holders : (crdt.ClusterPartition+1)*every.holders]
		}
		t.regions[ms[lo].Region] = r
		for p := range partitions {
			for _, idx := range r.row(p) {
				holdings[idx].bits[p>>6] |= 1 << (p & 63)
			}
		}
		lo = hi
	}
	for _, h := range t.held {
		for _, w := range h.bits {
			h.share += bits.OnesCount64(w)
		}
	}
	return t
}

// place ranks, for every partition, the members lo..hi-1 (one region, in name order) by
// score and keeps the top holders. Equal scores rank the smaller name first.
func place(seeds []uint64, lo, hi, replicas int) *region {
	n := hi - lo
	k := n
	if replicas > 0 && replicas < n {
		k = replicas
	}
	r := &region{lo: lo, hi: hi, holders: k, owners: make([]int32, partitions*k)}
	top := make([]uint64, k) // scores of the current row, descending
	for p := range partitions {
		row := r.owners[p*k : (p+1)*k]
		filled := 0
		for i := lo; i < hi; i++ {
			s := score(seeds[i], p)
			// Insertion into the top k: with k small against n, nearly every member
			// fails the first comparison, against the k-th score.
			j := filled
			for j > 0 && s > top[j-1] {
				j--
			}
			if j == k {
				continue
			}
			// Shift down by hand: rows are short, and copy's memmove call cost more
			// than the moves themselves.
			for m := min(filled, k-1); m > j; m-- {
				top[m], row[m] = top[m-1], row[m-1]
			}
			top[j], row[j] = s, int32(i)
			filled = min(filled+1, k)
		}
	}
	return r
}

// Replicas returns the replicas given to New (a negative value as 0).
func (t *Table) Replicas() int { return t.replicas }

// Members returns the members of the table, duplicates dropped, sorted by region then
// name, in a new slice that the caller may modify.
func (t *Table) Members() []Member { return slices.Clone(t.members) }

// Regions returns the regions of the table's members, sorted, in a new slice.
func (t *Table) Regions() []string {
	out := make([]string, 0, len(t.regions))
	for name := range t.regions {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Owners returns the members of region that hold partition p, highest score first, in a
// new slice that the caller may modify. It returns nil for a region with no member or a
// partition outside [0, crdt.DigestLeaves).
func (t *Table) Owners(region string, p int) []Member {
	r := t.regions[region]
	if r == nil || uint(p) >= partitions {
		return nil
	}
	row := r.row(p)
	out := make([]Member, len(row))
	for i, idx := range row {
		out[i] = t.members[idx]
	}
	return out
}

// Owns reports whether the member id holds partition p in its own region. It is false
// for an ID not in the table and for p outside [0, crdt.DigestLeaves). It allocates
// nothing and costs one map lookup.
func (t *Table) Owns(id crdt.NodeID, p int) bool {
	h := t.held[id]
	if h == nil || uint(p) >= partitions {
		return false
	}
	return h.bits[p>>6]&(1<<(p&63)) != 0
}

// OwnsAny reports whether the member id holds any of ps (Owns for any of them); false for
// no ps.
func (t *Table) OwnsAny(id crdt.NodeID, ps []int) bool {
	h := t.held[id]
	if h == nil {
		return false
	}
	for _, p := range ps {
		if uint(p) < partitions && h.bits[p>>6]&(1<<(p&63)) != 0 {
			return true
		}
	}
	return false
}

// Share returns how many partitions the member id holds; 0 for an ID not in the table.
func (t *Table) Share(id crdt.NodeID) int {
	if h := t.held[id]; h != nil {
		return h.share
	}
	return 0
}

// Partitions returns the partitions the member id holds, ascending, in a new slice; nil
// for an ID not in the table.
func (t *Table) Partitions(id crdt.NodeID) []int {
	h := t.held[id]
	if h == nil {
		return nil
	}
	out := make([]int, 0, h.share)
	for w, word := range h.bits {
		for word != 0 {
			out = append(out, w*64+bits.TrailingZeros64(word))
			word &= word - 1
		}
	}
	return out
}

// Ideal returns the ideal share of a member of region, the mean of Share over its
// members: crdt.ClusterPartition, which every member holds, plus the other
// crdt.DigestLeaves−1 partitions ·min(replicas, n)/n for n members; all partitions when
// replicas is 0 or at least n. It returns 0 for a region with no member.
func (t *Table) Ideal(region string) float64 {
	r := t.regions[region]
	if r == nil {
		return 0
	}
	return 1 + float64(partitions-1)*float64(r.holders)/float64(r.hi-r.lo)
}
