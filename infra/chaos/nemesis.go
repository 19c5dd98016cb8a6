package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ScenarioResult is what one fault did and how the cluster came back.
type ScenarioResult struct {
	Name   string    `json:"name"`
	Fault  string    `json:"fault"`
	Start  time.Time `json:"start"`
	Healed time.Time `json:"healed"`
	// Converge: heal → every write acknowledged before the heal visible on every node.
	Converge    time.Duration `json:"converge_ns"`
	Converged   bool          `json:"converged"`
	Unconverged int           `json:"unconverged,omitempty"` // writes still not everywhere at the timeout
	Divergence  string        `json:"divergence,omitempty"`  // what the checker saw while the fault held
	Failover    string        `json:"failover,omitempty"`    // what the load balancer did
	LB          OutcomeCount  `json:"lb"`                    // workload requests through the LB's sticky entry point while the fault held
	LBRR        OutcomeCount  `json:"lb_rr"`                 // … through its round-robin entry point
	Direct      OutcomeCount  `json:"direct"`                // workload requests straight at nodes
	Forwarded   int           `json:"forwarded"`             // … of all those, relayed to a holder (--replicas)
	// Consistency: what the workload saw of its bookmarks, during the fault and its recovery.
	Consistency ConsistencyCount `json:"consistency"`
	Notes       []string         `json:"notes,omitempty"`
	Violations  []string         `json:"violations,omitempty"`
	Duration    time.Duration    `json:"duration_ns"`
}

// OutcomeCount counts requests by outcome.
type OutcomeCount struct {
	OK   int `json:"ok"`
	Fail int `json:"fail"`
	Info int `json:"info"`
}

func (r *ScenarioResult) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *ScenarioResult) violate(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
}

// Scenario is one nemesis: it applies a fault, holds it while the workload runs, heals it.
type Scenario struct {
	Name  string
	Fault string
	Hold  time.Duration
	Run   func(ctx context.Context, r *Runner, res *ScenarioResult) // fault, hold, heal
}

// skewWindow is when a node issued timestamps ahead of real time: from its restart with a
// clock offset until real time passes the last timestamp it issued with the offset (its
// hybrid clock never goes back, so it keeps issuing them after the offset is removed).
type skewWindow struct {
	node     string
	from, to time.Time
}

// nemesisState is what the faults have done that others need to know.
type nemesisState struct {
	mu       sync.Mutex
	scenario string
	skews    []skewWindow
	offsets  []offsetWindow
}

func (s *nemesisState) Scenario() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scenario
}

func (s *nemesisState) setScenario(name string) {
	s.mu.Lock()
	s.scenario = name
	s.mu.Unlock()
}

// Skewed reports whether node (or, for "*", any node) was in a skew window at t.
func (s *nemesisState) Skewed(node string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.skews {
		if (node == "*" || node == w.node) && !t.Before(w.from) && !t.After(w.to) {
			return true
		}
	}
	return false
}

func (s *nemesisState) addSkew(w skewWindow) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skews = append(s.skews, w)
	return len(s.skews) - 1
}

func (s *nemesisState) endSkew(i int, to time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skews[i].to = to
}

// lastSkewEnd is when the last skew window ends (zero if none).
func (s *nemesisState) lastSkewEnd() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t time.Time
	for _, w := range s.skews {
		if w.to.After(t) {
			t = w.to
		}
	}
	return t
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// killNode: SIGKILL a node, keep it down, start it again.
func killNode(name string, hold time.Duration) Scenario {
	return killNodes("kill9-"+name, "docker kill -s KILL "+name+", restart after "+hold.String(), hold,
		func(r *Runner) []*Node { return []*Node{r.d.Node(name)} })
}

// killRegion: SIGKILL both nodes of a region at once.
func killRegion(region string, hold time.Duration) Scenario {
	return killNodes("kill9-region-"+region, "docker kill -s KILL of every "+region+" node, restart after "+hold.String(), hold,
		func(r *Runner) []*Node { return r.regionNodes(region) })
}

