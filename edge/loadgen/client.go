package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"
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

// call is one request's reusable buffers; each worker owns one.
type call struct {
	req  fiber.Request
	resp fiber.Response
}

// do sends method path with an optional bearer token and JSON body, and returns the
// status (0 on a transport error) and the response body, valid until the next do.
func (c *call) do(t *target, method, path, token string, body []byte) (int, []byte, error) {
	c.req.Reset()
	c.resp.Reset()
	c.req.Header.SetMethod(method)
	c.req.SetRequestURI(t.base + path)
	if token != "" {
		c.req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		c.req.Header.SetContentType("application/json")
		c.req.SetBodyRaw(body)
	}
	if err := t.hc.Do(&c.req, &c.resp); err != nil {
		return 0, nil, err
	}
	return c.resp.StatusCode(), c.resp.Body(), nil
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
