package edge

import (
	"context"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// farRecords is a remoteRecords that holds nothing here and answers every read with one
// record.
type farRecords struct{ reads int }

func (f *farRecords) HoldsKey(string) bool { return false }
func (f *farRecords) ReadRecords(_ context.Context, keys []string) (map[string]crdt.Map, error) {
	f.reads++
	out := map[string]crdt.Map{}
	for _, k := range keys {
		out[k] = crdt.NewClaim("u1", crdt.Timestamp{Wall: 1, Node: 1})
	}
	return out, nil
}

// TestStoreRemoteReadKeepsRequestContext: a read of a record held elsewhere goes over the
// network with the request's context, whose connection may outlive the request (a dial
// in the background reads the context's values): the request's pooled context must then
// not be reset and reused (a node crashed on a nil parent context under --replicas).
func TestStoreRemoteReadKeepsRequestContext(t *testing.T) {
	db, err := storage.Open(t.TempDir()+"/s.db", storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	far := &farRecords{}
	st := store{DB: db, remote: far}
	rc := &requestContext{Context: context.Background()}
	m, ok, err := st.Record(rc, crdt.ClaimKey("bob"))
	if err != nil || !ok || len(crdt.Claimants(&m)) != 1 || far.reads != 1 {
		t.Fatalf("Record of a far key = %v, %v, %v after %d remote reads; want the remote record", m, ok, err, far.reads)
	}
	if !rc.waited {
		t.Errorf("a remote read did not keep the request's context from reuse")
	}
}
