package cluster

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sessiond/sessiond/crdt"
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
