package placement

import (
	"slices"

	"github.com/sessiond/sessiond/crdt"
)

// Move is a change in who holds a partition in one region, between two tables.
type Move struct {
	Region    string
	Partition int
	Gained    []crdt.NodeID // members that hold it in the new table and not in the old, ascending; nil if none
	Lost      []crdt.NodeID // members that held it in the old table and not in the new, ascending; nil if none
}

// Moves returns what changed from old to new, sorted by region then partition, one Move
// per region and partition whose holders (as a set of IDs) differ. old may be nil:
// nothing was held before, so every holder in new has gained its partitions; new may be
// nil too, and then every holder in old has lost them. Identical tables give no Move.
func Moves(old, new *Table) []Move {
	var none Table
	if old == nil {
		old = &none
	}
	if new == nil {
		new = &none
	}
	var regions []string
	for name := range old.regions {
		regions = append(regions, name)
	}
	for name := range new.regions {
		if old.regions[name] == nil {
			regions = append(regions, name)
		}
	}
	slices.Sort(regions)

	var moves []Move
	var was, is []crdt.NodeID
	for _, name := range regions {
		for p := range partitions {
			was = old.ownerIDs(name, p, was[:0])
			is = new.ownerIDs(name, p, is[:0])
			gained, lost := difference(is, was), difference(was, is)
			if gained != nil || lost != nil {
				moves = append(moves, Move{Region: name, Partition: p, Gained: gained, Lost: lost})
			}
		}
	}
	return moves
}

// ownerIDs appends to buf the IDs of the holders of p in region, ascending and without
// duplicates, and returns it.
func (t *Table) ownerIDs(region string, p int, buf []crdt.NodeID) []crdt.NodeID {
	r := t.regions[region]
	if r == nil {
		return buf
	}
	for _, idx := range r.row(p) {
		buf = append(buf, t.members[idx].ID)
	}
	slices.Sort(buf)
	return slices.Compact(buf)
}

// difference returns the IDs of a that are not in b, both ascending; nil if none.
func difference(a, b []crdt.NodeID) []crdt.NodeID {
	var out []crdt.NodeID
	j := 0
	for _, id := range a {
		for j < len(b) && b[j] < id {
			j++
		}
		if j == len(b) || b[j] != id {
			out = append(out, id)
		}
	}
	return out
}
