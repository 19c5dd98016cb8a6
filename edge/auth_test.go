package edge

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// afterRead is a functions.Store whose first Record or Records call that reads key runs
// then once, after the read and before returning it: what happens in that moment on a
// busy node.
type afterRead struct {
	functions.Store
	key  string
	once sync.Once
	then func()
}

func (s *afterRead) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	m, ok, err := s.Store.Record(ctx, key)
	if key == s.key {
		s.once.Do(s.then)
	}
	return m, ok, err
}

func (s *afterRead) Records(ctx context.Context, keys ...string) ([]crdt.Map, []bool, error) {
	ms, ok, err := s.Store.Records(ctx, keys...)
	if slices.Contains(keys, s.key) {
		s.once.Do(s.then)
	}
	return ms, ok, err
}

// TestAuth_SessionArrivesAfterTheRead: a fresh token from another node is used here while
// its session is being pushed here. The request reads the session a moment before the
// push applies it, and the push has also told this node that it now holds the session's
// creation before the request asks. Not a 401: what this node knows it holds must be
// looked at after the read that failed, so the request meets the token's bookmark and
// reads again. (When bbolt syncs on commit, readers see a commit an fsync before the push
// that brought it returns and records its Through, so this interleaving is rare; with a
// write-ahead log in front of bbolt the two are microseconds apart, and
// TestConsistencyRoundRobin/LoginAnywhere hit it under load.)
func TestAuth_SessionArrivesAfterTheRead(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "auth-0"))
	ctx := context.Background()
	u, err := n.users.Register(ctx, functions.Register{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}

	// A session another node (origin) created a moment ago, and its token.
	const origin = crdt.NodeID(0x0123456789abcdef)
	created := crdt.Timestamp{Wall: n.cfg.Now().UnixNano(), Node: origin}
	sid := crdt.PartitionPrefix(crdt.IDPartition(u.ID)) + strings.Repeat("5", 32-crdt.PartitionDigits)
	expires := created.Time().Add(time.Hour)
	var bm crdt.Bookmark
	bm.Add(created)
	token, err := n.tokens.sign(context.Background(), u.ID, sid, expires, bm, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The origin is a member (a failed one here): only members' pushes vouch.
	n.replicator.SetMembership(nil, []cluster.Peer{{ID: origin, Name: "origin"}})
	rep, err := n.replicator.HandlePush(ctx, cluster.PushRequest{From: origin})
	if err != nil {
		t.Fatal(err)
	}
	if n.replicator.Covers(bm, cluster.AllPartitions) {
		t.Fatal("the node knows it holds the session's creation before it arrived")
	}
	// The origin's push: the session, and that its origin's writes up to it are all here.
	push := cluster.PushRequest{
		From:    origin,
		Changes: []storage.Change{{Key: crdt.SessionKey(sid), Map: crdt.NewSession(u.ID, expires, time.Hour, created)}},
		Through: created,
		Era:     rep.Era,
	}
	hook := &afterRead{Store: n.sessions.Store, key: crdt.SessionKey(sid), then: func() {
		if _, err := n.replicator.HandlePush(ctx, push); err != nil {
			t.Errorf("push: %v", err)
		}
		if !n.replicator.Covers(bm, cluster.AllPartitions) {
			t.Errorf("the push did not teach the node that it holds the session's creation")
		}
	}}
	// Served by app.Test, whose goroutine starts after this assignment: no request read
	// the field before it.
	n.sessions.Store = hook

	req := httptest.NewRequest("GET", "/v1/sessions/current", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := n.app.Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ran := false
	hook.once.Do(func() { ran = true })
	if ran {
		t.Fatal("the request never read the session")
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), sid) {
		t.Fatalf("fresh token whose session arrived while it was read: status %d: %s; want 200 and the session", resp.StatusCode, body)
	}
}
