package client

import (
	"context"
	"errors"
	"net/http"

	"github.com/sessiond/sessiond/edge/api"
)

// Cluster returns the answering node's view of the cluster (GET /v1/cluster).
func (c *Client) Cluster(ctx context.Context) (api.ClusterInfo, error) {
	var out api.ClusterInfo
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/cluster", Idempotent: true}, &out)
	return out, err
}

// Health asks one endpoint whether its process serves (GET /healthz), once: no retry,
// no failover. It returns the endpoint asked.
func (c *Client) Health(ctx context.Context) (string, error) {
	return c.probe(ctx, "/healthz")
}

// Ready asks one endpoint whether it is ready to serve (GET /readyz), once: a node
// starting, catching up or shutting down answers 503 (an *Error with
// that Status and no Code). It returns the endpoint asked.
func (c *Client) Ready(ctx context.Context) (string, error) {
	return c.probe(ctx, "/readyz")
}

// Metrics returns one endpoint's Prometheus metrics (GET /metrics), in the text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	var out []byte
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/metrics", NoAuth: true, Once: true}, &out)
	return out, err
}

func (c *Client) probe(ctx context.Context, path string) (string, error) {
	var out api.Status
	rep, err := c.Do(ctx, Request{Method: http.MethodGet, Path: path, NoAuth: true, Once: true}, &out)
	var e *Error
	if errors.As(err, &e) {
		return e.Endpoint, err
	}
	return rep.Endpoint, err
}
