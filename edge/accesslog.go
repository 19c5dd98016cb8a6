package edge

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/gofiber/fiber/v2"
)

// headerRequestID names a request in the access log and in the client's own logs: a
// client's id is kept when it is sane (see saneRequestID), else the node makes one, and
// every response carries it, errors included.
const headerRequestID = "X-Request-ID"

// maxRequestID bounds a client's request id; a longer one is replaced.
const maxRequestID = 128

// requestIDKey is headerRequestID in fasthttp's canonical form, set without normalising.
var requestIDKey = []byte("X-Request-Id")

// saneRequestID reports whether a client's X-Request-ID can be logged and echoed as it is:
// 1 to maxRequestID bytes of printable ASCII, no spaces (nothing that could split a log
// line or a header).
func saneRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > maxRequestID {
		return false
	}
	for _, c := range id {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// setRequestID gives the response its request id: the client's when sane, else 16 random
// hex digits. It costs no allocation: fasthttp copies the value into the response.
func setRequestID(c *fiber.Ctx) {
	id := c.Request().Header.PeekBytes(requestIDKey)
	if !saneRequestID(id) {
		var buf [16]byte
		r := rand.Uint64() // #nosec G404 -- a correlation id, no secret: clients may choose their own
		for i := range buf {
			buf[i] = hexDigits[r>>60]
			r <<= 4
		}
		id = buf[:]
	}
	c.Response().Header.SetCanonical(requestIDKey, id)
}

// ensureRequestID sets the request id unless the response has one already: for the
// errors fasthttp answers before any route runs (431, 408, a body over the limit).
func ensureRequestID(c *fiber.Ctx) {
	if len(c.Response().Header.PeekBytes(requestIDKey)) == 0 {
		setRequestID(c)
	}
}

// accessLog writes one structured line per sampled request, at info level: every request
// answered with a status of 400 or more, and a random sample of the others, so that a
// busy node's reads do not pay a log line each. Safe for concurrent use.
type accessLog struct {
	log *slog.Logger
	// below400 is the sampling threshold of requests answered below 400: one is logged
	// when a random uint64 is below it; all when sampleAll.
	below400  uint64
	sampleAll bool
	trusted   []netip.Prefix // the trusted proxies: see clientAddr
}

// newAccessLog returns an access log to log (which names the node) that keeps the
// fraction sample (0 to 1) of the requests answered below 400.
func newAccessLog(log *slog.Logger, sample float64, trusted []netip.Prefix) *accessLog {
	a := &accessLog{log: log.With("component", "http"), trusted: trusted}
	switch {
	case sample >= 1:
		a.sampleAll = true
	case sample > 0:
		a.below400 = uint64(sample * math.Exp2(64))
	}
	return a
}

// sampled reports whether to log a request answered with status.
func (a *accessLog) sampled(status int) bool {
	return status >= 400 || a.sampleAll || (a.below400 != 0 && rand.Uint64() < a.below400) // #nosec G404 -- sampling
}

// record logs the request that c answered with status, if sampled, with route as its route
// label (a pattern or a constant, never the raw path). Every string it logs is a copy: a
// handler may keep the record after the connection reuses the Ctx's buffers.
func (a *accessLog) record(c *fiber.Ctx, route string, status int, start time.Time) {
	if !a.sampled(status) {
		return
	}
	ctx := context.Background()
	if !a.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	resp := c.Response()
	size := resp.Header.ContentLength() // a stream's, or -1 (chunked)
	if !resp.IsBodyStream() {
		size = len(resp.Body())
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "request",
		slog.String("method", methodLabel(c.Method())),
		slog.String("route", route),
		slog.Int("status", status),
		slog.Duration("duration", time.Since(start)),
		slog.Int("bytes", size),
		slog.String("request_id", string(resp.Header.PeekBytes(requestIDKey))),
		slog.String("remote", clientAddrOf(a.trusted, c.Context().RemoteIP(), c.Request().Header.Peek(fiber.HeaderXForwardedFor))),
	)
}
