package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// rebalance changes a region's membership under the workload, twice: the joiner (eu-3,
// compose profile "rebalance") joins region eu through the seeds and, once it is ready,
// leaver, one of the region's original nodes, is stopped gracefully (it leaves the
// cluster) for hold; then leaver starts again and, once it is ready, the joiner leaves
// the same way and is removed, so the run ends with the original six.
//
// With --replicas each move changes which nodes of eu hold which partitions: the joiner
// takes a share of them from the two others, leaver's go to the two that remain, and
// back. New holders pull what they gain; the others hand off what they no longer hold
// and drop it once its holders confirm it. Throughout, the workload runs through the load
// balancer and straight at the nodes, the joiner included while it is in (the load
// balancer does not know it), and every write acknowledged before the joiner leaves must
// be readable through it while it is in: the prober reads every write through it too.
// The checker's guarantees — nothing acknowledged lost, nothing resurrected,
// read-your-writes, convergence — must hold through it. Without --replicas every node
// holds everything and the same moves are plain joins and leaves.
func rebalance(leaver string, hold time.Duration) Scenario {
	return Scenario{Name: "rebalance-" + leaver,
		Fault: fmt.Sprintf("eu-3 joins region eu; once it is ready %s leaves (docker stop) for %s; %s starts again and eu-3 leaves (docker stop, removed)", leaver, hold, leaver),
		Hold:  hold,
		Run: func(ctx context.Context, r *Runner, res *ScenarioResult) {
			j, old := r.d.Joiner, r.d.Node(leaver)
			region := r.regionNodes(j.Region)
			withJoiner := slices.Concat(region, []*Node{j})
			t0 := time.Now()
			if err := r.d.StartJoiner(ctx); err != nil {
				res.violate("start %s: %v", j.Name, err)
				return
			}
			in := false // the joiner is a target of the workload and read by the prober
			joined := true
			defer func() { // on an early return: out of the workload's way, and gone
				if in {
					r.workload.RemoveTarget(j.Name)
					r.prober.RemoveNode(j.Name)
				}
				if joined {
					if err := r.d.RemoveJoiner(context.WithoutCancel(ctx)); err != nil {
						res.violate("remove %s: %v", j.Name, err)
					}
				}
			}()
			if !r.waitReady(ctx, 90*time.Second, j) {
				res.violate("%s not ready 90s after it started", j.Name)
				return
			}
			res.note("%s started and was ready (caught up) in %s", j.Name, time.Since(t0).Round(100*time.Millisecond))
			r.workload.AddTarget(j)
			r.prober.AddNode(j)
			in = true
			// A joining node holds nothing (and forwards everything) until it has pulled the
			// partitions it will hold; then it takes its share.
			t1 := time.Now()
			var lastErr error
			if waitUntil(ctx, 60*time.Second, 250*time.Millisecond, func() bool {
				c, err := r.cluster(ctx, j)
				lastErr = err
				return err == nil && (c.Placement == nil || c.Placement.Holds > 0)
			}) {
				res.note("%s took its share %s after it was ready", j.Name, time.Since(t1).Round(100*time.Millisecond))
			} else {
				res.violate("%s holds no partition 60s after it was ready: placement did not take it in (%v)", j.Name, lastErr)
			}
			r.waitMember(ctx, res, j.Name, "alive", r.d.Nodes)
			res.note("with %s: %s", j.Name, r.shares(ctx, withJoiner))

			r.prober.SetDown(leaver, true)
			t1 = time.Now()
			if err := r.d.Stop(ctx, old); err != nil {
				res.violate("stop %s: %v", leaver, err)
			}
			res.note("%s stopped (SIGTERM) in %s", leaver, time.Since(t1).Round(100*time.Millisecond))
			var rest []*Node
			for _, n := range slices.Concat(r.d.Nodes, []*Node{j}) {
				if n != old {
					rest = append(rest, n)
				}
			}
			r.waitMember(ctx, res, leaver, "left", rest)
			res.Failover = r.checkFailover(ctx, res, leaver)
			var stay []*Node
			for _, n := range withJoiner {
				if n != old {
					stay = append(stay, n)
				}
			}
			res.note("without %s: %s", leaver, r.shares(ctx, stay))
			sleep(ctx, hold-time.Since(t1))

			if err := r.d.Start(ctx, old); err != nil {
				res.violate("start %s again: %v", leaver, err)
			}
			r.prober.SetDown(leaver, false)
			if !r.waitReady(ctx, 90*time.Second, old) {
				res.violate("%s not ready 90s after it started again", leaver)
			}
			res.note("%s back and ready in %s", leaver, time.Since(t1.Add(hold)).Round(100*time.Millisecond))

			r.workload.RemoveTarget(j.Name)
			r.prober.RemoveNode(j.Name)
			in = false
			t2 := time.Now()
			joined = false
			if err := r.d.RemoveJoiner(ctx); err != nil {
				res.violate("stop and remove %s: %v", j.Name, err)
			}
			res.note("%s stopped (SIGTERM) and removed in %s", j.Name, time.Since(t2).Round(100*time.Millisecond))
			r.waitMember(ctx, res, j.Name, "left", r.d.Nodes)
			res.Divergence = "after: " + r.shares(ctx, region)
		}}
}

// waitMember waits until every node of nodes shows the member of that name with status
// want (alive, left), and notes how long that took or what they showed instead. A node
// that leaves gracefully must show as left, not failed: it said goodbye.
func (r *Runner) waitMember(ctx context.Context, res *ScenarioResult, name, want string, nodes []*Node) {
	t0 := time.Now()
	seen := map[string]string{}
	ok := waitUntil(ctx, 15*time.Second, 250*time.Millisecond, func() bool {
		all := true
		for _, n := range nodes {
			c, err := r.cluster(ctx, n)
			if err != nil {
				seen[n.Name] = err.Error()
				all = false
				continue
			}
			seen[n.Name] = c.memberStatus(name)
			all = all && seen[n.Name] == want
		}
		return all
	})
	if ok {
		res.note("every node listed %s as %s within %s", name, want, time.Since(t0).Round(100*time.Millisecond))
		return
	}
	res.note("15s on, not every node listed %s as %s: %v", name, want, seen)
	if want == "alive" {
		res.violate("%s joined but not every node lists it alive after 15s: %v", name, seen)
	}
}
