package main_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestShardedRestarts: three regions of two nodes with --replicas 1, each region's two
// nodes stopped and started in turn, three times: logins sent with the bookmark of the
// user's registration keep working while a holder is away and right after it is back.
// (A node used to answer 503 behind for a gone node's writes: what it knew it held was
// learnt only from pushes under the very same placement.)
func TestShardedRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	key := strings.TrimSpace(runKeygen(t))
	names := []string{"eu-1", "eu-2", "us-1", "us-2", "ap-1", "ap-2"}
	regions := []string{"eu", "eu", "us", "us", "ap", "ap"}
	nodes := prepareCluster(t, names, regions, key)
	for _, n := range nodes {
		n.extra = append(n.extra, "--replicas", "1")
		n.start()
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	nodes[0].join = nodes[1].gossip // restarts rejoin, as in the compose deployment
	var users []*shardUser
	probe := &shardUser{name: "rsprobe", password: "password-xx"}
	if r := probe.do(t, nodes[0], "POST", "/v1/users", map[string]any{"username": probe.name, "password": probe.password}); r.status != http.StatusCreated {
		t.Fatalf("register the probe: %d %v", r.status, r.body)
	}
	if r := probe.do(t, nodes[0], "POST", "/v1/sessions", map[string]any{"username": probe.name, "password": probe.password}); r.status == http.StatusCreated {
		probe.token, _ = r.body["token"].(string)
	}
	waitFor(t, 30*time.Second, "every node to place the partitions over all six", func() bool {
		for _, n := range nodes {
			st, info := call("GET", n.url("/v1/cluster"), probe.token, nil)
			ms, _ := info["members"].([]any)
			held := 0
			for _, m := range ms {
				if mm := m.(map[string]any); mm["status"] == "alive" && mm["partitions"] != nil {
					held++
				}
			}
			if st != http.StatusOK || held != 6 {
				return false
			}
		}
		return true
	})
	for i := range 40 {
		u := &shardUser{name: fmt.Sprintf("rs%02d", i), password: "password-xx"}
		entry := nodes[i%len(nodes)]
		if r := u.do(t, entry, "POST", "/v1/users", map[string]any{"username": u.name, "password": u.password}); r.status != http.StatusCreated {
			t.Fatalf("register: %d %v", r.status, r.body)
		}
		users = append(users, u)
	}
	for round := range 3 {
		for _, victim := range []*clNode{nodes[0], nodes[1]} {
			victim.signal(15)
			<-victim.exited
			// writes while it is down
			for _, u := range users {
				r := u.do(t, nodes[2], "POST", "/v1/sessions", map[string]any{"username": u.name, "password": u.password})
				if r.status != http.StatusCreated {
					t.Fatalf("round %d login %s while %s down: %d %v", round, u.name, victim.name, r.status, r.body)
				}
			}
			victim.start()
			waitFor(t, 30*time.Second, victim.name+" ready", victim.ready)
			for _, u := range users {
				for _, n := range nodes[:2] {
					r := u.do(t, n, "POST", "/v1/sessions", map[string]any{"username": u.name, "password": u.password})
					if r.status != http.StatusCreated {
						t.Fatalf("round %d login %s via %s right after %s came back: %d %v (served %s fwd %s)", round, u.name, n.name, victim.name, r.status, r.body, r.servedBy, r.fwdBy)
					}
				}
			}
		}
	}
}
