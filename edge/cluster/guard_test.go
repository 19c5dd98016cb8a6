package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// TestGuard: each invalid message backs the peer off, twice as long as the one before up
// to the ceiling; a peer quiet for as long again is forgiven; log lines are at most one
// per guardLogEvery per peer; every message is counted by kind.
func TestGuard(t *testing.T) {
	var logs bytes.Buffer
	m := NewMetrics()
	g := NewGuard(slog.New(slog.NewTextHandler(&logs, nil)), m)
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	g.now = func() time.Time { return now }
	bad := errors.New("bad")
	if err := g.Admit("p"); err != nil {
		t.Fatalf("Admit before any invalid message = %v", err)
	}
	want := guardMinBackoff
	for i := range 12 {
		if d := g.Invalid("p", "push", bad); d != want {
			t.Fatalf("backoff after %d invalid messages = %v, want %v", i+1, d, want)
		}
		if g.Admit("p") == nil || g.Admit("q") != nil {
			t.Fatalf("after an invalid message from p: Admit(p) = nil or Admit(q) refused")
		}
		want = min(2*want, guardMaxBackoff)
	}
	if got := testutil.ToFloat64(m.InvalidMessages.WithLabelValues("push")); got != 12 {
		t.Errorf("counted %v invalid pushes, want 12", got)
	}
	if n := strings.Count(logs.String(), "invalid sync message"); n != 1 {
		t.Errorf("%d log lines for 12 messages at one instant, want 1", n)
	}
	now = now.Add(guardMaxBackoff - time.Millisecond)
	if g.Admit("p") == nil {
		t.Errorf("Admit(p) before its backoff ended = nil")
	}
	now = now.Add(time.Millisecond)
	if err := g.Admit("p"); err != nil {
		t.Errorf("Admit(p) once its backoff ended = %v", err)
	}
	now = now.Add(guardMaxBackoff + time.Second) // quiet as long again: forgiven
	if d := g.Invalid("p", "digest_reply", bad); d != guardMinBackoff {
		t.Errorf("backoff after forgiveness = %v, want %v", d, guardMinBackoff)
	}
	if n := strings.Count(logs.String(), "invalid sync message"); n != 2 {
		t.Errorf("%d log lines, want 2 (the second %s after the first)", n, guardLogEvery)
	}
	if g.Count("p") != 13 {
		t.Errorf("Count(p) = %d, want 13", g.Count("p"))
	}
	var none *Guard
	if none.Admit("p") != nil || none.Backoff("p") != 0 {
		t.Errorf("a nil guard backs off")
	}
}

// TestCheckLeavesReply: a leaves reply may name only keys the request compared.
func TestCheckLeavesReply(t *testing.T) {
	cs := sampleSyncChanges()
	user := cs[0].Key
	leaf := crdtHome(user)
	req := LeavesRequest{Leaves: []LeafPairs{{Leaf: leaf}}}
	only := LeavesRequest{Leaves: []LeafPairs{{Leaf: leaf, Only: true, Pairs: nil}}}
	ranged := LeavesRequest{Leaves: []LeafPairs{{Leaf: leaf, From: user + "\x00"}}}
	for _, tc := range []struct {
		name string
		req  LeavesRequest
		rep  LeavesReply
		ok   bool
	}{
		{"OK", req, LeavesReply{Changes: cs[:1], Want: []string{user}}, true},
		{"OKEmpty", req, LeavesReply{}, true},
		{"ErrOtherLeaf", LeavesRequest{Leaves: []LeafPairs{{Leaf: (leaf + 1) % 4096}}}, LeavesReply{Want: []string{user}}, false},
		{"ErrOutOfRange", ranged, LeavesReply{Changes: cs[:1]}, false},
		{"ErrNotOffered", only, LeavesReply{Want: []string{user}}, false},
		{"ErrTruncatedEmpty", req, LeavesReply{Truncated: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkLeavesReply(tc.req, tc.rep)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidMessage)) {
				t.Errorf("checkLeavesReply = %v, want ok %v (or ErrInvalidMessage)", err, tc.ok)
			}
		})
	}
}

func crdtHome(key string) int { return crdt.KeyHomes(key).First() }

// rawTransport answers digests with a reply that no decoder would produce.
type rawTransport struct {
	replyTransport
	digest DigestReply
}

func (t *rawTransport) Digest(context.Context, Peer, DigestRequest) (DigestReply, error) {
	return t.digest, nil
}

// TestSyncUndecodedReply: a transport that hands over replies without decoding them
// (an in-process one) cannot make the replicator index out of range: an out-of-range
// branch is an invalid reply, and backs the peer off.
func TestSyncUndecodedReply(t *testing.T) {
	db, err := storage.Open(filepath.Join(t.TempDir(), "u.db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, bl := range []BranchLeaves{
		{Branch: crdt.DigestBranches, Leaves: make([]uint64, crdt.DigestBranches)},
		{Branch: -1, Leaves: make([]uint64, crdt.DigestBranches)},
		{Branch: 0, Leaves: make([]uint64, crdt.DigestBranches+1)},
	} {
		r := NewReplicator(Config{DB: db, Transport: &rawTransport{digest: DigestReply{Branches: []BranchLeaves{bl}}}})
		r.Start()
		err := r.SyncWith(context.Background(), Peer{ID: 2, Name: "p"})
		r.Close()
		if !errors.Is(err, ErrInvalidMessage) || r.Guard().Count("p") != 1 {
			t.Errorf("branch %d with %d leaves: err %v, counted %d; want ErrInvalidMessage, counted once", bl.Branch, len(bl.Leaves), err, r.Guard().Count("p"))
		}
	}
}
