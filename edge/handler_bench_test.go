package edge

import (
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// BenchmarkHandler measures the node's own work for the routes BenchmarkHTTP loads — the
// Fiber app with its middleware, auth, functions and storage — called in process with
// no network, so that ns/op and allocs/op are the server's alone. patch includes the wait
// for its durable commit.
//
//	go test ./edge -run='^$' -bench=BenchmarkHandler -benchmem
func BenchmarkHandler(b *testing.B) {
	cfg := testConfig(b, "hbench-0")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n := MustStartNode(b, cfg)
	tok := signUp(b, newTestClient(b, n), "bench")
	auth := "Bearer " + tok
	h := n.app.Handler()
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

	run := func(b *testing.B, build func(req *fasthttp.Request, i int, num []byte)) {
		b.ReportAllocs()
		var req fasthttp.Request
		var ctx fasthttp.RequestCtx
		var num []byte
		i := 0
		for b.Loop() {
			req.Reset()
			num = strconv.AppendInt(num[:0], int64(i), 10)
			build(&req, i, num)
			ctx.Init(&req, remote, nil)
			h(&ctx)
			if ctx.Response.StatusCode() != fiber.StatusOK {
				b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
			}
			i++
		}
	}
	b.Run("read", func(b *testing.B) {
		run(b, func(req *fasthttp.Request, _ int, _ []byte) {
			req.Header.SetMethod(fiber.MethodGet)
			req.SetRequestURI("/v1/sessions/current")
			req.Header.Set(fiber.HeaderAuthorization, auth)
		})
	})
	// A read sending back a bookmark the node holds (a client that keeps the latest one).
	resp, _ := newTestClient(b, n).do("GET", "/v1/sessions/current", tok, nil)
	bookmark := resp.Header.Get(headerBookmark)
	b.Run("read+bookmark", func(b *testing.B) {
		run(b, func(req *fasthttp.Request, _ int, _ []byte) {
			req.Header.SetMethod(fiber.MethodGet)
			req.SetRequestURI("/v1/sessions/current")
			req.Header.Set(fiber.HeaderAuthorization, auth)
			req.Header.Set(headerBookmark, bookmark)
		})
	})
	b.Run("patch", func(b *testing.B) {
		run(b, func(req *fasthttp.Request, _ int, num []byte) {
			req.Header.SetMethod(fiber.MethodPatch)
			req.SetRequestURI("/v1/sessions/current")
			req.Header.Set(fiber.HeaderAuthorization, auth)
			req.Header.SetContentType(fiber.MIMEApplicationJSON)
			req.SetBodyString(`{"data":{"n":`)
			req.AppendBody(num)
			req.AppendBodyString(`}}`)
		})
	})
}
