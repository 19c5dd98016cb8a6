// Package placement decides which nodes of each region hold each partition of the key
// space. Every replicated key has one or two home partitions in [0, crdt.DigestLeaves),
// computed in crdt; with N replicas, each region keeps a full copy of the data spread over
// its members, and a partition is held, in each region, by the N members of that region
// with the highest score hash(member name, partition) — rendezvous, or
// highest-random-weight, hashing. N = 0 means every member of a region holds every
// partition, and so does every member of a region with N or fewer members.
//
// The package is pure: a Table is a value computed from a membership view and the
// replica count, with no goroutines, I/O or clock. It imports only the standard library
// and crdt; the cluster layer builds a Table on each membership change and asks it, per
// key and per peer, whether the peer holds the key's partitions.
//
// # Scores follow names
//
// A member's score for a partition depends only on its Name (FNV-1a 64 of the name,
// then splitmix64's finaliser over the partition), never on its NodeID, its address, the
// process or the Go version. A node that restarts under the same name therefore holds the
// same partitions. A node whose data directory was wiped comes back with a new NodeID but
// the same name, so it owns the same partitions as before, now empty: it must pull them
// from the other holders before they can count it as a copy.
//
// # Movement
//
// Regions are independent: a member joining or leaving one region never changes who
// holds what in another. Within a region of n members with N > 0 replicas:
//
//   - Adding a member to a region of n ≥ N moves about N/(n+1) of the region's
//     partitions, and only to the new member: each partition either keeps its holders or
//     swaps exactly one of them (the one with the lowest score) for the newcomer. In a
//     smaller region (or with N = 0) the newcomer gains everything and nobody loses.
//   - Removing a member changes only the partitions it held, and each of them loses only
//     that member and gains exactly one other (the next highest score) while the region
//     keeps at least N members; in a smaller region nobody gains, as the others already
//     held everything.
//
// Each member's share is, over the random-looking scores, binomial with mean
// crdt.DigestLeaves·N/n (Table.Ideal); Table.Share gives the actual count, and Moves the
// changes between two tables that the cluster must copy or may drop.
package placement
