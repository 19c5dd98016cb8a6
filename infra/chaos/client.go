package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
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

// Client talks to the API. Safe for concurrent use.
type Client struct {
	hc *http.Client
}

func newClient(timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{hc: &http.Client{Timeout: timeout, Transport: tr}}
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

// DoHeaders sends one request with the given headers.
func (c *Client) DoHeaders(ctx context.Context, base, method, path string, headers map[string]string, body any) Result {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return Result{Err: err, Outcome: Fail}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return Result{Err: err, Outcome: Fail}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	r := Result{Start: time.Now()}
	resp, err := c.hc.Do(req)
	if err != nil {
		r.End = time.Now()
		r.Err = err
		r.Outcome = Info
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			r.Outcome = Fail // nothing was sent
		}
		return r
	}
	r.Body, err = io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	resp.Body.Close()
	r.End = time.Now()
	r.Status = resp.StatusCode
	r.ServedBy = resp.Header.Get("X-Served-By")
	r.ForwardedBy = resp.Header.Get(headerForwardedBy)
	r.Header = resp.Header
	switch {
	case err != nil:
		r.Err = err
		r.Outcome = Info
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

// API shapes (docs/API.md).

type apiUser struct {
	ID       string            `json:"id"`
	Username string            `json:"username"`
	Profile  map[string]string `json:"profile"`
}

type apiSession struct {
	ID     string                     `json:"id"`
	UserID string                     `json:"user_id"`
	Data   map[string]json.RawMessage `json:"data"`
}

type apiMessage struct {
	ID     string `json:"id"`
	From   string `json:"from"`
	To     string `json:"to"`
	Body   string `json:"body"`
	SentAt string `json:"sent_at"`
}

type apiMember struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	Status string `json:"status"`
}
