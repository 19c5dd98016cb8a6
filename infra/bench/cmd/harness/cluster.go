package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// node is one sessiond process.
type node struct {
	p                  *proc
	name, region, data string
	http, gossip, sync string
	join, key          string
	fast               bool
}

func (n *node) url() string { return "http://" + n.http }

func urls(ns []*node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.url())
	}
	return out
}

func procsOf(ns []*node) []*proc {
	var out []*proc
	for _, n := range ns {
		if n.p != nil {
			out = append(out, n.p)
		}
	}
	return out
}

// clusterKey returns the path of a cluster key file, made once per harness run.
func clusterKey(o options) (string, error) {
	path := filepath.Join(o.out, "cluster.key")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	out, err := exec.Command(o.sessiond(), "keygen").Output()
	if err != nil {
		return "", fmt.Errorf("sessiond keygen: %w", err)
	}
	return path, os.WriteFile(path, out, 0o600)
}

// newNode describes a node with fresh loopback ports; launch starts it.
func newNode(o options, name, region, data, key, join string, fast bool) *node {
	return &node{name: name, region: region, data: data, key: key, join: join, fast: fast,
		http: loopback(), gossip: loopback(), sync: loopback()}
}

// launch starts the node's process (again, after stop) and returns once it serves HTTP.
// Ports are picked free but not held, so another process on the machine can take one
// first; then the node is started again on fresh ports (those of a node that others
// join are kept: it was the first to start).
func (n *node) launch(o options, extra ...string) error {
	for attempt := 0; ; attempt++ {
		if err := n.launchOnce(o, extra...); err != nil {
			return err
		}
		err := waitHTTP(n.p, n.url()+"/healthz", 5*time.Minute)
		if err == nil {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(o.logs(), n.name+".log"))
		if attempt == 3 || !strings.Contains(string(b), "address already in use") {
			return err
		}
		n.http, n.sync = loopback(), loopback()
		if n.join != "" {
			n.gossip = loopback()
		}
	}
}

func (n *node) launchOnce(o options, extra ...string) error {
	args := []string{"--node", n.name, "--region", n.region, "--data", n.data,
		"--http", n.http, "--gossip", n.gossip, "--sync", n.sync,
		"--login-per-account", "1000000", "--login-per-account-address", "999999", "--login-per-address", "1000000", "--signups-per-address", "1000000", "--messages-per-user", "1000000", "--password-per-client", "1000000", "--signins-per-account", "1000000", "--log-level", "warn"}
	if n.key != "" {
		args = append(args, "--cluster-key-file", n.key)
	}
	if n.fast {
		args = append(args, "--fast-gossip")
	}
	if n.join != "" {
		args = append(args, "--join", n.join)
	}
	p, err := start(o.logs(), n.name, o.sessiond(), append(args, extra...)...)
	n.p = p
	return err
}

func (n *node) waitReady(timeout time.Duration) error {
	return waitHTTP(n.p, n.url()+"/readyz", timeout)
}

// startCluster starts len(regions) nodes named prefix-i, the others joining the first,
// each with the extra flags, and waits until every one is ready and sees every member
// alive.
func startCluster(ctx context.Context, o options, prefix string, regions []string, cluster bool, extra ...string) ([]*node, error) {
	key := ""
	if cluster {
		var err error
		if key, err = clusterKey(o); err != nil {
			return nil, err
		}
	}
	var ns []*node
	for i, r := range regions {
		name := prefix + "-" + strconv.Itoa(i+1)
		join := ""
		if i > 0 {
			join = ns[0].gossip
		}
		n := newNode(o, name, r, o.data(name), key, join, cluster)
		if err := n.launch(o, extra...); err != nil {
			return ns, err
		}
		ns = append(ns, n)
	}
	for _, n := range ns {
		if err := n.waitReady(60 * time.Second); err != nil {
			return ns, err
		}
	}
	if len(ns) > 1 {
		if err := waitMembers(ctx, ns, len(ns), 60*time.Second); err != nil {
			return ns, err
		}
	}
	return ns, nil
}

// waitMembers waits until every node counts want members alive.
func waitMembers(ctx context.Context, ns []*node, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range ns {
		for {
			m, err := scrape(n.url())
			if err == nil && int(m.sum(`sessiond_members{status="alive"}`)) == want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not see %d members alive after %s", n.name, want, timeout)
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}
