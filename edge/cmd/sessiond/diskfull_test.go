//go:build linux

package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/storage/disktest"
)

// TestE2E_DiskFull fills the disk under a node while it takes writes. Every answer is a
// 200 or a 503 unavailable that says why (or none, once the node has stopped), never a
// 500; once its storage fails the node
// stops with exit status 1 and says why, rather than staying up, healthy to every probe,
// and refusing every write until someone restarts it (as it did); and started again once
// there is room, it holds every write it acknowledged and takes new ones. The data
// directory is on a tmpfs of its own, so the test needs the right to mount one (root).
func TestE2E_DiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary; skipped with -short")
	}
	dir := disktest.Mount(t, "48m")

	d := newDaemon(t, "e2e-full", filepath.Join(dir, "data"))
	d.start()
	d.waitReady()
	c := newClient(t, d)
	c.register("filler", nil)
	tok, _ := c.login("filler", pw)
	acked := map[string]string{} // data key → the value of its last acknowledged write
	c.want(200, "PATCH", "/v1/sessions/current", tok, map[string]any{"data": map[string]string{"before": "full"}}, nil)
	acked["before"] = `"full"`

	disktest.Fill(t, filepath.Join(dir, "filler"))
	big := strings.Repeat("x", 3000)
	refused := false
	for i := 0; i < 5000 && !refused; i++ {
		key, value := fmt.Sprintf("k%d", i%8), fmt.Sprintf("%s%d", big, i)
		r, err := c.try("PATCH", "/v1/sessions/current", tok, map[string]any{"data": map[string]string{key: value}})
		switch {
		case err != nil: // the node may have stopped before it could answer 503
			select {
			case <-d.exited:
				refused = true
			case <-time.After(10 * time.Second):
				t.Fatalf("write %d: %v, and the node is still running", i, err)
			}
		case r.status == 200:
			acked[key] = `"` + value + `"`
		case r.status == 503:
			checkError(t, fmt.Sprintf("write %d on a full disk", i), r, 503, "unavailable")
			refused = true
		default:
			t.Fatalf("write %d on a full disk: %d %s", i, r.status, r.body)
		}
	}
	if !refused {
		t.Fatal("5000 writes of 3 KB fitted on a full 48 MiB file system")
	}
	if code := d.wait(30 * time.Second); code != 1 {
		t.Errorf("a node whose storage failed exited with status %d, want 1", code)
	}
	if out := d.out.String(); !strings.Contains(out, "storage failed") || !strings.Contains(out, "no space left on device") {
		t.Errorf("the node did not say why it stopped:\n%s", out)
	}

	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.waitReady()
	c = newClient(t, d)
	got := dataOf(t, c.current(tok))
	for k, v := range acked {
		if got[k] != v {
			t.Errorf("after the restart, data %q = %.20s…, want its last acknowledged value %.20s…", k, got[k], v)
		}
	}
	c.want(200, "PATCH", "/v1/sessions/current", tok, map[string]any{"data": map[string]string{"after": "room"}}, nil)
}
