package cluster

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// stubHandler answers every sync request with empty replies and counts pushes.
type stubHandler struct{ pushes atomic.Int64 }

func (h *stubHandler) HandlePush(context.Context, PushRequest) (PushReply, error) {
	h.pushes.Add(1)
	return PushReply{Era: 1}, nil
}
func (h *stubHandler) HandleDigest(context.Context, DigestRequest) (DigestReply, error) {
	return DigestReply{}, nil
}
func (h *stubHandler) HandleLeaves(context.Context, LeavesRequest) (LeavesReply, error) {
	return LeavesReply{}, nil
}

// startTransport serves a TLSTransport of seeds on a loopback port until the test ends.
func startTransport(t *testing.T, name string, seeds ...[]byte) (*TLSTransport, Peer, *stubHandler) {
	t.Helper()
	tr, err := NewTLSTransport(seeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &stubHandler{}
	done := make(chan error, 1)
	go func() { done <- tr.Serve(ln, h) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tr.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("%s: Serve = %v", name, err)
		}
	})
	return tr, Peer{ID: 1, Name: name, Addr: ln.Addr().String()}, h
}

// TestTLSTransportKeyRotation: the keys change at once, with no restart, through the
// three steps of a rotation; after the old key is removed, a node holding only it can
// neither call nor be called — not on a new connection, and not on one it opened
// before the removal.
func TestTLSTransportKeyRotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, pa, ha := startTransport(t, "a", k1)
	b, pb, _ := startTransport(t, "b", k1)
	old, pold, _ := startTransport(t, "old", k1) // keeps only k1 throughout
	ctx := context.Background()
	both := func(step string) {
		t.Helper()
		if _, err := a.Push(ctx, pb, PushRequest{From: 1}); err != nil {
			t.Fatalf("%s: a → b: %v", step, err)
		}
		if _, err := b.Push(ctx, pa, PushRequest{From: 2}); err != nil {
			t.Fatalf("%s: b → a: %v", step, err)
		}
	}
	both("one key")
	if _, err := old.Push(ctx, pa, PushRequest{From: 3}); err != nil { // opens a connection old → a
		t.Fatalf("old → a before the rotation: %v", err)
	}
	for _, step := range []struct {
		name  string
		seeds [][]byte
	}{
		{"add the new key", [][]byte{k1, k2}},
		{"make it first", [][]byte{k2, k1}},
		{"remove the old", [][]byte{k2}},
	} {
		if err := a.SetKeys(step.seeds); err != nil {
			t.Fatal(err)
		}
		both(step.name + " on a only") // each step, half done, still works both ways
		if err := b.SetKeys(step.seeds); err != nil {
			t.Fatal(err)
		}
		both(step.name)
	}
	before := ha.pushes.Load()
	if _, err := old.Push(ctx, pa, PushRequest{From: 3}); err == nil {
		t.Errorf("old → a over the connection opened before the removal: succeeded")
	}
	old.client.CloseIdleConnections()
	if _, err := old.Push(ctx, pa, PushRequest{From: 3}); err == nil {
		t.Errorf("old → a on a new connection: succeeded")
	}
	if _, err := a.Push(ctx, pold, PushRequest{From: 1}); err == nil {
		t.Errorf("a → old: succeeded")
	}
	if got := ha.pushes.Load(); got != before {
		t.Errorf("a handled %d pushes from old after the removal", got-before)
	}
	if err := a.SetKeys(nil); err == nil {
		t.Errorf("SetKeys(nil) succeeded")
	}
	both("after a failed SetKeys")
}
