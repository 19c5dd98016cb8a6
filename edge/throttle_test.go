package edge

import (
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	th := newThrottle(3, clock.Now) // one attempt per 20 s after a burst of 3

	for i := range 3 {
		if ok, wait := th.allow("alice"); !ok {
			t.Fatalf("attempt %d: allow = false (wait %s), want true", i+1, wait)
		}
	}
	for _, tc := range []struct {
		advance time.Duration
		want    time.Duration
	}{
		{0, 20 * time.Second},
		{0, 20 * time.Second}, // a refused attempt costs nothing
		{5 * time.Second, 15 * time.Second},
		{14 * time.Second, time.Second},
		{900 * time.Millisecond, 100 * time.Millisecond},
	} {
		clock.Add(tc.advance)
		ok, wait := th.allow("alice")
		if ok {
			t.Fatalf("after +%s: allow = true, want false", tc.advance)
		}
		if d := wait - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("after +%s: wait = %s, want %s", tc.advance, wait, tc.want)
		}
	}
	if ok, _ := th.allow("bob"); !ok {
		t.Errorf("another key: allow = false, want true")
	}
	clock.Add(100 * time.Millisecond)
	if ok, wait := th.allow("alice"); !ok {
		t.Errorf("after the wait: allow = false (wait %s), want true", wait)
	}
	if ok, _ := th.allow("alice"); ok {
		t.Errorf("right after: allow = true, want false")
	}

	t.Run("Refills", func(t *testing.T) {
		clock.Add(time.Hour)
		for i := range 3 {
			if ok, _ := th.allow("alice"); !ok {
				t.Fatalf("after an hour, attempt %d: allow = false, want a full burst", i+1)
			}
		}
	})
	t.Run("ForgetsIdleKeys", func(t *testing.T) {
		clock.Add(3 * time.Minute)
		th.allow("carol") // sweeps
		th.mu.Lock()
		defer th.mu.Unlock()
		if len(th.buckets) != 1 {
			t.Errorf("buckets = %d, want 1 (idle ones forgotten)", len(th.buckets))
		}
	})
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "1"}, {0.001, "1"}, {1, "1"}, {1.2, "2"}, {29.5, "30"}, {30, "30"}} {
		if got := retryAfterSeconds(tc.in); got != tc.want {
			t.Errorf("retryAfterSeconds(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestThrottle_OwnsKey checks that a bucket's key is a copy: the key allow is given may
// alias a request buffer (an X-Forwarded-For address) that later requests overwrite.
func TestThrottle_OwnsKey(t *testing.T) {
	th := newThrottle(1, newFakeClock(tokenEpoch).Now)
	buf := []byte("10.0.0.1")
	if ok, _ := th.allow(aliasedString(buf)); !ok {
		t.Fatalf("first attempt refused")
	}
	copy(buf, "10.0.0.2") // the next request, in the same buffer
	if ok, _ := th.allow("10.0.0.2"); !ok {
		t.Errorf("allow(10.0.0.2) = false: its bucket is 10.0.0.1's, keyed on the request buffer")
	}
	if ok, _ := th.allow("10.0.0.1"); ok {
		t.Errorf("allow(10.0.0.1) = true, want false: its bucket was lost")
	}
}
