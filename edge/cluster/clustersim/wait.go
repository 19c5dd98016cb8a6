package clustersim

import (
	"testing"
	"time"
)

// WaitFor polls cond every 20ms until it holds, failing t with cond's last reason after
// within. cond runs on the caller's goroutine.
func WaitFor(t testing.TB, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s: %s", within, why)
		}
		<-tick.C
	}
}

// Poll is WaitFor that reports instead of failing: it polls cond every every until it
// holds, and returns false with cond's last reason after within.
func Poll(within, every time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok || time.Now().After(deadline) {
			return ok, why
		}
		<-tick.C
	}
}