// killNodes: SIGKILL the nodes at once, check the load balancer fails over, keep them
// down for hold, start them again.
func killNodes(name, fault string, hold time.Duration, pick func(*Runner) []*Node) Scenario {
	return Scenario{Name: name, Fault: fault, Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			nodes := pick(r)
			for _, n := range nodes {
				r.prober.SetDown(n.Name, true)
				if err := r.d.Kill(ctx, n); err != nil {
					res.violate("kill %s: %v", n.Name, err)
				}
			}
			sleep(ctx, min(3*time.Second, hold))
			res.Failover = r.checkFailover(ctx, res, nodeNames(nodes)...)
			sleep(ctx, hold-min(3*time.Second, hold))
			for _, n := range nodes {
				if err := r.d.Start(ctx, n); err != nil {
					res.violate("restart %s: %v", n.Name, err)
				}
				r.prober.SetDown(n.Name, false)
			}
		}}
}

// pauseNode: freeze a node (docker pause): it holds connections and answers nothing.
func pauseNode(name string, hold time.Duration) Scenario {
	return Scenario{Name: "pause-" + name, Fault: "docker pause " + name + " for " + hold.String(), Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			n := r.d.Node(name)
			r.prober.SetDown(name, true)
			if err := r.d.Pause(ctx, n); err != nil {
				res.violate("pause: %v", err)
			}
			sleep(ctx, min(4*time.Second, hold))
			res.Failover = r.checkFailover(ctx, res, name)
			sleep(ctx, hold-min(4*time.Second, hold))
			if err := r.d.Unpause(ctx, n); err != nil {
				res.violate("unpause: %v", err)
			}
			r.prober.SetDown(name, false)
		}}
}

// regionLinks are the attachments cut to isolate a region: its nodes from the other
// regions' networks, the other nodes from its network.
func (r *Runner) regionLinks(region string) []Link {
	var links []Link
	for _, n := range r.d.Nodes {
		for _, net := range Regions {
			if (n.Region == region) != (net == region) {
				links = append(links, Link{Node: n, Region: net})
			}
		}
	}
	return links
}

// partitionRegion cuts a region off from the other two; its own nodes still see each other.
// During the fault a marker written in the region must reach its other node and no node
// outside, and a marker written outside must not reach the region: the partition is real.
func partitionRegion(region string, hold time.Duration, during func(ctx context.Context, r *Runner, res *ScenarioResult)) Scenario {
	name := "partition-region-" + region
	fault := "disconnect " + region + " from the other regions' networks for " + hold.String()
	if during != nil {
		name += "+kill9"
		fault += ", kill -9 one of its nodes inside the partition"
	}
	return Scenario{Name: name, Fault: fault, Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			links := r.regionLinks(region)
			if err := r.d.Disconnect(ctx, links); err != nil {
				res.violate("disconnect: %v", err)
			}
			started := time.Now()
			inside := r.regionNodes(region)
			var outside []*Node
			for _, n := range r.d.Nodes {
				if n.Region != region {
					outside = append(outside, n)
				}
			}
			res.Divergence = r.checkDivergence(ctx, res, res.Name, inside, outside, started.Add(hold-time.Second))
			if during != nil {
				during(ctx, r, res)
			}
			sleep(ctx, hold-time.Since(started))
			if err := r.d.Connect(ctx, links); err != nil {
				res.violate("reconnect: %v", err)
			}
		}}
}

// partitionNode cuts one node off from every other node, its region peer included.
// Clients still reach it (front network): it stays writable.
func partitionNode(name string, hold time.Duration) Scenario {
	return Scenario{Name: "partition-node-" + name, Fault: "disconnect " + name + " from every region network for " + hold.String(), Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			n := r.d.Node(name)
			var links []Link
			for _, net := range Regions {
				links = append(links, Link{Node: n, Region: net})
			}
			if err := r.d.Disconnect(ctx, links); err != nil {
				res.violate("disconnect: %v", err)
			}
			started := time.Now()
			var rest []*Node
			for _, m := range r.d.Nodes {
				if m != n {
					rest = append(rest, m)
				}
			}
			res.Divergence = r.checkDivergence(ctx, res, res.Name, []*Node{n}, rest, started.Add(hold-time.Second))
			sleep(ctx, hold-time.Since(started))
			if err := r.d.Connect(ctx, links); err != nil {
				res.violate("reconnect: %v", err)
			}
		}}
}

