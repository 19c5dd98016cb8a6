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
