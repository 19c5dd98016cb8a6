package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	sdk "github.com/sessiond/sessiond/edge/client"
)

// Outcome classifies a request the way Jepsen does: ok (it happened), fail (it certainly
// did not) or info (unknown: a timeout, a reset, a 5xx — it may have happened, now or later).
type Outcome string

const (
	OK   Outcome = "ok"
	Fail Outcome = "fail"
	Info Outcome = "info"
)

// Result is one HTTP exchange with a node or the load balancer.
type Result struct {
	Status   int
	Body     []byte
	ServedBy string // X-Served-By: the node that served the request
	Header   http.Header
	Err      error
	Start    time.Time
	End      time.Time
	Outcome  Outcome
	// ForwardedBy is X-Sessiond-Forwarded-By: the node that received the request and
	// relayed it to ServedBy, a holder of its data (--replicas); "" when served where it
	// arrived.
	ForwardedBy string
}

// Client talks to the API through the Go client (package client), one request at a time
// as it is given: no retry, no failover, no bookmark of its own (a workload sends its
// users' bookmarks in the headers), so that one history entry is one request and every
// status and header reaches the checker. Safe for concurrent use.
type Client struct {
	hc      *http.Client
	timeout time.Duration

	mu    sync.Mutex
	bases map[string]*sdk.Client // one per base URL, sharing hc's connections
}

func newClient(timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{hc: &http.Client{Timeout: timeout, Transport: tr}, timeout: timeout, bases: map[string]*sdk.Client{}}
}

// base returns the Go client of base URL base.
func (c *Client) base(base string) (*sdk.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sc := c.bases[base]; sc != nil {
		return sc, nil
	}
	sc, err := sdk.New(sdk.Config{Endpoints: []string{base}, HTTPClient: c.hc, AttemptTimeout: c.timeout, MaxAttempts: 1, UserAgent: "sessiond-chaos"})
	if err != nil {
		return nil, err
	}
	c.bases[base] = sc
	return sc, nil
}

// Do sends one request. token and xff may be empty; body is encoded as JSON when not nil.
func (c *Client) Do(ctx context.Context, base, method, path, token, xff string, body any) Result {
	h := map[string]string{}
	if token != "" {
		h["Authorization"] = "Bearer " + token
	}
	if xff != "" {
		h["X-Forwarded-For"] = xff
	}
	return c.DoHeaders(ctx, base, method, path, h, body)
}

// DoHeaders sends one request with the given headers, and nothing else of a client's:
// the token and bookmark are the headers'.
func (c *Client) DoHeaders(ctx context.Context, base, method, path string, headers map[string]string, body any) Result {
	sc, err := c.base(base)
	if err != nil {
		return Result{Err: err, Outcome: Fail}
	}
	hdr := http.Header{}
	for k, v := range headers {
		hdr.Set(k, v)
	}
	// A Fork holds no bookmark or token: the request carries only what headers give it.
	r := Result{Start: time.Now()}
	var raw []byte
	rep, err := sc.Fork().Do(ctx, sdk.Request{Method: method, Path: path, Body: body, Header: hdr, NoAuth: true, Once: true}, &raw)
	r.End = time.Now()
	var apiErr *sdk.Error
	var te *sdk.TransportError
	switch {
	case err == nil:
		r.Status, r.Header, r.Body = rep.Status, rep.Header, raw
	case errors.As(err, &apiErr):
		r.Status, r.Header, r.Body = apiErr.Status, apiErr.Header, apiErr.Body
	case errors.As(err, &te):
		r.Err, r.Outcome = te.Err, Info
		if !te.MaybeApplied {
			r.Outcome = Fail // nothing was sent
		}
		return r
	default: // ctx ended, or the body could not be encoded
		r.Err, r.Outcome = err, Info
		return r
	}
	r.ServedBy = r.Header.Get("X-Served-By")
	r.ForwardedBy = r.Header.Get(headerForwardedBy)
	switch {
	case r.Status >= 200 && r.Status < 300:
		r.Outcome = OK
	case r.Behind():
		r.Outcome = Fail // refused before any handler ran: it did not happen
	case r.Status >= 500:
		r.Outcome = Info
	default:
		r.Outcome = Fail
	}
	return r
}

// headerBookmark is what a client keeps of a response and sends back with its next request
// (edge/consistency.go): the node answers only from state that includes it.
const headerBookmark = "X-Sessiond-Bookmark"

// headerForwardedBy names the node that forwarded a request to the one that served it.
const headerForwardedBy = "X-Sessiond-Forwarded-By"

// Entry is the node the request reached (the load balancer's pick, or the node asked):
// the forwarder if the request was forwarded, else the node that served it.
func (r Result) Entry() string {
	if r.ForwardedBy != "" {
		return r.ForwardedBy
	}
	return r.ServedBy
}

// ErrorCode returns the code of an API error response ({"error":{"code":…}}), or "".
func (r Result) ErrorCode() string {
	if r.Status < 400 || len(r.Body) == 0 {
		return ""
	}
	var body struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(r.Body, &body) != nil {
		return ""
	}
	return body.Error.Code
}

// Behind reports a 503 "behind": the node does not hold the request's bookmark (or its
// token's) and could not fetch it in time. It answers so before the handler runs.
func (r Result) Behind() bool { return r.Status == 503 && r.ErrorCode() == "behind" }

// Decode unmarshals the response body into v.
func (r Result) Decode(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("decode %d response %q: %w", r.Status, truncate(string(r.Body), 200), err)
	}
	return nil
}

// Describe says what happened, for logs and the history.
func (r Result) Describe() string {
	if r.Err != nil {
		return r.Err.Error()
	}
	if r.Outcome == OK {
		return ""
	}
	return fmt.Sprintf("%d %s", r.Status, truncate(strings.TrimSpace(string(r.Body)), 200))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// API shapes: package api's, but for the user, whose profile the checkers address by
// field name.

type apiUser struct {
	ID       string            `json:"id"`
	Username string            `json:"username"`
	Profile  map[string]string `json:"profile"`
}

type (
	apiSession = api.Session
	apiMessage = api.Message
	apiMember  = api.Member
)
