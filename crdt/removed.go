package crdt

import "strings"

// Removed nodes: when an operator removes a lost node for good (sessiond members remove),
// the node that serves the request records the removed node's ID in a cluster-wide
// record under RemovedPrefix (so in ClusterPartition, held by every node). A node whose
// ID is recorded there never takes part in the cluster again: the others leave it out of
// their peers and refuse its sync requests, and it stops once it learns it (its data
// directory must be wiped; a fresh one makes a new ID). The record is never deleted.
const (
	RemovedPrefix = ClusterPrefix + "removed/" // g/removed/<node id> → removed node record

	FieldRemovedName = "name" // FWW: the node's name when it was removed; its TS is the removal's
)

// RemovedKey returns the record key that marks node id removed.
func RemovedKey(id NodeID) string { return RemovedPrefix + id.String() }

// ParseRemovedKey returns the node ID a RemovedKey names, and false for any other key.
func ParseRemovedKey(key string) (NodeID, bool) {
	s, ok := strings.CutPrefix(key, RemovedPrefix)
	if !ok {
		return 0, false
	}
	id, err := ParseNodeID(s)
	return id, err == nil
}

// NewRemoved returns the record, written at ts, that marks the node named name removed.
func NewRemoved(name string, ts Timestamp) Map {
	var m Map
	m.Claim(FieldRemovedName, []byte(name), ts)
	return m
}
