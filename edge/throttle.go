package edge

import (
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// throttle limits login attempts per key (an account name or a client address) with a
// token bucket per key: perMinute attempts a minute, with bursts of as many. Idle buckets
// are forgotten, so memory is bounded by the keys active in the last few minutes. Safe for
// concurrent use.
type throttle struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

func newThrottle(perMinute int, now func() time.Time) *throttle {
	return &throttle{
		limit: rate.Limit(float64(perMinute) / 60), burst: perMinute, now: now,
		buckets: make(map[string]*bucket),
	}
}

// allow takes one attempt for key. When none is left it returns false and how long until
// one is.
func (t *throttle) allow(key string) (bool, time.Duration) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Sub(t.swept) > time.Minute {
		for k, b := range t.buckets {
			if now.Sub(b.used) > 2*time.Minute { // refilled long ago: same as a new bucket
				delete(t.buckets, k)
			}
		}
		t.swept = now
	}
	b, ok := t.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(t.limit, t.burst)}
		t.buckets[strings.Clone(key)] = b // key may alias a reused request buffer
	}
	b.used = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
