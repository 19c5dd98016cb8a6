package functions

// Member is one node of the cluster as GET /v1/cluster shows it.
type Member struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Region string `json:"region"`
	Status string `json:"status"` // alive, suspect, failed or left
	Addr   string `json:"addr,omitempty"`
	// LagMS is how far this node's copy of the member's writes trails, in milliseconds:
	// the age of the oldest of its changes not yet applied here (0 when in step, -1 when
	// unknown). Absent for the serving node itself.
	LagMS *int64 `json:"lag_ms,omitempty"`
}

// ClusterInfo is this node's view of the cluster.
type ClusterInfo struct {
	Node    Member   `json:"node"`
	Members []Member `json:"members"`
}

// Membership reports the cluster as this node sees it; edge implements it over serf.
type Membership interface {
	Self() Member
	Members() []Member
}

// Cluster answers GET /v1/cluster.
type Cluster struct {
	Membership Membership
}

// Info returns this node and the members it knows, itself included.
func (c *Cluster) Info() ClusterInfo {
	return ClusterInfo{Node: c.Membership.Self(), Members: c.Membership.Members()}
}
