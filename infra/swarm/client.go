package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// client talks to the API through the load balancer. Safe for concurrent use.
type client struct{ hc *http.Client }

func newClient() *client {
	return &client{hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		// A fresh connection now and then, so that Caddy's round robin is not the only
		// thing that spreads requests.
		IdleConnTimeout: 5 * time.Second,
	}}}
}

// result is one exchange.
type result struct {
	status   int
	body     []byte
	servedBy string
	bookmark string
	err      error
}

func (r result) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	b := r.body
	if len(b) > 200 {
		b = b[:200]
	}
	return fmt.Sprintf("%d from %q: %s", r.status, r.servedBy, b)
}

func (r result) decode(v any) error { return json.Unmarshal(r.body, v) }

// do sends one request; token and bookmark may be empty, body is sent as JSON when not nil.
func (c *client) do(ctx context.Context, base, method, path, token, bookmark string, body any) result {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return result{err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return result{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if bookmark != "" {
		req.Header.Set("X-Sessiond-Bookmark", bookmark)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return result{status: resp.StatusCode, body: b, servedBy: resp.Header.Get("X-Served-By"),
		bookmark: resp.Header.Get("X-Sessiond-Bookmark"), err: err}
}

// user is a signed-in test user.
type user struct {
	name, token, bookmark string
}

// signUp registers name and logs in, retrying what a node not yet ready or the balancer
// answers (5xx, 429 is not retried: it is a real limit).
func (c *client) signUp(ctx context.Context, lb, name string) (*user, error) {
	password := "pw-" + name + "-0123456789"
	var r result
	err := waitFor(ctx, time.Minute, "sign-up of "+name, func() (bool, string) {
		r = c.do(ctx, lb, "POST", "/v1/users", "", "", map[string]any{
			"username": name, "password": password,
			"profile": map[string]string{"first_name": "Swarm", "last_name": "Test", "email": name + "@example.com", "address": "overlay"},
		})
		return r.status == 201 || r.status == 409 || (r.status >= 400 && r.status < 500), r.describe()
	})
	if err != nil {
		return nil, err
	}
	if r.status != 201 && r.status != 409 {
		return nil, fmt.Errorf("sign-up of %s: %s", name, r.describe())
	}
	u := &user{name: name, bookmark: r.bookmark}
	err = waitFor(ctx, time.Minute, "login of "+name, func() (bool, string) {
		r = c.do(ctx, lb, "POST", "/v1/sessions", "", u.bookmark, map[string]string{"username": name, "password": password})
		return r.status == 201 || (r.status >= 400 && r.status < 500), r.describe()
	})
	if err != nil {
		return nil, err
	}
	var out struct{ Token string }
	if r.status != 201 || r.decode(&out) != nil || out.Token == "" {
		return nil, fmt.Errorf("login of %s: %s", name, r.describe())
	}
	u.token, u.bookmark = out.Token, r.bookmark
	return u, nil
}

// member is one entry of /v1/cluster.
type member struct {
	Name, ID, Region, Status string
}

// clusterView is what one node says of the cluster.
type clusterView struct {
	Node    member
	Members []member
}
