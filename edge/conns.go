package edge

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// httpConns are the connections the HTTP server has open, each with what it has read
// since it last answered. fasthttp marks a connection active as soon as it waits for its
// first request, and its graceful shutdown waits for active connections until they end:
// a client that opens a connection and sends nothing (a load balancer's or an HTTP
// client's spare one) held a stopping node for its whole ShutdownTimeout and made the
// shutdown fail. While the node stops, closeWaiting closes, again and again until the
// server is down, every connection that has received nothing since its last answer: one
// whose request has begun to arrive has a short grace to finish it, and is answered
// (with Connection: close: the server's CloseOnShutdown, so that the answer is flushed
// even when more requests were pipelined behind it), then closed.
type httpConns struct {
	mu sync.Mutex
	m  map[*countedConn]struct{}
}

// countedConn counts the bytes read since the connection last answered (or opened).
type countedConn struct {
	net.Conn
	read atomic.Int64
	// cutoff is when a request that had begun to arrive when the node began to stop
	// must have arrived: zero until then. Only closeWaiting touches it.
	cutoff time.Time
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// countingListener hands the server countedConns and lists them in conns.
type countingListener struct {
	net.Listener
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c}, nil
}

// track is the server's ConnState hook.
func (h *httpConns) track(nc net.Conn, st fasthttp.ConnState) {
	c, ok := nc.(*countedConn)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch st {
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		delete(h.m, c)
	case fasthttp.StateIdle: // answered: what it reads next is a new request
		c.read.Store(0)
		fallthrough
	default:
		if h.m == nil {
			h.m = make(map[*countedConn]struct{})
		}
		h.m[c] = struct{}{}
	}
}

// closeWaiting closes every connection that has read nothing since its last answer, and
// gives one whose request has begun to arrive until grace after it first saw it to
// read the rest (a read deadline: fasthttp's own, ReadTimeout, outlasts a shutdown, and
// fasthttp sets it again as a request begins, so it is set each time).
func (h *httpConns) closeWaiting(now time.Time, grace time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.m {
		if c.read.Load() == 0 {
			_ = c.Close()
			delete(h.m, c)
			continue
		}
		if c.cutoff.IsZero() {
			c.cutoff = now.Add(grace)
		}
		_ = c.SetReadDeadline(c.cutoff)
	}
}

// closeWaitingUntil runs closeWaiting every interval until done is closed: fasthttp
// accepts and sets up connections until its listener is closed, and may yet pick up one
// accepted just before.
func (h *httpConns) closeWaitingUntil(done <-chan struct{}, interval, grace time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		h.closeWaiting(time.Now(), grace)
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}
