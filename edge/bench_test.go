package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// benchConcurrency is the number of client goroutines, each with its own keep-alive
// connection and session.
const benchConcurrency = 64

// BenchmarkHTTP measures, over real loopback HTTP, a bare Fiber handler returning a fixed
// JSON body (bare), an authenticated GET /v1/sessions/current (read) and a durable PATCH
// /v1/sessions/current of one small key (patch). read and patch interleave rounds of
// bare requests with their own (the bare rounds are not timed for b.N), so their x_bare
// ratio compares the two under the same machine load, which on a shared machine drifts
// faster than a benchmark runs. Run it as:
//
//	go test ./edge -run='^$' -bench=BenchmarkHTTP -benchtime=3s
func BenchmarkHTTP(b *testing.B) {
	cfg := testConfig(b, "bench-0")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n := MustStartNode(b, cfg)
	bareAddr := startBareFiber(b)

	// One session per client goroutine.
	hc := &fasthttp.HostClient{Addr: n.HTTPAddr(), MaxConns: benchConcurrency, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	if _, err := benchPost(hc, "/v1/users", `{"username":"bench","password":"correct horse"}`); err != nil {
		b.Fatal(err)
	}
	// One login at a time: concurrent attempts on one account count against its
	// failed-login limit until they finish (limits.go), and 64 at once trip it.
	tokens := make([]string, benchConcurrency)
	for i := range tokens {
		body, err := benchPost(hc, "/v1/sessions", `{"username":"bench","password":"correct horse"}`)
		var out struct{ Token string }
		if err == nil {
			err = json.Unmarshal(body, &out)
		}
		if err != nil {
			b.Fatal(err)
		}
		tokens[i] = out.Token
	}

	bare := benchTarget{
		hc: &fasthttp.HostClient{Addr: bareAddr, MaxConns: benchConcurrency},
		build: func(g int, i int64, req *fasthttp.Request) {
			req.Header.SetMethod(fiber.MethodGet)
			req.SetRequestURI("http://" + bareAddr + "/bare")
		},
	}
	read := benchTarget{
		hc: &fasthttp.HostClient{Addr: n.HTTPAddr(), MaxConns: benchConcurrency},
		build: func(g int, i int64, req *fasthttp.Request) {
			req.Header.SetMethod(fiber.MethodGet)
			req.SetRequestURI("http://" + n.HTTPAddr() + "/v1/sessions/current")
			req.Header.Set(fiber.HeaderAuthorization, "Bearer "+tokens[g])
		},
	}
	patch := benchTarget{
		hc: read.hc,
		build: func(g int, i int64, req *fasthttp.Request) {
			req.Header.SetMethod(fiber.MethodPatch)
			req.SetRequestURI("http://" + n.HTTPAddr() + "/v1/sessions/current")
			req.Header.Set(fiber.HeaderAuthorization, "Bearer "+tokens[g])
			req.Header.SetContentType(fiber.MIMEApplicationJSON)
			req.SetBodyString(`{"data":{"n":` + strconv.FormatInt(i, 10) + `}}`)
		},
	}
	b.Run("bare", func(b *testing.B) {
		d, err := bare.run(b.N)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/d.Seconds(), "req/s")
	})
	b.Run("read", func(b *testing.B) { benchVsBare(b, read, bare) })
	b.Run("patch", func(b *testing.B) { benchVsBare(b, patch, bare) })
}

// benchVsBare sends b.N requests to target in rounds, each after as many untimed
// requests to bare, and reports target's req/s, bare's and their ratio.
func benchVsBare(b *testing.B, target, bare benchTarget) {
	const round = 1000
	var tTarget, tBare time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(round, b.N-done)
		b.StopTimer()
		d, err := bare.run(k)
		if err != nil {
			b.Fatal(err)
		}
		tBare += d
		b.StartTimer()
		if d, err = target.run(k); err != nil {
			b.Fatal(err)
		}
		tTarget += d
		done += k
	}
	b.StopTimer()
	rps, bareRPS := float64(b.N)/tTarget.Seconds(), float64(b.N)/tBare.Seconds()
	b.ReportMetric(rps, "req/s")
	b.ReportMetric(bareRPS, "bare_req/s")
	b.ReportMetric(rps/bareRPS, "x_bare")
}

// benchTarget is an HTTP endpoint under load: build fills request i of goroutine g.
type benchTarget struct {
	hc    *fasthttp.HostClient
	build func(g int, i int64, req *fasthttp.Request)
}

// run sends n requests from benchConcurrency goroutines over keep-alive connections and
// returns how long they took; any status but 200 is an error.
func (t benchTarget) run(n int) (time.Duration, error) {
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for g := range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req.Reset()
				t.build(g, i, req)
				if err := t.hc.Do(req, resp); err != nil {
					failed.CompareAndSwap(nil, err.Error())
					return
				}
				if resp.StatusCode() != fiber.StatusOK {
					failed.CompareAndSwap(nil, strconv.Itoa(resp.StatusCode())+": "+string(resp.Body()))
					return
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		return 0, fmt.Errorf("request failed: %v", f)
	}
	return time.Since(start), nil
}

// startBareFiber serves GET /bare, a fixed small JSON body, and returns its address.
func startBareFiber(tb testing.TB) string {
	tb.Helper()
	body := []byte(`{"session":{"id":"s1","data":{"theme":"dark"}}}`)
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/bare", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		app.Listener(ln)
	}()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		app.ShutdownWithContext(ctx)
		<-done
	})
	return ln.Addr().String()
}

// benchPost sends one POST and expects 201 Created.
func benchPost(hc *fasthttp.HostClient, path, body string) ([]byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fiber.MethodPost)
	req.SetRequestURI("http://" + hc.Addr + path)
	req.Header.SetContentType(fiber.MIMEApplicationJSON)
	req.SetBodyString(body)
	if err := hc.Do(req, resp); err != nil {
		return nil, fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode() != fiber.StatusCreated {
		return nil, fmt.Errorf("POST %s: status %d: %s", path, resp.StatusCode(), resp.Body())
	}
	return append([]byte(nil), resp.Body()...), nil
}
