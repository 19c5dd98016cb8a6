package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/edge/api"
)

// Config configures a Client. The zero value of each field but Endpoints means its
// default.
type Config struct {
	// Endpoints are the base URLs of nodes or load balancers: "http://host:port" (a
	// missing scheme means http). At least one is required.
	Endpoints []string
	// RoundRobin spreads requests over the endpoints in turn. By default a Client keeps
	// to one endpoint and moves to the next when it fails.
	RoundRobin bool
	// HTTPClient sends the requests; default: one of this package's with its own
	// transport. Its Timeout must be zero if streams are used (it would end them):
	// AttemptTimeout bounds each attempt instead.
	HTTPClient *http.Client
	// AttemptTimeout bounds one attempt, from sending it to reading the whole answer (a
	// stream: until it is open). An attempt that times out counts as its endpoint
	// failing. Default 10 s.
	AttemptTimeout time.Duration
	// MaxAttempts bounds the attempts of one call, the first included. Default 4; 1
	// turns retries and failover off.
	MaxAttempts int
	// Backoff is the wait before a retry that the node gave no Retry-After for, doubled
	// at each further retry, with jitter. Default 100 ms.
	Backoff time.Duration
	// MaxRetryWait bounds any one wait between attempts: a Retry-After longer than it is
	// not waited for, and the call returns the error (its RetryAfter says how long).
	// Default 5 s.
	MaxRetryWait time.Duration
	// EndpointCooldown is how long an endpoint that refused a connection or timed out
	// is passed over while another is not. Default 5 s.
	EndpointCooldown time.Duration
	// Token is the bearer token to start with (one kept from an earlier Login); Login
	// replaces it.
	Token string
	// Bookmark is the bookmark to start with (one kept from an earlier Client, say in a
	// cookie); it must be a value the API returned.
	Bookmark string
	// Eventual sends X-Sessiond-Consistency: eventual: nodes answer from their local
	// state at once, bookmark or not.
	Eventual bool
	// UserAgent is sent with every request. Default "sessiond-go-client".
	UserAgent string
	// Observe, when not nil, is called after every attempt with what it saw, from the
	// goroutine of the call: a hook for tests, load tools and metrics. It must not block.
	Observe func(Attempt)
	// DisallowUnknownFields makes decoding refuse response fields the api types do not
	// have: for tests that the API and package api have not drifted apart. Clients of an
	// older version than the nodes should leave it off.
	DisallowUnknownFields bool
}

// Attempt is one HTTP exchange of a call, as Config.Observe sees it.
type Attempt struct {
	Method, Path string
	Endpoint     string
	RequestID    string // the same on every attempt of a call
	N            int    // 1 for a call's first attempt
	Bookmark     string // the X-Sessiond-Bookmark it sent; "" for none
	Start, End   time.Time
	Status       int         // 0 when no response came
	Header       http.Header // the response's; nil when none came
	Err          error       // a transport error, or a body that could not be read
}

// Client is a caller of the API: its token and bookmark over a set of endpoints. Safe for
// concurrent use.
type Client struct {
	cfg Config
	hc  *http.Client
	eps *endpoints

	mu                 sync.Mutex
	token              string
	device, deviceUser string // the device token of the latest login, and its username

	bm bookmark
}

// New returns a Client for cfg, or an error naming the field that is wrong.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("client: Endpoints: at least one is required")
	}
	urls := make([]string, len(cfg.Endpoints))
	for i, raw := range cfg.Endpoints {
		if !strings.Contains(raw, "://") {
			raw = "http://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return nil, fmt.Errorf("client: Endpoints[%d] %q: want http://host:port or https://host[:port][/prefix]", i, cfg.Endpoints[i])
		}
		urls[i] = strings.TrimSuffix(u.Scheme+"://"+u.Host+u.Path, "/")
	}
	if cfg.MaxAttempts < 0 || cfg.AttemptTimeout < 0 || cfg.Backoff < 0 || cfg.MaxRetryWait < 0 || cfg.EndpointCooldown < 0 {
		return nil, errors.New("client: MaxAttempts, AttemptTimeout, Backoff, MaxRetryWait and EndpointCooldown must not be negative")
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 4
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = 10 * time.Second
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	if cfg.MaxRetryWait == 0 {
		cfg.MaxRetryWait = 5 * time.Second
	}
	if cfg.EndpointCooldown == 0 {
		cfg.EndpointCooldown = 5 * time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "sessiond-go-client"
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
		}}
	}
	c := &Client{cfg: cfg, hc: hc, eps: newEndpoints(urls, cfg.RoundRobin, cfg.EndpointCooldown), token: cfg.Token}
	if cfg.Bookmark != "" {
		if err := c.bm.set(cfg.Bookmark); err != nil {
			return nil, fmt.Errorf("client: Bookmark: %w", err)
		}
	}
	c.cfg.Endpoints = urls
	return c, nil
}