// rollingRestart restarts every node in turn (SIGTERM, graceful), each once the previous
// one is ready again.
func rollingRestart() Scenario {
	return Scenario{Name: "rolling-restart", Fault: "docker restart of every node in turn, waiting for /readyz", Hold: 0,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			for _, n := range r.d.Nodes {
				t0 := time.Now()
				r.prober.SetDown(n.Name, true)
				if err := r.d.Restart(ctx, n); err != nil {
					res.violate("restart %s: %v", n.Name, err)
				}
				r.prober.SetDown(n.Name, false)
				if !r.waitReady(ctx, 90*time.Second, n) {
					res.violate("%s not ready 90s after its restart", n.Name)
				}
				res.note("%s back and ready in %s", n.Name, time.Since(t0).Round(100*time.Millisecond))
			}
		}}
}

// clockSkew restarts a node with its clock ahead by offset (beyond --max-skew): the other
// nodes must refuse its timestamps, counted in sessiond_rejected_timestamps_total. The
// node is then restarted with its true clock.
func clockSkew(name string, offset, hold time.Duration) Scenario {
	return Scenario{Name: "clock-skew-" + name, Fault: fmt.Sprintf("restart %s with --test-clock-offset %s (max skew 1m) for %s", name, offset, hold), Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			n := r.d.Node(name)
			before := r.rejected(ctx)
			idx := r.state.addSkew(skewWindow{node: name, from: time.Now(), to: time.Now().Add(24 * time.Hour)})
			off := r.state.addOffset(offsetWindow{node: name, from: time.Now(), to: time.Now().Add(24 * time.Hour), offset: offset})
			r.prober.SetDown(name, true)
			if err := r.d.Recreate(ctx, n, map[string]string{"TEST_HOOKS": "true", "CLOCK_OFFSET": offset.String()}); err != nil {
				res.violate("restart with a clock offset: %v", err)
			}
			r.prober.SetDown(name, false)
			if !r.waitReady(ctx, 60*time.Second, n) {
				res.violate("%s not ready with its clock ahead", name)
			}
			t0 := time.Now()
			// A write that can only come from the skewed node.
			marker := r.marker(ctx, n, res.Name+"-skewed")
			sleep(ctx, hold-time.Since(t0))
			after := r.rejected(ctx)
			var total float64
			var counts []string
			for _, m := range r.d.Nodes {
				if m.Name == name {
					continue
				}
				d := after[m.Name] - before[m.Name]
				total += d
				counts = append(counts, fmt.Sprintf("%s +%.0f", m.Name, d))
			}
			res.Divergence = "sessiond_rejected_timestamps_total on the others: " + strings.Join(counts, ", ")
			if total <= 0 {
				res.violate("no node counted a rejected timestamp from %s (clock %s ahead)", name, offset)
			}
			// Which nodes served a read showing it: with --replicas a node that does not hold
			// the marker's partition relays the read from a holder, ap-2 itself included.
			if marker != nil {
				if shown := r.prober.ShownBy(marker); len(shown) > 1 || len(shown) == 1 && shown[0] != name {
					res.violate("a write on %s with its clock %s ahead was accepted by %v (reads through %v showed it)", name, offset, shown, r.prober.SeenBy(marker))
				}
			}
			r.prober.SetDown(name, true)
			if err := r.d.Recreate(ctx, n, map[string]string{"TEST_HOOKS": "false", "CLOCK_OFFSET": "0s"}); err != nil {
				res.violate("restart with the true clock: %v", err)
			}
			r.prober.SetDown(name, false)
			r.state.endOffset(off, time.Now())
			// It keeps issuing timestamps from the future until real time catches up.
			r.state.endSkew(idx, time.Now().Add(offset))
			res.note("%s's writes from %s to %s carry timestamps ahead of real time; peers accept them once they are less than 1m ahead", name,
				time.Now().Format("15:04:05"), time.Now().Add(offset).Format("15:04:05"))
		}}
}

