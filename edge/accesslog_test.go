package edge

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// logCapture collects a node's JSON log lines; safe for concurrent use.
type logCapture struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the records logged with message msg.
func (l *logCapture) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func (l *logCapture) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func TestHTTP_RequestID(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "reqid-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	generated := regexp.MustCompile(`^[0-9a-f]{16}$`)
	seen := map[string]bool{}
	for _, tc := range []struct{ method, path, token string }{
		{"GET", "/v1/users/me", tok},
		{"GET", "/v1/users/me", ""},
		{"GET", "/v1/nope", ""},
		{"GET", "/", ""},
		{"GET", "/healthz", ""},
	} {
		resp, b := c.do(tc.method, tc.path, tc.token, nil)
		id := resp.Header.Get(headerRequestID)
		if !generated.MatchString(id) || seen[id] {
			t.Errorf("%s %s (%d %s): X-Request-ID = %q, want a new 16 hex digits", tc.method, tc.path, resp.StatusCode, b, id)
		}
		seen[id] = true
	}
	for _, tc := range []struct{ name, sent, want string }{
		{"OKClients", "req-1234_abc.DEF:x/y", "req-1234_abc.DEF:x/y"},
		{"OKLongest", strings.Repeat("a", maxRequestID), strings.Repeat("a", maxRequestID)},
		{"ErrTooLong", strings.Repeat("a", maxRequestID+1), ""},
		{"ErrSpace", "two words", ""},
		{"ErrNonASCII", "idé", ""},
		{"ErrTab", "a\tb", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := c.do("GET", "/v1/users/me", tok, nil, headerRequestID, tc.sent)
			got := resp.Header.Get(headerRequestID)
			if tc.want != "" && got != tc.want {
				t.Errorf("X-Request-ID = %q, want %q echoed", got, tc.want)
			}
			if tc.want == "" && !generated.MatchString(got) {
				t.Errorf("X-Request-ID = %q for %q, want a generated one", got, tc.sent)
			}
		})
	}
	t.Run("HeaderTooLarge", func(t *testing.T) {
		resp, _ := rawRequest(t, n.HTTPAddr(), "GET /v1/users/me HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 10<<10))
		if !generated.MatchString(resp.Header.Get(headerRequestID)) {
			t.Errorf("431: X-Request-ID = %q, want one", resp.Header.Get(headerRequestID))
		}
	})
}

func TestHTTP_AccessLog(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		sample  float64
		logsOK  bool
		logs4xx bool
	}{
		{"All", 1, true, true},
		{"ErrorsOnly", 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs logCapture
			cfg := testConfig(t, "access-"+tc.name)
			cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			cfg.AccessLogSample = tc.sample
			n := MustStartNode(t, cfg)
			c := newTestClient(t, n)
			tok := signUp(t, c, "alice")
			logs.reset()

			resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerRequestID, "trace-42")
			if resp.StatusCode != 200 {
				t.Fatalf("GET: %d %s", resp.StatusCode, body)
			}
			resp401, body401 := c.do("DELETE", "/v1/sessions/abc", "", nil)
			resp431, _ := rawRequest(t, n.HTTPAddr(), "GET /v1/users/me HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 10<<10))

			got := logs.lines(t, "request")
			var want []map[string]any
			if tc.logsOK {
				want = append(want, map[string]any{"method": "GET", "route": "/v1/sessions/current", "status": 200.0,
					"bytes": float64(len(body)), "request_id": "trace-42"})
			}
			if tc.logs4xx {
				want = append(want,
					map[string]any{"method": "DELETE", "route": "/v1/sessions/:id", "status": 401.0,
						"bytes": float64(len(body401)), "request_id": resp401.Header.Get(headerRequestID)},
					map[string]any{"route": "unmatched", "status": 431.0, "request_id": resp431.Header.Get(headerRequestID)})
			}
			if len(got) != len(want) {
				t.Fatalf("access log lines = %v, want %d", got, len(want))
			}
			for i, w := range want {
				g := got[i]
				for k, v := range w {
					if g[k] != v {
						t.Errorf("line %d: %s = %v, want %v (%v)", i, k, g[k], v, g)
					}
				}
				for _, k := range []string{"duration", "remote", "bytes"} {
					if _, ok := g[k]; !ok {
						t.Errorf("line %d: no %s (%v)", i, k, g)
					}
				}
				if g["node"] != cfg.NodeName || g["level"] != "INFO" {
					t.Errorf("line %d: node %v, level %v; want %s at INFO", i, g["node"], g["level"], cfg.NodeName)
				}
				if i < 2 && g["remote"] != "127.0.0.1" {
					t.Errorf("line %d: remote = %v, want 127.0.0.1", i, g["remote"])
				}
			}
		})
	}
}

