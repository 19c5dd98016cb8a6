package crdt

import "testing"

func TestRemovedKey(t *testing.T) {
	for _, id := range []NodeID{1, 0x0123456789abcdef, ^NodeID(0)} {
		got, ok := ParseRemovedKey(RemovedKey(id))
		if !ok || got != id {
			t.Errorf("ParseRemovedKey(RemovedKey(%s)) = %s, %v", id, got, ok)
		}
		if KeyHomes(RemovedKey(id)) != Home(ClusterPartition) {
			t.Errorf("RemovedKey(%s) lives outside the cluster partition", id)
		}
	}
	for _, key := range []string{"", "g/removed/", "g/removed/xyz", "g/removed/0123456789abcdef0", "g/signkey/0123456789abcdef", UserKey("u")} {
		if id, ok := ParseRemovedKey(key); ok {
			t.Errorf("ParseRemovedKey(%q) = %s, true; want false", key, id)
		}
	}
	m := NewRemoved("eu-2", Timestamp{Wall: 5, Node: 1})
	if v, ok := m.Get(FieldRemovedName); !ok || string(v) != "eu-2" {
		t.Errorf("removed record's name %q, %v", v, ok)
	}
}
