package client

import (
	"sync"
	"time"
)

// endpoints picks the endpoint of each attempt. By default it keeps to one (the node
// that holds a client's data in its cache, its connections warm) and moves on when it
// fails; with roundRobin it takes them in turn. An endpoint that failed (refused a
// connection, timed out) is passed over for cooldown while another is not. Safe for
// concurrent use; the Clients of one Fork family share one.
type endpoints struct {
	urls       []string
	roundRobin bool
	cooldown   time.Duration
	now        func() time.Time

	mu        sync.Mutex
	cur       int
	downUntil []time.Time
}

func newEndpoints(urls []string, roundRobin bool, cooldown time.Duration) *endpoints {
	return &endpoints{urls: urls, roundRobin: roundRobin, cooldown: cooldown, now: time.Now, downUntil: make([]time.Time, len(urls))}
}

// pick returns the index of the endpoint to use next, other than avoid where there is
// another (-1: none to avoid), and not one in its cooldown where there is another.
func (e *endpoints) pick(avoid int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := len(e.urls)
	start := e.cur
	if e.roundRobin {
		e.cur = (e.cur + 1) % n
	}
	now := e.now()
	best := -1
	for k := range n {
		i := (start + k) % n
		if i == avoid && n > 1 {
			continue
		}
		if now.Before(e.downUntil[i]) {
			if best < 0 {
				best = i // in its cooldown: only if there is nothing better
			}
			continue
		}
		best = i
		break
	}
	if best < 0 {
		best = start
	}
	if !e.roundRobin {
		e.cur = best
	}
	return best
}

// fail marks endpoint i as failed: passed over for the cooldown, and no longer the one
// kept to.
func (e *endpoints) fail(i int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.downUntil[i] = e.now().Add(e.cooldown)
	if !e.roundRobin && e.cur == i {
		e.cur = (i + 1) % len(e.urls)
	}
}