// Fork returns a Client for another caller: the same configuration, endpoints and
// connections, with no token and no bookmark (bookmarks name a caller's own writes).
func (c *Client) Fork() *Client {
	f := &Client{cfg: c.cfg, hc: c.hc, eps: c.eps}
	f.cfg.Token, f.cfg.Bookmark = "", ""
	return f
}

// CloseIdleConnections closes the idle connections of the Client's HTTP client (shared
// with its Forks): a Client that is done for a while should not hold connections open on
// the nodes, which wait for them when they shut down.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Token returns the bearer token the Client sends: the latest Login's, or "".
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// SetToken sets the bearer token to send ("" for none).
func (c *Client) SetToken(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.token = token
}

// Bookmark returns the Client's bookmark: what its caller has seen and written, to keep
// (in a cookie, say) and give to a later Client by Config.Bookmark or SetBookmark.
func (c *Client) Bookmark() string { return c.bm.String() }

// SetBookmark replaces the Client's bookmark with b, a value the API returned (several
// joined by commas are merged); "" forgets it. A value that is not a bookmark is an
// error and changes nothing.
func (c *Client) SetBookmark(b string) error { return c.bm.set(b) }

// Endpoints returns the endpoints' base URLs as the Client uses them. The slice is a copy.
func (c *Client) Endpoints() []string { return append([]string(nil), c.eps.urls...) }

// Request is a call for Do: a route of the API that this package has no method for.
type Request struct {
	Method string     // GET, POST, PATCH, DELETE
	Path   string     // /v1/…, escaped
	Query  url.Values // appended to Path
	Body   any        // sent as JSON when not nil
	Header http.Header
	// NoAuth leaves the Client's token out.
	NoAuth bool
	// Idempotent says that sending the request twice has the effect of sending it once.
	// Such a request is retried, on the next endpoint, also after failures that leave
	// unknown whether it was applied: a timeout, a reset connection, 502, 503
	// unavailable, 504. Any request is retried after 429 rate_limited and 503 behind
	// (which nodes answer before acting) and after a connection was refused.
	Idempotent bool
	// Once sends the request on one endpoint, one time: no retry, no failover (probes).
	Once bool
}

// Reply is what Do saw of a successful response.
type Reply struct {
	Status   int
	Header   http.Header
	Endpoint string
}

// Do sends r with the Client's token and bookmark (ctx's, when it carries one:
// WithBookmark), retrying and failing over as
// Request.Idempotent allows, merges the bookmark of the answer, and decodes a 2xx JSON
// body into out (nil: the body is dropped; a *[]byte receives it as it is; an empty body
// leaves out as it is). It returns an *Error for an error response, a *TransportError
// when no answer came, and ctx's error when ctx ended first.
func (c *Client) Do(ctx context.Context, r Request, out any) (Reply, error) {
	var body []byte
	if r.Body != nil {
		var err error
		if body, err = json.Marshal(r.Body); err != nil {
			return Reply{}, fmt.Errorf("client: encode %s %s: %w", r.Method, r.Path, err)
		}
	}
	resp, rep, err := c.exchange(ctx, &r, body, false)
	if err != nil {
		return rep, err
	}
	return rep, c.decode(resp, out)
}

// maxBody bounds a response body read whole: a page of 500 messages or 100 sessions
// of 64 KiB each fits.
const maxBody = 32 << 20

// response is a read response of exchange.
type response struct {
	status int
	header http.Header
	body   []byte
	stream *http.Response // when streaming: the open response, body unread
	cancel context.CancelFunc
	// opened stops the bound on opening a stream, and reports whether it had not
	// expired yet.
	opened func() bool
}

// exchange runs the attempts of one call and returns the successful response, read
// whole, or open when stream is set (its cancel then ends it).
func (c *Client) exchange(ctx context.Context, r *Request, body []byte, stream bool) (*response, Reply, error) {
	reqID := crand.Text()
	path := r.Path
	if len(r.Query) > 0 {
		path += "?" + r.Query.Encode()
	}
	v1 := strings.HasPrefix(r.Path, "/v1/")
	max := c.cfg.MaxAttempts
	if r.Once {
		max = 1
	}
	avoid := -1
	var last error
	own := bookmarkIn(ctx)
	for n := 1; n <= max; n++ {
		i := c.eps.pick(avoid)
		ep := c.eps.urls[i]
		sent := ""
		switch {
		case v1 && own != nil:
			sent = own.String()
		case v1:
			sent = c.bm.String()
		}
		at := Attempt{Method: r.Method, Path: r.Path, Endpoint: ep, RequestID: reqID, N: n, Bookmark: sent, Start: time.Now()}
		resp, err := c.attempt(ctx, r, ep+path, body, sent, reqID, stream)
		at.End = time.Now()
		if resp != nil {
			at.Status, at.Header = resp.status, resp.header
		}
		at.Err = err
		if c.cfg.Observe != nil {
			c.cfg.Observe(at)
		}
		if ctx.Err() != nil {
			if resp != nil && resp.cancel != nil {
				resp.cancel()
			}
			return nil, Reply{}, ctx.Err()
		}
		var wait time.Duration
		if err != nil {
			te := &TransportError{Method: r.Method, Path: r.Path, Endpoint: ep, Err: err, MaybeApplied: !dialFailed(err)}
			c.eps.fail(i)
			last = te
			if te.MaybeApplied && !r.Idempotent {
				return nil, Reply{}, te
			}
			avoid = i
			if n >= len(c.eps.urls) { // every endpoint had its chance: back off
				wait = c.backoff(n)
			}
		} else if resp.status >= 200 && resp.status < 300 {
			if v1 {
				got := resp.header.Get(api.HeaderBookmark)
				c.bm.merge(got)
				if own != nil {
					own.bm.merge(got)
				}
			}
			return resp, Reply{Status: resp.status, Header: resp.header, Endpoint: ep}, nil
		} else {
			e := errorOf(resp, ep)
			last = e
			if !retryable(e, r.Idempotent) {
				return nil, Reply{}, e
			}
			avoid = i
			wait = e.RetryAfter
			if wait == 0 {
				wait = c.backoff(n)
			}
		}
		if n == max || r.Once {
			break
		}
		if wait > c.cfg.MaxRetryWait {
			break // too long to wait here: the caller decides, with RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			break // the retry could not finish in time
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, Reply{}, ctx.Err()
			case <-t.C:
			}
		}
	}
	return nil, Reply{}, last
}

