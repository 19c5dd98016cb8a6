package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
)

// target is one node: fasthttp's HostClient with keep-alive connections. fasthttp is
// reached through Fiber's client (its Request, Response and Agent's HostClient), so the
// root module uses it only through Fiber, as it always has.
type target struct {
	base string // http://host:port
	hc   hostClient
}

// hostClient is the part of fasthttp.HostClient we use.
type hostClient interface {
	Do(req *fiber.Request, resp *fiber.Response) error
}

func newTarget(raw string, conns int, timeout time.Duration) (*target, error) {
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("target %q: want http://host:port", raw)
	}
	a := fiber.AcquireAgent()
	a.NoDefaultUserAgentHeader = true
	a.Request().SetRequestURI(u.Scheme + "://" + u.Host + "/")
	if err := a.Parse(); err != nil {
		return nil, fmt.Errorf("target %q: %w", raw, err)
	}
	hc := a.HostClient // the Agent is dropped; its HostClient lives on as ours
	hc.MaxConns = conns + 8
	hc.ReadTimeout = timeout
	hc.WriteTimeout = timeout
	hc.MaxIdleConnDuration = time.Minute
	hc.MaxIdemponentCallAttempts = 1 // a retried request would be measured as one
	return &target{base: u.Scheme + "://" + u.Host, hc: hc}, nil
}

// headerBookmark carries what a client saw or wrote before (docs/API.md, "Consistency").
const headerBookmark = "X-Sessiond-Bookmark"

// bookmarkJoinMax bounds the bookmark text a client builds by joining: nodes refuse more
// than 1024 bytes.
const bookmarkJoinMax = 900

// bookmark is a bench user's latest X-Sessiond-Bookmark, sent with each of its requests
// so that any node shows it its own writes and nothing older than it saw; a request that
// a node cannot meet in time gets 503 behind. The workers acting for a user share it, so
// it is safe for concurrent use; the zero value is empty.
type bookmark struct{ p atomic.Pointer[string] }

func (b *bookmark) load() string {
	if p := b.p.Load(); p != nil {
		return *p
	}
	return ""
}

// update folds got, the bookmark of a response, into b; sent is what its request
// carried. A node merges what a request carried into its answer, so when b still holds
// sent, got replaces it. Otherwise other requests moved b on meanwhile and the two are
// joined with a comma, which nodes read as their combination; a join longer than
// bookmarkJoinMax keeps only got, the newest. b only grows (but for that), so got ==
// sent changes nothing: the common case of a read that showed nothing new costs no
// allocation.
func (b *bookmark) update(sent string, got []byte) {
	if len(got) == 0 || string(got) == sent {
		return
	}
	g := string(got)
	for {
		p := b.p.Load()
		next := g
		if p != nil && *p != sent && len(*p)+1+len(g) <= bookmarkJoinMax {
			next = *p + "," + g
		}
		if b.p.CompareAndSwap(p, &next) {
			return
		}
	}
}

// drop forgets b if it still holds sent, which a node refused as invalid.
func (b *bookmark) drop(sent string) {
	if p := b.p.Load(); p != nil && *p == sent {
		b.p.CompareAndSwap(p, nil)
	}
}

// call is one request's reusable buffers; each worker owns one.
type call struct {
	req  fiber.Request
	resp fiber.Response
}

// do sends method path with an optional bearer token and JSON body, and returns the
// status (0 on a transport error) and the response body, valid until the next do. With
// bm, the request carries its bookmark and bm takes in the response's.
func (c *call) do(t *target, method, path, token string, bm *bookmark, body []byte) (int, []byte, error) {
	c.req.Reset()
	c.resp.Reset()
	c.req.Header.SetMethod(method)
	c.req.SetRequestURI(t.base + path)
	if token != "" {
		c.req.Header.Set("Authorization", "Bearer "+token)
	}
	var sent string
	if bm != nil {
		if sent = bm.load(); sent != "" {
			c.req.Header.Set(headerBookmark, sent)
		}
	}
	if body != nil {
		c.req.Header.SetContentType("application/json")
		c.req.SetBodyRaw(body)
	}
	if err := t.hc.Do(&c.req, &c.resp); err != nil {
		return 0, nil, err
	}
	status, resp := c.resp.StatusCode(), c.resp.Body()
	if bm != nil {
		bm.update(sent, c.resp.Header.Peek(headerBookmark))
		if status == 400 && sent != "" && bytes.Contains(resp, []byte(headerBookmark)) {
			bm.drop(sent) // refused: one request fails, not every later one
		}
	}
	return status, resp, nil
}

// Error kinds of their own: a request refused because its session ended (never because
// of replication lag: a token works at once on every node, and a user's bookmark makes
// its writes show everywhere), and one a node could not meet the bookmark of in time.
const (
	kindUnauthorized = "401 unauthorized"
	kindBehind       = "503 behind"
)

// isBehind reports whether a response is 503 behind.
func isBehind(status int, body []byte) bool {
	return status == 503 && jsonString(body, "code") == "behind"
}

// errorKind names a failed request for the error table: the status and the API's error
// code, or the transport error.
func errorKind(status int, body []byte, err error) string {
	if err != nil {
		msg := err.Error()
		for _, k := range []string{"timeout", "connection refused", "connection reset", "broken pipe", "EOF"} {
			if strings.Contains(msg, k) {
				return "transport: " + k
			}
		}
		if len(msg) > 60 {
			msg = msg[:60]
		}
		return "transport: " + msg
	}
	switch {
	case status == 401:
		return kindUnauthorized
	case isBehind(status, body):
		return kindBehind
	}
	if code := jsonString(body, "code"); code != "" {
		return fmt.Sprintf("%d %s", status, code)
	}
	return fmt.Sprintf("%d", status)
}

// jsonString returns the first string value of "key" in a JSON body, without decoding
// it all (the values we look for — tokens, error codes — hold no escapes).
func jsonString(body []byte, key string) string {
	pat := `"` + key + `":"`
	i := bytes.Index(body, []byte(pat))
	if i < 0 {
		return ""
	}
	rest := body[i+len(pat):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

var errUnexpected = errors.New("unexpected response")
