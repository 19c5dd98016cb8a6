package functions

import (
	"reflect"
	"testing"
)

type fakeMembership struct {
	self    Member
	members []Member
}

func (m fakeMembership) Self() Member      { return m.self }
func (m fakeMembership) Members() []Member { return m.members }
func (m fakeMembership) Placement() *Placement {
	return &Placement{Replicas: 2, Partitions: 4096, Holds: 2731, Ideal: 2730.7}
}

func TestClusterInfo(t *testing.T) {
	lag := int64(12)
	self := Member{Name: "eu-1", ID: "0000000000000001", Region: "eu", Status: "alive"}
	members := []Member{
		self,
		{Name: "us-1", ID: "0000000000000002", Region: "us", Status: "suspect", Addr: "10.0.0.2:7946", LagMS: &lag},
	}
	got := (&Cluster{Membership: fakeMembership{self, members}}).Info()
	want := ClusterInfo{Node: self, Members: members, Placement: &Placement{Replicas: 2, Partitions: 4096, Holds: 2731, Ideal: 2730.7}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Info=%+v, want %+v", got, want)
	}
}
