package edge

import (
	"errors"
	"io"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
)

// TestHTTPConnsCloseWaiting: while a node stops, connections that have received nothing
// since their last answer are closed; one whose request has begun to arrive is left to
// finish, and closed once answered and idle again.
func TestHTTPConnsCloseWaiting(t *testing.T) {
	var h httpConns
	pair := func() (*countedConn, net.Conn) {
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		c := &countedConn{Conn: server}
		h.track(c, fasthttp.StateNew)
		h.track(c, fasthttp.StateActive) // fasthttp marks a new connection active at once
		return c, client
	}
	silent, _ := pair()
	busy, busyClient := pair()
	go busyClient.Write([]byte("POST /v1/users HTTP/1.1\r\n"))
	buf := make([]byte, 8)
	if _, err := io.ReadFull(busy, buf); err != nil {
		t.Fatal(err)
	}

	h.closeWaiting()
	if _, err := silent.Read(buf); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("a silent connection: read %v, want it closed", err)
	}
	go busyClient.Write([]byte("x"))
	if _, err := busy.Read(buf[:1]); err != nil {
		t.Errorf("a connection whose request had begun was closed: %v", err)
	}

	h.track(busy, fasthttp.StateIdle) // answered
	h.closeWaiting()
	if _, err := busy.Read(buf); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("an idle connection after its answer: read %v, want it closed", err)
	}
	h.track(busy, fasthttp.StateClosed)
	if len(h.m) != 0 {
		t.Errorf("%d connections still listed", len(h.m))
	}
}
