package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// stubHandler answers every sync request with empty replies and counts pushes (and, in
// startTransport, forwards).
type stubHandler struct{ pushes, forwards atomic.Int64 }

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
// Its forward handler answers 200 with its name, or, for a request whose body is
// "hang up", closes the connection without an answer; it counts the requests.
func startTransport(t *testing.T, name string, seeds ...[]byte) (*TLSTransport, Peer, *stubHandler) {
	t.Helper()
	return startTransportAt(t, "127.0.0.1:0", name, seeds...)
}

// startTransportAt is startTransport on the address addr.
func startTransportAt(t *testing.T, addr, name string, seeds ...[]byte) (*TLSTransport, Peer, *stubHandler) {
	t.Helper()
	tr, err := NewTLSTransport(seeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &stubHandler{}
	tr.HandleForward(func(ctx *fasthttp.RequestCtx) {
		h.forwards.Add(1)
		if string(ctx.Request.Body()) == "hang up" {
			ctx.HijackSetNoResponse(true)
			ctx.Hijack(func(c net.Conn) { c.Close() })
			return
		}
		ctx.SetBodyString(name)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
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
		if got, err := forward(a, pb, ""); err != nil || got != "b" {
			t.Fatalf("%s: forward a → b: %q, %v", step, got, err)
		}
		if got, err := forward(b, pa, ""); err != nil || got != "a" {
			t.Fatalf("%s: forward b → a: %q, %v", step, got, err)
		}
	}
	both("one key")
	if _, err := old.Push(ctx, pa, PushRequest{From: 3}); err != nil { // opens a connection old → a
		t.Fatalf("old → a before the rotation: %v", err)
	}
	if _, err := forward(old, pa, ""); err != nil { // and a forwarding one
		t.Fatalf("forward old → a before the rotation: %v", err)
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
	before, forwardsBefore := ha.pushes.Load(), ha.forwards.Load()
	if _, err := old.Push(ctx, pa, PushRequest{From: 3}); err == nil {
		t.Errorf("old → a over the connection opened before the removal: succeeded")
	}
	if got, err := forward(old, pa, ""); err == nil {
		t.Errorf("forward old → a over the connection opened before the removal: %q", got)
	}
	if got, err := forward(old, pa, ""); err == nil {
		t.Errorf("forward old → a on a new connection: %q", got)
	}
	if got, err := forward(a, pold, ""); err == nil {
		t.Errorf("forward a → old: %q", got)
	}
	if got := ha.forwards.Load(); got != forwardsBefore {
		t.Errorf("a handled %d forwards from old after the removal", got-forwardsBefore)
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

// forward sends body through from.Forward to the peer and returns the answer's body.
func forward(from *TLSTransport, to Peer, body string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetBodyString(body)
	if err := from.Forward(ctx, to, req, resp); err != nil {
		return "", err
	}
	if resp.StatusCode() != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode(), resp.Body())
	}
	return string(resp.Body()), nil
}

// TestTLSTransportForward: a forwarded request is sent once, never again, even when the
// peer hangs up before answering (it may have served it); a peer that cannot be reached
// fails as a dial, which tells the caller nothing was sent; Forward needs a deadline.
func TestTLSTransportForward(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	a, _, _ := startTransport(t, "a", key)
	_, pb, hb := startTransport(t, "b", key)
	if got, err := forward(a, pb, ""); err != nil || got != "b" { // a keep-alive connection a → b
		t.Fatalf("forward a → b: %q, %v", got, err)
	}
	before := hb.forwards.Load()
	if got, err := forward(a, pb, "hang up"); err == nil {
		t.Errorf("forward to a peer that hung up: %q, want an error", got)
	} else if errors.As(err, new(*net.OpError)) && strings.Contains(err.Error(), "dial") {
		t.Errorf("forward to a peer that hung up: %v, reported as not sent", err)
	}
	if got := hb.forwards.Load() - before; got != 1 {
		t.Errorf("b received the request %d times, want once", got)
	}
	if got, err := forward(a, pb, ""); err != nil || got != "b" {
		t.Errorf("forward a → b after the hang-up: %q, %v", got, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := Peer{Name: "gone", Addr: ln.Addr().String()}
	ln.Close()
	_, err = forward(a, gone, "")
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Errorf("forward to a closed port: %v, want a dial error", err)
	}

	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if err := a.Forward(context.Background(), pb, req, resp); err == nil {
		t.Errorf("Forward without a deadline succeeded")
	}
}

// TestTLSTransportShutdownBeforeServe: a transport shut down before it serves does not
// serve: Serve returns at once, with the listener closed.
func TestTLSTransportShutdownBeforeServe(t *testing.T) {
	tr, err := NewTLSTransport([][]byte{bytes.Repeat([]byte{1}, 32)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Serve(ln, &stubHandler{}); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v, want http.ErrServerClosed", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the listener still accepts: %v", err)
	}
}

// TestTLSTransportSetPeers: a peer that stops closes its side of the idle forwarding
// connections to it, and one that comes back at the same address would be sent the next
// forward over one of them, which fails after sending; a change of the live peers closes
// them, so the first forward to the returning peer succeeds.
func TestTLSTransportSetPeers(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	a, _, _ := startTransport(t, "a", key)
	restart := func(b *TLSTransport) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}

	b, pb, _ := startTransport(t, "b", key)
	if _, err := forward(a, pb, ""); err != nil {
		t.Fatal(err)
	}
	restart(b)
	b, _, _ = startTransportAt(t, pb.Addr, "b", key)
	if got, err := forward(a, pb, ""); err == nil {
		t.Logf("without SetPeers, the first forward after the restart succeeded (%q): the client found the connection closed", got)
	}

	a.SetPeers([]Peer{pb})
	if _, err := forward(a, pb, ""); err != nil {
		t.Fatal(err)
	}
	restart(b)
	a.SetPeers(nil) // b left
	startTransportAt(t, pb.Addr, "b", key)
	a.SetPeers([]Peer{pb}) // and came back
	if got, err := forward(a, pb, ""); err != nil || got != "b" {
		t.Errorf("first forward after b came back: %q, %v", got, err)
	}
}
