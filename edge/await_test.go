package edge

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// TestHTTP_BookmarkWaitsPerAddress: requests with bookmarks the node cannot meet (here
// made up: an unknown node's writes, stamped now) wait, each holding one of the node's
// waiting slots; one client address holds at most maxAwaitingPerAddress of them, so a
// flood from one address is answered 503 behind at once and leaves the slots to others.
func TestHTTP_BookmarkWaitsPerAddress(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "await-0")
	cfg.TrustedProxies = []string{"127.0.0.1"}
	cfg.BookmarkWait, cfg.BookmarkTimeout = 6*time.Second, 6*time.Second
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	b := crdt.NewBookmark(nil)
	b.Add(crdt.Timestamp{Wall: time.Now().UnixNano(), Node: 0x0123456789abcdef})
	forged := string(b.AppendText(nil))

	held := func(addr string) int {
		n.awaiting.mu.Lock()
		defer n.awaiting.mu.Unlock()
		return n.awaiting.held[addr]
	}
	client := &http.Client{Timeout: time.Minute}
	get := func(addr string) (int, error) {
		req, _ := http.NewRequest("GET", c.base+"/v1/cluster", nil)
		req.Header.Set(headerBookmark, forged)
		req.Header.Set("X-Forwarded-For", addr)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for range maxAwaitingPerAddress {
		wg.Go(func() { _, _ = get("203.0.113.1") })
	}
	waitFor(t, 4*time.Second, fmt.Sprintf("%d waits held by one address", maxAwaitingPerAddress), func() bool {
		return held("203.0.113.1") == maxAwaitingPerAddress
	})
	status, err := get("203.0.113.1")
	if err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("one wait too many from one address: %d, %v; want 503", status, err)
	}
	if h := held("203.0.113.1"); h != maxAwaitingPerAddress { // answered while the others wait
		t.Fatalf("the refused request returned after the waits ended (%d held): want 503 at once", h)
	}
	wg.Go(func() { _, _ = get("198.51.100.2") })
	waitFor(t, 4*time.Second, "another address let wait", func() bool { return held("198.51.100.2") == 1 })
}
