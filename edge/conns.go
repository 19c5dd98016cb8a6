package edge

import (
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// httpConns are the connections the HTTP server has open. fasthttp marks a connection
// active as soon as it waits for its first request, and its graceful shutdown waits for
// active connections until they end: a client that opens a connection and sends nothing
// (a load balancer's or an HTTP client's spare connection) held a stopping node for its
// whole ShutdownTimeout, and made the shutdown fail. Close calls expireReads, which ends
// every pending read at once: a connection waiting for a request closes, one serving a
// request finishes it (fasthttp reads a whole request before the handler runs, and
// responses are written, not read) and then closes.
type httpConns struct {
	mu      sync.Mutex
	m       map[net.Conn]struct{}
	expired bool // expireReads ran: a connection accepted since expires at once
}

// track is the server's ConnState hook.
func (h *httpConns) track(c net.Conn, st fasthttp.ConnState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch st {
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		delete(h.m, c)
	case fasthttp.StateNew:
		if h.expired {
			_ = c.SetReadDeadline(time.Now())
		}
		fallthrough
	default:
		if h.m == nil {
			h.m = make(map[net.Conn]struct{})
		}
		h.m[c] = struct{}{}
	}
}

// expireReads makes every open connection's pending read fail now, and every one
// accepted from now on.
func (h *httpConns) expireReads() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.expired = true
	now := time.Now()
	for c := range h.m {
		_ = c.SetReadDeadline(now)
	}
}
