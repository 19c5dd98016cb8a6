package api

// Member is one node of the cluster as GET /v1/cluster shows it.
type Member struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Region string `json:"region"`
	Status string `json:"status"` // MemberAlive, MemberSuspect, MemberFailed, MemberLeft or MemberRemoved
	Addr   string `json:"addr,omitempty"`
	// LagMS is how far the serving node's copy of the member's writes trails, in
	// milliseconds: the age of the oldest of its changes not yet applied there (0 when in
	// step, -1 when unknown). Absent for the serving node itself.
	LagMS *int64 `json:"lag_ms,omitempty"`
	// Partitions is how many partitions of the key space the member holds (with
	// placement: --replicas); absent for members that hold none (not alive).
	Partitions *int `json:"partitions,omitempty"`
}

// Member statuses.
const (
	MemberAlive   = "alive"
	MemberSuspect = "suspect"
	MemberFailed  = "failed"
	MemberLeft    = "left"
	// MemberRemoved is a member whose node ID an operator removed for good (sessiond
	// members remove): listed so until gossip forgets it (24 h), and again whenever it
	// comes back on its old data. It takes no part in the cluster.
	MemberRemoved = "removed"
)

// ClusterInfo is the body of GET /v1/cluster: the serving node's view of the cluster.
type ClusterInfo struct {
	Node      Member     `json:"node"`
	Members   []Member   `json:"members"`
	Placement *Placement `json:"placement,omitempty"` // absent without --replicas
}

// Placement is how the data is spread over the nodes, as the serving node sees it.
type Placement struct {
	Replicas   int     `json:"replicas"`   // holders of each key in each region
	Partitions int     `json:"partitions"` // of the key space, in all
	Holds      int     `json:"holds"`      // partitions this node holds
	Ideal      float64 `json:"ideal"`      // its fair share: partitions × replicas / nodes of its region
	// Moving is what this node stores without holding it, as of its latest handoff
	// round: keys placement moved away from it (or writes it accepted for others), which
	// it keeps until their holders confirm them.
	Moving Moving `json:"moving"`
}

// Moving is data on its way from the serving node to the nodes that hold it.
type Moving struct {
	Partitions int `json:"partitions"`
	Keys       int `json:"keys"`
	Dropped    int `json:"dropped"` // keys handed over and dropped since the node started
}

// Status is the body of GET /healthz ("ok") and GET /readyz ("ready", or "not ready"
// with 503).
type Status struct {
	Status string `json:"status"`
}

// RemovedMember is the body of DELETE /v1/admin/members/{name} (200): the member the
// cluster now treats as gone for good.
type RemovedMember struct {
	Name   string `json:"name"`
	Status string `json:"status"` // MemberLeft
}
