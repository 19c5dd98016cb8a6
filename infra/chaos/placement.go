package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Placement as the suite sees it: with --replicas N (compose variable REPLICAS) each key is
// held by N nodes of each region and any node serves any request, forwarding it to a holder
// (X-Sessiond-Forwarded-By). GET /v1/cluster shows each node's share and what it still has
// to hand off; /metrics its stored keys and forwarded requests.

// apiCluster is GET /v1/cluster (docs/API.md).
type apiCluster struct {
	Node      apiMember     `json:"node"`
	Members   []apiMember   `json:"members"`
	Placement *apiPlacement `json:"placement"` // nil: every node holds everything
}

type apiPlacement struct {
	Replicas   int     `json:"replicas"`
	Partitions int     `json:"partitions"`
	Holds      int     `json:"holds"`
	Ideal      float64 `json:"ideal"`
	Moving     struct {
		Partitions int `json:"partitions"`
		Keys       int `json:"keys"`
		Dropped    int `json:"dropped"`
	} `json:"moving"`
}

// cluster reads a node's view of the cluster.
func (r *Runner) cluster(ctx context.Context, n *Node) (*apiCluster, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res := r.client.Do(rctx, n.URL(), "GET", "/v1/cluster", r.observer.Anchor.Token, "", nil)
	if res.Status != 200 {
		return nil, errStatus(res)
	}
	var c apiCluster
	if err := res.Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// memberStatus returns the status n shows for the member of that name ("" if unlisted).
func (c *apiCluster) memberStatus(name string) string {
	for _, m := range c.Members {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

// shares describes each node's share of the partitions and what it still hands off, as
// the nodes themselves report it: "eu-1 1365/4096 (ideal 1365.3) moving 0, …".
func (r *Runner) shares(ctx context.Context, nodes []*Node) string {
	var parts []string
	for _, n := range nodes {
		c, err := r.cluster(ctx, n)
		switch {
		case err != nil:
			parts = append(parts, fmt.Sprintf("%s: %v", n.Name, err))
		case c.Placement == nil:
			parts = append(parts, n.Name+" holds everything")
		default:
			p := c.Placement
			parts = append(parts, fmt.Sprintf("%s %d/%d (ideal %.1f) moving %d keys", n.Name, p.Holds, p.Partitions, p.Ideal, p.Moving.Keys))
		}
	}
	return strings.Join(parts, ", ")
}

// metrics reads a node's /metrics: value by series as printed, e.g.
// `sessiond_forwarded_requests_total{outcome="forwarded"}`.
func (r *Runner) metrics(ctx context.Context, n *Node) (map[string]float64, bool) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res := r.client.Do(rctx, n.URL(), "GET", "/metrics", "", "", nil)
	if res.Status != 200 {
		return nil, false
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(res.Body)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, true
}

// NodePlacement is one node at the end of a run: what it stores and holds, what it
// forwarded.
type NodePlacement struct {
	Node       string  `json:"node"`
	StoredKeys float64 `json:"stored_keys"` // sessiond_stored_keys
	// Holds, Ideal, Partitions: its share of the partitions and its fair share (all of
	// them without placement: Holds = Partitions = 0, Everything).
	Holds      int     `json:"holds"`
	Ideal      float64 `json:"ideal"`
	Partitions int     `json:"partitions"`
	Everything bool    `json:"holds_everything,omitempty"`
	MovingKeys int     `json:"moving_keys"` // keys it stores without holding them
	Dropped    int     `json:"dropped"`     // keys handed off and dropped since it started
	// Forwarded and NoHolder: sessiond_forwarded_requests_total by outcome, since the
	// node last started (the rolling restart restarts every node).
	Forwarded float64 `json:"forwarded"`
	NoHolder  float64 `json:"no_holder"`
	Err       string  `json:"error,omitempty"`
}

// placementOf reads each node's share and counters.
func (r *Runner) placementOf(ctx context.Context, nodes []*Node) []NodePlacement {
	var out []NodePlacement
	for _, n := range nodes {
		np := NodePlacement{Node: n.Name}
		if c, err := r.cluster(ctx, n); err != nil {
			np.Err = err.Error()
		} else if p := c.Placement; p == nil {
			np.Everything = true
		} else {
			np.Holds, np.Ideal, np.Partitions, np.MovingKeys, np.Dropped = p.Holds, p.Ideal, p.Partitions, p.Moving.Keys, p.Moving.Dropped
		}
		if m, ok := r.metrics(ctx, n); ok {
			np.StoredKeys = m["sessiond_stored_keys"]
			np.Forwarded = m[`sessiond_forwarded_requests_total{outcome="forwarded"}`]
			np.NoHolder = m[`sessiond_forwarded_requests_total{outcome="no_holder"}`]
		} else if np.Err == "" {
			np.Err = "no metrics"
		}
		out = append(out, np)
	}
	return out
}

// replicas returns the placement the nodes run with, as the first node that answers
// reports it (0: every node holds everything).
func (r *Runner) replicas(ctx context.Context) int {
	for _, n := range r.d.Nodes {
		if c, err := r.cluster(ctx, n); err == nil {
			if c.Placement == nil {
				return 0
			}
			return c.Placement.Replicas
		}
	}
	return -1
}

// checkHandoff waits, after the final heal, until no node stores keys it does not hold:
// every key a node handed off (placement moved it away, or it accepted a write for
// others while their holders were out of reach) was confirmed by its holders and dropped.
// It also checks that every node lists exactly the six as alive: the joiner left.
func (r *Runner) checkHandoff(ctx context.Context, timeout time.Duration) Check {
	c := Check{Name: "placement settled: every node lists the six, no node keeps keys it does not hold"}
	t0 := time.Now()
	var last []string
	c.OK = waitUntil(ctx, timeout, time.Second, func() bool {
		last = last[:0]
		for _, n := range r.d.Nodes {
			cl, err := r.cluster(ctx, n)
			if err != nil {
				last = append(last, fmt.Sprintf("%s: %v", n.Name, err))
				continue
			}
			var alive []string
			for _, m := range cl.Members {
				if m.Status == "alive" {
					alive = append(alive, m.Name)
				}
			}
			if len(alive) != len(r.d.Nodes) || cl.memberStatus(r.d.Joiner.Name) == "alive" {
				last = append(last, fmt.Sprintf("%s lists %v alive", n.Name, alive))
			}
			if p := cl.Placement; p != nil && p.Moving.Keys > 0 {
				last = append(last, fmt.Sprintf("%s still stores %d keys of %d partitions it does not hold", n.Name, p.Moving.Keys, p.Moving.Partitions))
			}
		}
		return len(last) == 0
	})
	if c.OK {
		c.Detail = fmt.Sprintf("settled %s after the final check began", time.Since(t0).Round(100*time.Millisecond))
	} else {
		c.Detail = fmt.Sprintf("not settled %s after the final check: %s", timeout, strings.Join(last, "; "))
	}
	return c
}

// maxObservers bounds the observers assignMarkers registers: with one holder per region
// of two nodes, each new one is held by a given node with probability ½.
const maxObservers = 16

// assignMarkers picks, for every node, an observer whose partition that node holds, and
// registers further observers until every node has one. A marker is written straight at
// a node to show where a write made there goes (a partition's sides, a skewed clock's
// timestamps); with --replicas a node forwards a write about a partition it does not hold
// to a holder, which would then be the writer. A node holds an observer's partition when
// it answers the observer's GET /v1/users/me itself (X-Served-By, nothing forwarded).
// Without --replicas every node holds everything and r.observer serves for all.
func (r *Runner) assignMarkers(ctx context.Context) error {
	r.markers = map[string]*User{}
	tried := map[*User]bool{}
	for {
		for _, o := range r.observers {
			if tried[o] {
				continue
			}
			tried[o] = true
			for _, n := range r.d.Nodes {
				if r.markers[n.Name] != nil {
					continue
				}
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				res := r.client.Do(rctx, n.URL(), "GET", "/v1/users/me", o.Anchor.Token, "", nil)
				cancel()
				if res.Status == 200 && res.ServedBy == n.Name && res.ForwardedBy == "" {
					r.markers[n.Name] = o
				}
			}
		}
		var missing []string
		for _, n := range r.d.Nodes {
			if r.markers[n.Name] == nil {
				missing = append(missing, n.Name)
			}
		}
		if len(missing) == 0 {
			var names []string
			for _, n := range r.d.Nodes {
				names = append(names, n.Name+"→"+r.markers[n.Name].Name)
			}
			r.logf("markers: %d observers, written by %s", len(r.observers), strings.Join(names, " "))
			return nil
		}
		if len(r.observers) == maxObservers {
			return fmt.Errorf("setup: %d observers, and none held by %v", len(r.observers), missing)
		}
		o := &User{Name: fmt.Sprintf("obs%s%02d", r.runID, len(r.observers)), Password: "observer-" + r.runID, Profile: map[string][]*Op{},
			SetupAddr: fmt.Sprintf("198.51.101.%d", 10+len(r.observers))}
		if err := r.workload.Register(ctx, o); err != nil {
			return err
		}
		r.model.mu.Lock()
		r.model.Users = append(r.model.Users, o)
		r.model.mu.Unlock()
		r.observers = append(r.observers, o)
	}
}