func TestAccessLogSample(t *testing.T) {
	for _, tc := range []struct {
		sample   float64
		min, max int // of 10000 successful requests logged
	}{
		{0, 0, 0},
		{0.01, 50, 200},
		{0.5, 4500, 5500},
		{1, 10000, 10000},
	} {
		var logs logCapture
		a := newAccessLog(slog.New(slog.NewJSONHandler(&logs, nil)), tc.sample, nil)
		logged := 0
		for range 10000 {
			if a.sampled(200) {
				logged++
			}
		}
		if logged < tc.min || logged > tc.max {
			t.Errorf("sample %v: %d of 10000 logged, want %d to %d", tc.sample, logged, tc.min, tc.max)
		}
		if !a.sampled(404) || !a.sampled(500) {
			t.Errorf("sample %v: an error response not logged", tc.sample)
		}
	}
}

func TestConfig_AccessLogSample(t *testing.T) {
	for _, v := range []float64{-0.1, 1.01, math.NaN(), math.Inf(1)} {
		cfg := testConfig(t, "cfg")
		cfg.AccessLogSample = v
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "AccessLogSample") {
			t.Errorf("AccessLogSample %v: Validate() = %v, want an error naming the field", v, err)
		}
	}
	if DefaultConfig().AccessLogSample <= 0 {
		t.Errorf("default AccessLogSample = %v, want some sampling", DefaultConfig().AccessLogSample)
	}
}

// BenchmarkRequestID measures what every request pays for its id: made by the node, or the
// client's echoed.
func BenchmarkRequestID(b *testing.B) {
	app := fiber.New()
	for _, sent := range []string{"", "client-request-0123456789"} {
		name := "Generated"
		if sent != "" {
			name = "Echoed"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var fctx fasthttp.RequestCtx
			fctx.Request.Header.Set(fiber.HeaderAuthorization, "Bearer x")
			if sent != "" {
				fctx.Request.Header.Set(headerRequestID, sent)
			}
			c := app.AcquireCtx(&fctx)
			defer app.ReleaseCtx(c)
			for b.Loop() {
				c.Response().Header.Reset()
				setRequestID(c)
			}
		})
	}
}

// BenchmarkAccessLog measures record for a request answered 200, at the default sample
// and at every request, with a JSON handler writing nowhere (the cost of formatting).
func BenchmarkAccessLog(b *testing.B) {
	app := fiber.New()
	for _, sample := range []float64{0, DefaultConfig().AccessLogSample, 1} {
		b.Run(strconv.FormatFloat(sample, 'g', -1, 64), func(b *testing.B) {
			b.ReportAllocs()
			a := newAccessLog(slog.New(slog.NewJSONHandler(io.Discard, nil)), sample, nil)
			var fctx fasthttp.RequestCtx
			fctx.Request.Header.SetMethod(fiber.MethodGet)
			fctx.Response.SetBodyString(`{"session":{}}`)
			c := app.AcquireCtx(&fctx)
			defer app.ReleaseCtx(c)
			setRequestID(c)
			start := time.Now()
			for b.Loop() {
				a.record(c, "/v1/sessions/current", 200, start)
			}
		})
	}
}
