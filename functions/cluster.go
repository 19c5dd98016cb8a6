package functions

import "github.com/sessiond/sessiond/edge/api"

// Member is one node of the cluster as GET /v1/cluster shows it; package api owns the
// JSON shape of it, ClusterInfo, Placement and Moving.
type Member = api.Member

// ClusterInfo is this node's view of the cluster.
type ClusterInfo = api.ClusterInfo

// Placement is how the data is spread over the nodes, as this node sees it.
type Placement = api.Placement

// Moving is data on its way from this node to the nodes that hold it.
type Moving = api.Moving

// Membership reports the cluster as this node sees it; edge implements it over serf.
type Membership interface {
	Self() Member
	Members() []Member
	// Placement returns how the data is spread, or nil when every node holds everything.
	Placement() *Placement
}

// Cluster answers GET /v1/cluster.
type Cluster struct {
	Membership Membership
}

// Info returns this node and the members it knows, itself included.
func (c *Cluster) Info() ClusterInfo {
	return ClusterInfo{Node: c.Membership.Self(), Members: c.Membership.Members(), Placement: c.Membership.Placement()}
}
