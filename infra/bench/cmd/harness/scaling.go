package main

import (
	"context"
	"fmt"
	"strconv"
)

type scalingRun struct {
	Target      string  `json:"target"`
	Connections int     `json:"connections"`
	Throughput  float64 `json:"throughput"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	ServerCPU   float64 `json:"server_cpu_percent"`
	WrittenPer  float64 `json:"bytes_written_per_patch"` // to storage, warm-up included
	Load        float64 `json:"load_average"`
}

// runScaling runs durable patches against one sessiond node and against Redis with
// appendfsync always at several connection counts: a store that commits concurrent
// writers together gets faster with more of them until the CPU is spent, which tells
// whether a figure at one concurrency is bounded by commit latency or by work.
func runScaling(ctx context.Context, o options, res *results) error {
	fmt.Printf("\n== durable patches by concurrency (%s each)\n", o.duration)
	for _, t := range []httpTarget{httpTargets[3], httpTargets[2]} {
		urls, ps, err := t.start(ctx, o)
		if err != nil {
			return err
		}
		for _, conns := range []int{8, 32, 128} {
			load := loadAvg()
			r, cpu, written, err := benchIO(ctx, o, "bench-scaling-"+t.name, ps, nil, "--target", urls[0], "--mix", "patch=1",
				"--connections", strconv.Itoa(conns), "--duration", o.duration.String(), "--warmup", o.warmup.String(),
				"--users", strconv.Itoa(max(o.users, conns)))
			if err != nil {
				return err
			}
			st := r.Operations["patch"]
			res.Scaling = append(res.Scaling, scalingRun{Target: t.name, Connections: conns, Throughput: st.Throughput,
				P50: st.P50, P99: st.P99, ServerCPU: cpu, Load: load,
				WrittenPer: written / max(st.Throughput*(r.Elapsed+o.warmup.Seconds()), 1)})
			last := res.Scaling[len(res.Scaling)-1]
			fmt.Printf("  %-14s %4d connections: %6.0f patches/s  p50 %6.2f ms  p99 %7.2f ms  server CPU %3.0f%%  %6.0f B written per patch  load %.1f\n",
				t.name, conns, st.Throughput, st.P50, st.P99, cpu, last.WrittenPer, load)
		}
		for _, p := range ps {
			p.stop()
		}
	}
	return nil
}
