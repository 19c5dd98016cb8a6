package edge

import (
	"context"
	"errors"
	"testing"
)

func TestNode_StartCancelled(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "cancelled-0")
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start(cancelled) = %v, want context.Canceled", err)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Errorf("Close after a cancelled Start: %v", err)
	}
	// Nothing was left open: the same data directory starts and serves.
	m := MustStartNode(t, cfg)
	if resp, body := newTestClient(t, m).do("GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Errorf("healthz: %d %s", resp.StatusCode, body)
	}
}

// TestConfig_CORSOrigins: an origin CORS cannot use is refused at start, with a clear
// error, rather than a panic of the CORS middleware after the node joined its cluster.
func TestConfig_CORSOrigins(t *testing.T) {
	for _, tc := range []struct {
		origins []string
		ok      bool
	}{
		{[]string{"https://app.example", "http://localhost:3000"}, true},
		{[]string{"https://app.example,"}, false},
		{[]string{"null"}, false},
		{[]string{"*"}, false},
		{[]string{"https://app.example/path"}, false},
		{[]string{"https://app.example/"}, true},
		{[]string{"https://*"}, false},
		{[]string{"https://a*b.example"}, false},
		{[]string{"https://*.example.com"}, false},
		{[]string{"ftp://app.example"}, false},
		{[]string{"app.example"}, false},
	} {
		cfg := testConfig(t, "cors-0")
		cfg.CORSOrigins = tc.origins
		if err := cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%q: Validate() = %v, want ok %v", tc.origins, err, tc.ok)
		}
	}
}