// wrongKey starts a node with another cluster key that tries to join: nobody may list it
// as a member, and no data may cross in either direction.
func wrongKey(hold time.Duration) Scenario {
	return Scenario{Name: "wrong-cluster-key", Fault: "a node with another cluster key joins through the seeds for " + hold.String(), Hold: hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			if err := r.d.StartRogue(ctx, newClusterKey()); err != nil {
				res.violate("start the rogue node: %v", err)
				return
			}
			defer func() {
				if err := r.d.StopRogue(context.WithoutCancel(ctx)); err != nil {
					res.violate("remove the rogue node: %v", err)
				}
			}()
			rogue := &Node{Name: "rogue", Port: r.rogueport}
			if !waitUntil(ctx, 30*time.Second, 250*time.Millisecond, func() bool {
				return r.client.Do(ctx, rogue.URL(), "GET", "/healthz", "", "", nil).Status == 200
			}) {
				res.violate("the rogue node never served")
				return
			}
			// An account that exists only on the rogue node.
			ru := &User{Name: "rogue" + r.runID, Password: "rogue-password"}
			reg := r.client.Do(ctx, rogue.URL(), "POST", "/v1/users", "", "", map[string]any{"username": ru.Name, "password": ru.Password,
				"profile": map[string]string{"first_name": "R", "last_name": "R", "email": "r@example.com", "address": "x"}})
			login := r.client.Do(ctx, rogue.URL(), "POST", "/v1/sessions", "", "", map[string]string{"username": ru.Name, "password": ru.Password})
			var tok struct {
				Token string `json:"token"`
			}
			if reg.Status != 201 || login.Status != 201 || login.Decode(&tok) != nil {
				res.violate("the rogue node did not take writes (register %d, login %d)", reg.Status, login.Status)
			}
			deadline := time.Now().Add(hold)
			checks := 0
			for time.Now().Before(deadline) && ctx.Err() == nil {
				checks++
				for _, n := range r.d.Nodes {
					members, err := r.members(ctx, n, r.observer.Anchor.Token)
					if err != nil {
						continue
					}
					if slices.Contains(members, "rogue") {
						res.violate("%s lists the rogue node as a member", n.Name)
					}
				}
				if tok.Token != "" {
					if members, err := r.members(ctx, rogue, tok.Token); err == nil && len(members) > 1 {
						res.violate("the rogue node sees members %v", members)
					}
				}
				sleep(ctx, time.Second)
			}
			for _, n := range r.d.Nodes {
				lr := r.client.Do(ctx, n.URL(), "POST", "/v1/sessions", "", "", map[string]string{"username": ru.Name, "password": ru.Password})
				if lr.Status == 201 {
					res.violate("the rogue node's account logs in on %s", n.Name)
				}
			}
			if rr := r.client.Do(ctx, rogue.URL(), "GET", "/v1/users/me", r.observer.Anchor.Token, "", nil); rr.Status == 200 {
				res.violate("a cluster token works on the rogue node")
			}
			if rr := r.client.Do(ctx, rogue.URL(), "POST", "/v1/sessions", "", "", map[string]string{"username": r.observer.Name, "password": r.observer.Password}); rr.Status == 201 {
				res.violate("a cluster account logs in on the rogue node")
			}
			res.Divergence = fmt.Sprintf("%d membership checks of all six nodes and the rogue: it stayed alone; its account is unknown to the cluster and the cluster's to it", checks)
		}}
}

// newClusterKey returns a fresh cluster key (what `sessiond keygen` prints).
func newClusterKey() string { return randomKey() }

func nodeNames(ns []*Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}

func (r *Runner) regionNodes(region string) []*Node {
	var out []*Node
	for _, n := range r.d.Nodes {
		if n.Region == region {
			out = append(out, n)
		}
	}
	return out
}