// retryable reports whether a call that got e may be sent again: always after a
// refusal that nodes make before acting (429, 503 behind); after one that leaves unknown
// whether the request was applied (502, 503 unavailable, 504) only when it is idempotent.
func retryable(e *Error, idempotent bool) bool {
	switch {
	case e.Status == http.StatusTooManyRequests:
		return true
	case e.Code == api.CodeBehind:
		return true
	case e.Status == http.StatusBadGateway || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout:
		return idempotent
	}
	return false
}

// backoff returns the wait before retry n+1: Backoff doubled n-1 times, capped at
// MaxRetryWait, with equal jitter (half fixed, half random) so that clients that failed
// together do not come back together.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.Backoff << min(n-1, 20)
	if d <= 0 || d > c.cfg.MaxRetryWait {
		d = c.cfg.MaxRetryWait
	}
	return d/2 + mrand.N(d/2+1) // #nosec G404 -- jitter, not a secret
}

// dialFailed reports whether err says the connection was never made, so nothing was sent.
func dialFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// attempt sends one request to url and returns its response: read whole, or open with
// its body unread when stream is set. A non-2xx response is always read whole.
func (c *Client) attempt(ctx context.Context, r *Request, url string, body []byte, bookmark, reqID string, stream bool) (*response, error) {
	var actx context.Context
	var cancel context.CancelFunc
	var timer *time.Timer
	if stream {
		// The stream outlives the attempt: only its opening is bounded.
		var stop context.CancelFunc
		actx, stop = context.WithCancel(ctx)
		timer = time.AfterFunc(c.cfg.AttemptTimeout, stop)
		cancel = func() { timer.Stop(); stop() }
	} else {
		actx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, r.Method, url, rd)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set(api.HeaderRequestID, reqID)
	if bookmark != "" {
		req.Header.Set(api.HeaderBookmark, bookmark)
	}
	if c.cfg.Eventual {
		req.Header.Set(api.HeaderConsistency, api.ConsistencyEventual)
	}
	if tok := c.Token(); tok != "" && !r.NoAuth {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	out := &response{status: resp.StatusCode, header: resp.Header}
	if stream && resp.StatusCode/100 == 2 {
		out.stream, out.cancel, out.opened = resp, cancel, timer.Stop
		return out, nil
	}
	defer cancel()
	defer resp.Body.Close()
	out.body, err = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err == nil && len(out.body) > maxBody {
		err = fmt.Errorf("response body over %d bytes", maxBody)
	}
	if err != nil {
		return out, err
	}
	return out, nil
}

// errorOf returns the *Error of a non-2xx response.
func errorOf(resp *response, endpoint string) *Error {
	e := &Error{
		Status: resp.status, Endpoint: endpoint, Header: resp.header, Body: resp.body,
		ServedBy: resp.header.Get(api.HeaderServedBy), RequestID: resp.header.Get(api.HeaderRequestID),
	}
	var body api.ErrorResponse
	if json.Unmarshal(resp.body, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	} else {
		e.Message = strings.TrimSpace(string(resp.body[:min(len(resp.body), 200)]))
	}
	e.RetryAfter = retryAfter(resp.header.Get("Retry-After"), time.Now())

	return e
}

// decode decodes a successful response's body into out.
func (c *Client) decode(resp *response, out any) error {
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = resp.body
		return nil
	}
	if len(resp.body) == 0 {
		return nil // 204: nothing to decode
	}
	dec := json.NewDecoder(bytes.NewReader(resp.body))
	if c.cfg.DisallowUnknownFields {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("client: decode %d response: %w", resp.status, err)
	}
	return nil
}

// retryAfter parses a Retry-After value: seconds, or an HTTP date (RFC 9110, section
// 10.2.3); 0 when absent, malformed or past.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 32); err == nil {
		return time.Duration(max(s, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
