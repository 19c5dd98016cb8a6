package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
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
	} else if errors.Is(err, ErrNotSent) {
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
	if !errors.Is(err, ErrNotSent) || !errors.As(err, &op) || op.Op != "dial" {
		t.Errorf("forward to a closed port: %v, want a dial error, not sent", err)
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

// TestTLSTransportPeerRestarts: a peer that stops closes its side of the idle forwarding
// connections to it. When it comes back at the same address, the next forward finds the
// pooled connection closed before writing on it and goes out on a fresh one: it arrives
// once and succeeds, with or without a change of peers (SetPeers) in between.
func TestTLSTransportPeerRestarts(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	a, _, _ := startTransport(t, "a", key)
	stop := func(b *TLSTransport) {
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
	stop(b)
	b, _, hb := startTransportAt(t, pb.Addr, "b", key)
	if got, err := forward(a, pb, ""); err != nil || got != "b" || hb.forwards.Load() != 1 {
		t.Errorf("first forward after b restarted: %q, %v, received %d times", got, err, hb.forwards.Load())
	}

	a.SetPeers([]Peer{pb})
	if _, err := forward(a, pb, ""); err != nil {
		t.Fatal(err)
	}
	stop(b)
	a.SetPeers(nil) // b left
	_, _, hb = startTransportAt(t, pb.Addr, "b", key)
	a.SetPeers([]Peer{pb}) // and came back
	if got, err := forward(a, pb, ""); err != nil || got != "b" || hb.forwards.Load() != 1 {
		t.Errorf("first forward after b left and came back: %q, %v, received %d times", got, err, hb.forwards.Load())
	}
}

// TestTLSTransportBusyPeer: when every connection to a peer is busy past the wait, the
// forward fails as not sent (the caller may try another holder, even with a write).
func TestTLSTransportBusyPeer(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	a, _, _ := startTransport(t, "a", key)
	a.fwd.MaxConnsPerHost, a.fwd.MaxConnWaitTimeout = 1, 50*time.Millisecond
	b := newTransport(t, key)
	started, release := make(chan struct{}), make(chan struct{})
	var served atomic.Int64
	b.HandleForward(func(ctx *fasthttp.RequestCtx) {
		if served.Add(1) == 1 {
			close(started)
			<-release
		}
		ctx.SetBodyString("b")
	})
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- b.Serve(ln, &stubHandler{}) }()
	pb := Peer{Name: "b", Addr: ln.Addr().String()}
	first := make(chan error, 1)
	go func() { _, err := forward(a, pb, ""); first <- err }()
	<-started
	if _, err := forward(a, pb, ""); !errors.Is(err, ErrNotSent) {
		t.Errorf("forward while the only connection is busy: %v, want not sent", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("the first forward: %v", err)
	}
	if got := served.Load(); got != 1 {
		t.Errorf("b served %d forwards, want 1", got)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
	<-done
}

// failOnce is a listener whose first Accept fails as when the process has run out of
// file descriptors.
type failOnce struct {
	net.Listener
	failed atomic.Bool
}

func (l *failOnce) Accept() (net.Conn, error) {
	if l.failed.CompareAndSwap(false, true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestTLSTransportServeSurvivesAcceptErrors: an accept error that may pass (too many open
// files) does not stop the server: it serves the next connection.
func TestTLSTransportServeSurvivesAcceptErrors(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	a, _, _ := startTransport(t, "a", key)
	b := newTransport(t, key)
	h := &stubHandler{}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- b.Serve(&failOnce{Listener: ln}, h) }()
	if _, err := a.Push(context.Background(), Peer{Name: "b", Addr: ln.Addr().String()}, PushRequest{From: 1}); err != nil {
		t.Errorf("push after a failed accept: %v", err)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
}

// rawPeer opens a TLS connection to addr as a peer holding key would, for requests
// written by hand.
func rawPeer(t *testing.T, addr string, key []byte) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	tr, err := NewTLSTransport([][]byte{key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", addr, tr.tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// TestTLSTransportRemovedKeyConnection: once a key is removed, a connection opened under
// it is served nothing more: the next request on it is neither read nor answered.
func TestTLSTransportRemovedKeyConnection(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, pa, ha := startTransport(t, "a", k1)
	c, br := rawPeer(t, pa.Addr, k1)
	push := func() (*http.Response, error) {
		body, _ := (PushRequest{From: 9}).MarshalBinary()
		if _, err := fmt.Fprintf(c, "POST /sync/v1/push HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
			return nil, err
		}
		return http.ReadResponse(br, nil)
	}
	if resp, err := push(); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("push under the accepted key: %v, %v", resp, err)
	}
	before := ha.pushes.Load()
	if err := a.SetKeys([][]byte{k2}); err != nil {
		t.Fatal(err)
	}
	if resp, err := push(); err == nil {
		t.Errorf("push over the connection opened under the removed key answered %s", resp.Status)
	}
	if got := ha.pushes.Load() - before; got != 0 {
		t.Errorf("a handled %d pushes after the key was removed", got)
	}
}

// TestTLSTransportShutdownClosesConnections: Shutdown does not wait for a connection that
// never sent a request (fasthttp would count it busy until its read timeout), and once
// it has returned no connection is served.
func TestTLSTransportShutdownClosesConnections(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	b := newTransport(t, key)
	h := &stubHandler{}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- b.Serve(ln, h) }()
	unused, _ := rawPeer(t, ln.Addr().String(), key)
	if err := unused.Handshake(); err != nil {
		t.Fatal(err)
	}
	used, br := rawPeer(t, ln.Addr().String(), key)
	body, _ := (PushRequest{From: 9}).MarshalBinary()
	request := fmt.Sprintf("POST /sync/v1/push HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := io.WriteString(used, request); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("push: %v, %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // fasthttp's read timeout is a minute
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	<-done
	before := h.pushes.Load()
	for _, c := range []*tls.Conn{unused, used} {
		if _, err := io.WriteString(c, request); err != nil {
			continue
		}
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			t.Errorf("a push after Shutdown was answered %s", resp.Status)
		}
	}
	if got := h.pushes.Load() - before; got != 0 {
		t.Errorf("%d pushes handled after Shutdown", got)
	}
}

// TestTLSTransportBodyNotPreallocated: a request announcing a large body that does not
// come holds no more memory than what arrived (fasthttp would allocate the announced
// size at once).
func TestTLSTransportBodyNotPreallocated(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	_, pa, _ := startTransport(t, "a", key)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var cs []*tls.Conn
	for range 8 {
		c, _ := rawPeer(t, pa.Addr, key)
		if _, err := fmt.Fprintf(c, "POST /sync/v1/push HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nx", MaxMessage); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// One more request on a connection of its own, answered only after the eight were
	// read: a's handler has seen them by then.
	if got, err := forward(newTransport(t, key), pa, ""); err != nil || got != "a" {
		t.Fatalf("forward: %q, %v", got, err)
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 64<<20 {
		t.Errorf("8 requests announcing %d MiB each, 1 byte sent: the heap grew by %d MiB", MaxMessage>>20, grew>>20)
	}
	for _, c := range cs {
		c.Close()
	}
}

// TestTLSTransportBodiesBounded: the bodies a server holds at once are bounded
// (maxBodyBytes), however many connections a peer opens: five connections each send a
// body of the largest size but its last byte (held, since the read timeout is a minute),
// and the server never holds more than the bound; once they end, their bytes are free
// again. Ten such connections pinned 419 MiB before (found by an outside review).
func TestTLSTransportBodiesBounded(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	tr, pa, _ := startTransport(t, "a", key)
	held := func() int {
		tr.bodies.mu.Lock()
		defer tr.bodies.mu.Unlock()
		return tr.bodies.held
	}
	const conns = maxBodyBytes/MaxMessage + 1
	var wg sync.WaitGroup
	var cs []*tls.Conn
	for range conns {
		c, _ := rawPeer(t, pa.Addr, key)
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		cs = append(cs, c)
		wg.Go(func() {
			chunk := make([]byte, 1<<20)
			if _, err := fmt.Fprintf(c, "POST /sync/v1/push HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", MaxMessage); err != nil {
				return
			}
			for n := MaxMessage - 1; n > 0; n -= len(chunk) {
				if _, err := c.Write(chunk[:min(n, len(chunk))]); err != nil {
					return // refused: the server closed the connection
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	most := 0
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(time.Millisecond):
		}
		most = max(most, held())
	}
	if most > maxBodyBytes {
		t.Errorf("the server held %d bytes of bodies at once, over %d", most, maxBodyBytes)
	}
	if most < maxBodyBytes-MaxMessage {
		t.Errorf("the server held at most %d bytes: the connections did not fill it", most)
	}
	for _, c := range cs {
		c.Close()
	}
	waitUntil(t, 30*time.Second, "the bodies of closed connections to be let go", func() bool { return held() == 0 })
}

// TestReadBodyBudget: readBody refuses a body that does not fit in what the budget has
// left (errBodiesFull), takes nothing for it, and gives back what it took on release.
func TestReadBodyBudget(t *testing.T) {
	tr := newTransport(t, bytes.Repeat([]byte{1}, 32))
	read := func(n int) (func(), error) {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetBodyStream(bytes.NewReader(make([]byte, n)), n)
		_, release, err := tr.readBody(&ctx, MaxMessage)
		return release, err
	}
	if !tr.bodies.take(maxBodyBytes - 100) {
		t.Fatal("the budget refused its own size")
	}
	if _, err := read(101); !errors.Is(err, errBodiesFull) {
		t.Errorf("a body past the budget: %v, want errBodiesFull", err)
	}
	release, err := read(100)
	if err != nil {
		t.Fatalf("a body that fits: %v", err)
	}
	if tr.bodies.held != maxBodyBytes {
		t.Errorf("held %d, want %d", tr.bodies.held, maxBodyBytes)
	}
	release()
	tr.bodies.give(maxBodyBytes - 100)
	if tr.bodies.held != 0 {
		t.Errorf("held %d after every release, want 0", tr.bodies.held)
	}
}

// waitUntil polls cond until it holds, failing t after within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// newTransport returns a transport of key, not serving yet.
func newTransport(t *testing.T, key []byte) *TLSTransport {
	t.Helper()
	tr, err := NewTLSTransport([][]byte{key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// listen returns a listener on a free loopback port.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestTLSTransportRemovedNode: a node whose ID the server's guard reports removed for good
// has every sync request refused, undecoded, with ErrRemoved on its side (as 410 Gone on
// the wire), and its forwarded client requests refused with 410; so has a node of an
// older build, which sends only its name, when membership knows that name by the removed
// ID. A Replicator's transport reports the refusal (Config.OnRemoved). Another node's
// requests, and those of a caller that gives neither, are served.
func TestTLSTransportRemovedNode(t *testing.T) {
	seed := bytes.Repeat([]byte{3}, 32)
	server, err := NewTLSTransport([][]byte{seed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(nil, nil)
	// An older build sends its name only: membership knows it as the member of ID 7.
	g.SetRemoved(func(id crdt.NodeID) bool { return id == 7 }, func(name string) (crdt.NodeID, bool) {
		if name == "gone" {
			return 7, true
		}
		return 0, false
	})
	server.SetGuard(g, "server", 1)
	h := &stubHandler{}
	server.HandleForward(func(ctx *fasthttp.RequestCtx) { h.forwards.Add(1) })
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- server.Serve(ln, h) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(ctx)
		<-done
	})
	to := Peer{ID: 1, Name: "server", Addr: ln.Addr().String()}
	caller := func(name string, id crdt.NodeID) *TLSTransport {
		tr := newTransport(t, seed)
		if name != "" {
			tr.SetGuard(NewGuard(nil, nil), name, id)
		}
		return tr
	}
	ctx := context.Background()

	removed := caller("gone", 7)
	if _, err := removed.Push(ctx, to, PushRequest{From: 7}); !errors.Is(err, ErrRemoved) {
		t.Errorf("push of the removed node: %v, want ErrRemoved", err)
	}
	if _, err := caller("gone", 0).Push(ctx, to, PushRequest{From: 7}); !errors.Is(err, ErrRemoved) {
		t.Errorf("push of the removed node on an older build (its name only): %v, want ErrRemoved", err)
	}
	calls := 0
	watched := removedWatch{Transport: removed, removed: func() { calls++ }}
	if _, err := watched.Digest(ctx, to, DigestRequest{Branches: make([]uint64, crdt.DigestBranches)}); !errors.Is(err, ErrRemoved) {
		t.Errorf("digest of the removed node: %v, want ErrRemoved", err)
	}
	if calls != 1 {
		t.Errorf("the removed node's watch saw %d refusals, want 1", calls)
	}
	if n := h.pushes.Load(); n != 0 {
		t.Errorf("the server handled %d pushes of the removed node", n)
	}

	for name, tr := range map[string]*TLSTransport{"another node": caller("other", 8), "a caller that gives neither name nor ID": caller("", 0)} {
		if _, err := tr.Push(ctx, to, PushRequest{From: 8}); err != nil {
			t.Errorf("push of %s: %v", name, err)
		}
	}
	if n := h.pushes.Load(); n != 2 {
		t.Errorf("the server handled %d pushes, want 2", n)
	}

	// Forwarded client requests too: the removed node's are refused with 410, never handled.
	for name, tc := range map[string]struct {
		tr   *TLSTransport
		want int
	}{"the removed node": {removed, http.StatusGone}, "another node": {caller("other", 8), http.StatusOK}} {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := tc.tr.Forward(fctx, to, req, resp)
		cancel()
		if err != nil || resp.StatusCode() != tc.want {
			t.Errorf("forward of %s: %v, status %d; want %d", name, err, resp.StatusCode(), tc.want)
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	if n := h.forwards.Load(); n != 1 {
		t.Errorf("the server handled %d forwards, want 1", n)
	}
}
