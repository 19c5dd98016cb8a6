// Package edgetest runs sessiond nodes inside a test process, for the tests of what uses
// a node through its API: the Go SDK (edge/client), the session-store adapters and the
// example app, which are modules of their own. It is not for production use.
package edgetest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/api"
)

// ClusterKey is the cluster key of the nodes Start starts: a test signs admin requests
// (CreateApp) with it.
var ClusterKey = bytes.Repeat([]byte{0x42}, 32)

// Start starts a node called name, with its data in a temporary directory of tb's, on
// loopback ports the kernel picks, with ClusterKey, and with the other settings of
// edge.DefaultConfig as configure (nil: none) changes them; the node closes when the
// test ends. Logins and sign-ups wait as long as they need for a hashing worker (argon2id
// under -race is slow; these tests are not about the queue).
func Start(tb testing.TB, name string, configure func(*edge.Config)) *edge.Node {
	tb.Helper()
	cfg := edge.DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = tb.TempDir()
	cfg.HTTPAddr, cfg.GossipAddr, cfg.SyncAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.ClusterKeys = [][]byte{ClusterKey}
	cfg.PasswordWait = time.Minute
	if configure != nil {
		configure(&cfg)
	}
	n, err := edge.NewNode(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			tb.Errorf("close node %s: %v", name, err)
		}
	})
	return n
}

// CreateApp creates the app called name on n, as `sessiond apps create` does (an admin
// request signed with ClusterKey), and returns its API key.
func CreateApp(tb testing.TB, n *edge.Node, name string) string {
	tb.Helper()
	body, _ := json.Marshal(api.CreateAppRequest{Name: name})
	req, err := http.NewRequest(http.MethodPost, "http://"+n.HTTPAddr()+"/v1/admin/apps", bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", adminauth.Sign(ClusterKey, n.AdminIdentity(), http.MethodPost, "/v1/admin/apps", body, time.Now()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var out api.CreateAppResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated || out.Key == "" {
		tb.Fatalf("create app %s: status %d, %v", name, resp.StatusCode, err)
	}
	return out.Key
}
