package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
)

// TestLeaveWatch: a member serf calls leaving while memberlist sees it live is treated as
// alive once that has lasted staleLeave, not before; one memberlist sees gone is never;
// and the clock starts again each time a member starts looking like it.
func TestLeaveWatch(t *testing.T) {
	w := leaveWatch{since: map[string]time.Time{}}
	t0 := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	leaving := []serf.Member{{Name: "eu-1", Status: serf.StatusLeaving}, {Name: "eu-2", Status: serf.StatusLeaving}}
	live := map[string]bool{"eu-1": true} // eu-2 has really left: memberlist sees it gone
	for _, step := range []struct {
		at   time.Duration
		want bool // eu-1 stale
	}{{0, false}, {staleLeave - time.Second, false}, {staleLeave, true}, {staleLeave + time.Minute, true}} {
		stale := w.update(leaving, live, t0.Add(step.at))
		if stale["eu-1"] != step.want {
			t.Errorf("at %s: eu-1 stale = %v, want %v", step.at, stale["eu-1"], step.want)
		}
		if stale["eu-2"] {
			t.Errorf("at %s: eu-2, gone from memberlist, is stale (treated as alive)", step.at)
		}
	}
	// Alive again (a join intent came): forgotten, and a later leave starts afresh.
	t1 := t0.Add(time.Hour)
	if stale := w.update([]serf.Member{{Name: "eu-1", Status: serf.StatusAlive}}, live, t1); len(stale) != 0 || len(w.since) != 0 {
		t.Fatalf("after eu-1 is alive: stale %v, tracking %v", stale, w.since)
	}
	if stale := w.update(leaving, live, t1.Add(time.Second)); stale["eu-1"] {
		t.Errorf("a new leave was stale at once")
	}
	if stale := w.update(leaving, live, t1.Add(time.Second+staleLeave)); !stale["eu-1"] {
		t.Errorf("a new leave was not stale after staleLeave")
	}
}
