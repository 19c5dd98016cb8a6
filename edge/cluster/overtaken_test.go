package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/functions"
)

// A's write to a field, overwritten on A by C's newer write to the same field before A
// pushed it, is never pushed by A; yet A's next push tells B it holds every write of A's
// up to a later mark. B, lacking C's write (C → B cut), then "covers" a bookmark naming
// A's write while showing the value from before it.
func TestOvertakenOwnWriteRelayed(t *testing.T) {
	c := newTestCluster(t, 3, []string{"eu", "us", "ap"}, clustersim.WithAntiEntropy(time.Hour))
	a, b, cn := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	str := func(s string) *string { return &s }
	u, err := a.API().Users.Register(ctx, functions.Register{Username: "alice", Password: "correct horse", Profile: functions.Profile{Address: "old"}})
	if err != nil {
		t.Fatal(err)
	}
	key := crdt.UserKey(u.ID)
	address := func(n *clustersim.Node) string {
		m, ok, err := n.DB().Record(ctx, key)
		if err != nil || !ok {
			return ""
		}
		return crdt.ReadUser(u.ID, &m).Profile[crdt.FieldAddress]
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitUntil("alice on b and c", func() bool { return address(b) == "old" && address(cn) == "old" })

	c.Net.CutOneWay("n0", "n1") // A → B
	c.Net.CutOneWay("n2", "n1") // C → B
	if _, err := a.API().Users.UpdateProfile(ctx, u.ID, functions.ProfilePatch{Address: str("from A")}); err != nil {
		t.Fatal(err)
	}
	m, _, _ := a.DB().Record(ctx, key)
	var bm crdt.Bookmark // what the client of A's write holds
	bm.AddMap(&m)
	waitUntil("A's write on C", func() bool { return address(cn) == "from A" })
	if _, err := cn.API().Users.UpdateProfile(ctx, u.ID, functions.ProfilePatch{Address: str("from C")}); err != nil {
		t.Fatal(err)
	}
	waitUntil("C's write on A", func() bool { return address(a) == "from C" })

	c.Net.MendOneWay("n0", "n1") // A → B works again; C → B stays cut
	// Any later write of A's carries a Through past A's address write.
	if _, err := a.API().Users.Register(ctx, functions.Register{Username: "bob", Password: "correct horse"}); err != nil {
		t.Fatal(err)
	}
	waitUntil("B to cover the bookmark of A's write", func() bool { return b.Rep().Covers(bm, cluster.AllPartitions) })
	if got := address(b); got != "from A" && got != "from C" {
		t.Errorf("B covers the bookmark of A's write (address \"from A\") but shows address %q", got)
	}
}

// The same with a sign-out: A's revocation of a session is overtaken on A by C's earlier,
// concurrent one (a flag keeps its earliest setting), so A never pushes it; B then covers
// the bookmark of A's sign-out and still accepts the session.
func TestOvertakenSignOutRelayed(t *testing.T) {
	c := newTestCluster(t, 3, []string{"eu", "us", "ap"}, clustersim.WithAntiEntropy(time.Hour))
	a, b, cn := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	u, err := a.API().Users.Register(ctx, functions.Register{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.API().Sessions.Login(ctx, functions.Login{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The sessions of a node as the binary has them: a use is written at most once a
	// minute, so authenticating writes nothing here.
	sessions := func(n *clustersim.Node) *functions.Sessions {
		return &functions.Sessions{Store: clustersim.Store{DB: n.DB(), Model: c.Model}, Clock: n.DB().Clock(),
			Passwords: clustersim.Passwords(), TouchEvery: time.Minute}
	}
	usable := func(n *clustersim.Node) bool {
		_, err := sessions(n).Authenticate(ctx, u.ID, s.ID)
		return err == nil
	}
	waitUntil("the session on b and c", func() bool { return usable(b) && usable(cn) })

	c.Net.CutOneWay("n0", "n1") // A → B
	c.Net.CutOneWay("n2", "n1") // C → B
	c.Net.CutOneWay("n2", "n0") // C → A, for now
	pc, err := sessions(cn).Authenticate(ctx, u.ID, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := sessions(cn).Revoke(ctx, pc, s.ID); err != nil { // revoked on C first
		t.Fatal(err)
	}
	pa, err := sessions(a).Authenticate(ctx, u.ID, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := sessions(a).Revoke(ctx, pa, s.ID); err != nil { // then signed out on A
		t.Fatal(err)
	}
	m, _, _ := a.DB().Record(ctx, crdt.SessionKey(s.ID))
	var bm crdt.Bookmark // the bookmark of the sign-out's response
	bm.AddMap(&m)

	c.Net.MendOneWay("n2", "n0") // C's revocation reaches A and overtakes A's
	cid := cn.DB().NodeID()
	waitUntil("C's revocation on A", func() bool {
		m, _, _ := a.DB().Record(ctx, crdt.SessionKey(s.ID))
		ts, ok := m.Flag(crdt.FieldRevoked)
		return ok && ts.Node == cid
	})
	c.Net.MendOneWay("n0", "n1") // A → B works again; C → B stays cut
	if _, err := a.API().Users.Register(ctx, functions.Register{Username: "bob", Password: "correct horse"}); err != nil {
		t.Fatal(err)
	}
	waitUntil("B to cover the bookmark of A's sign-out", func() bool { return b.Rep().Covers(bm, cluster.AllPartitions) })
	if usable(b) {
		t.Errorf("B covers the bookmark of the sign-out on A, yet accepts the signed-out session")
	}
}
