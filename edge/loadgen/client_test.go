package loadgen

import (
	"strings"
	"sync"
	"testing"
)

func TestBookmarkUpdate(t *testing.T) {
	long := strings.Repeat("x", bookmarkJoinMax/2)
	for _, tc := range []struct {
		name            string
		held, sent, got string
		want            string
	}{
		{"OKFirst", "", "", "A", "A"},
		{"OKCarriedLatest", "A", "A", "B", "B"},
		{"OKMovedOnMeanwhile", "B", "A", "C", "B,C"},
		{"OKNothingNew", "B", "A", "A", "B"},
		{"OKNoHeader", "B", "B", "", "B"},
		{"OKDroppedMeanwhile", "", "A", "B", "B"},
		{"OKJoinTooLong", long, "A", long + "y", long + "y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bookmark
			if tc.held != "" {
				b.p.Store(&tc.held)
			}
			b.update(tc.sent, []byte(tc.got))
			if got := b.load(); got != tc.want {
				t.Errorf("bookmark=%q, want %q", got, tc.want)
			}
		})
	}
}

func TestBookmarkDrop(t *testing.T) {
	var b bookmark
	b.update("", []byte("A"))
	b.drop("B") // refused a value b no longer holds: keep the newer one
	if got := b.load(); got != "A" {
		t.Fatalf("after drop of another value, bookmark=%q, want %q", got, "A")
	}
	b.drop("A")
	if got := b.load(); got != "" {
		t.Fatalf("after drop, bookmark=%q, want empty", got)
	}
}

// TestBookmarkConcurrent has many workers act for one user, under -race: the joins
// keep the text within what nodes accept.
func TestBookmarkConcurrent(t *testing.T) {
	var b bookmark
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				sent := b.load()
				b.update(sent, []byte(strings.Repeat(string(rune('a'+w)), 1+i%40)))
			}
		}()
	}
	wg.Wait()
	if got := b.load(); got == "" || len(got) > bookmarkJoinMax {
		t.Fatalf("bookmark of %d bytes, want 1–%d", len(got), bookmarkJoinMax)
	}
}
