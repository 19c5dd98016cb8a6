package edge

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestHTTPConnsCloseWaiting: while a node stops, connections that have received nothing
// since their last answer are closed; one whose request has begun to arrive is left to
// finish it within a grace that runs from when the stop first saw it, and is closed once
// answered and idle again.
func TestHTTPConnsCloseWaiting(t *testing.T) {
	var h, h2 httpConns
	pairIn := func(h *httpConns) (*countedConn, net.Conn) {
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		c := &countedConn{Conn: server}
		h.track(c, fasthttp.StateNew)
		h.track(c, fasthttp.StateActive) // fasthttp marks a new connection active at once
		return c, client
	}
	pair := func() (*countedConn, net.Conn) { return pairIn(&h) }
	begun := func(c *countedConn, client net.Conn) {
		go client.Write([]byte("POST /v"))
		buf := make([]byte, 7)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	silent, _ := pair()
	busy, busyClient := pair()
	late, lateClient := pairIn(&h2)
	begun(busy, busyClient)
	begun(late, lateClient)
	buf := make([]byte, 8)

	h.closeWaiting(time.Now(), time.Hour)
	if _, err := silent.Read(buf); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("a silent connection: read %v, want it closed", err)
	}
	go busyClient.Write([]byte("x"))
	if _, err := busy.Read(buf[:1]); err != nil {
		t.Errorf("a connection whose request had begun was closed: %v", err)
	}

	h.track(busy, fasthttp.StateIdle) // answered
	h.closeWaiting(time.Now(), time.Hour)
	if _, err := busy.Read(buf); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("an idle connection after its answer: read %v, want it closed", err)
	}
	h.track(busy, fasthttp.StateClosed)

	// A request still arriving when its grace is over: its reads fail, and a later pass
	// does not move its cutoff.
	h2.closeWaiting(time.Now().Add(-time.Hour), time.Minute)
	h2.closeWaiting(time.Now(), time.Hour)
	if _, err := late.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a request still arriving past its grace: read %v, want the deadline", err)
	}
	if len(h.m) != 0 {
		t.Errorf("%d connections still listed", len(h.m))
	}
}
