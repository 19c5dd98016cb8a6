package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

type scalingRun struct {
	Target      string  `json:"target"`
	Connections int     `json:"connections"`
	Round       int     `json:"round"`
	Throughput  float64 `json:"throughput"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	ServerCPU   float64 `json:"server_cpu_percent"`
	WrittenPer  float64 `json:"bytes_written_per_patch"` // to the data's device (deviceWritten), warm-up included
	Load        float64 `json:"load_average"`
}

// scalingRatio is sessiond's durable patches ÷ Redis's at one concurrency: one ratio per
// round, each of two runs made back to back, and their median.
type scalingRatio struct {
	Connections int       `json:"connections"`
	Rounds      []float64 `json:"rounds"`
	Median      float64   `json:"median"`
}

// scalingConnections are the concurrencies runScaling measures.
var scalingConnections = []int{8, 32, 128}

// runScaling runs durable patches against one sessiond node and against Redis with
// appendfsync always at several connection counts: a store that commits concurrent
// writers together gets faster with more of them until the CPU is spent, which tells
// whether a figure at one concurrency is bounded by commit latency or by work. Both
// targets run throughout; at each concurrency sessiond's run and Redis's follow each
// other, so that each ratio compares runs made under the same conditions (the disk's
// speed and the machine's load drift over minutes), and --repeat rounds give a median.
func runScaling(ctx context.Context, o options, res *results) error {
	fmt.Printf("\n== durable patches by concurrency (%s each, %d rounds, sessiond and Redis back to back)\n", o.duration, o.repeat)
	type live struct {
		t    httpTarget
		urls []string
		ps   []*proc
	}
	var targets []live
	defer func() {
		for _, l := range targets {
			for _, p := range l.ps {
				p.stop()
			}
		}
	}()
	for _, t := range []httpTarget{httpTargets[3], httpTargets[2]} {
		urls, ps, err := t.start(ctx, o)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		targets = append(targets, live{t, urls, ps})
	}
	for round := range o.repeat {
		for _, conns := range scalingConnections {
			for _, l := range targets {
				load := loadAvg()
				r, cpu, written, err := benchIO(ctx, o, "bench-scaling-"+l.t.name, l.ps, nil, "--target", l.urls[0], "--mix", "patch=1",
					"--connections", strconv.Itoa(conns), "--duration", o.duration.String(), "--warmup", o.warmup.String(),
					"--users", strconv.Itoa(max(o.users, conns)))
				if err != nil {
					return err
				}
				st := r.Operations["patch"]
				run := scalingRun{Target: l.t.name, Connections: conns, Round: round, Throughput: st.Throughput,
					P50: st.P50, P99: st.P99, ServerCPU: cpu, Load: load,
					WrittenPer: written / max(st.Throughput*(r.Elapsed+o.warmup.Seconds()), 1)}
				res.Scaling = append(res.Scaling, run)
				fmt.Printf("  %-14s %4d connections: %6.0f patches/s  p50 %6.2f ms  p99 %7.2f ms  server CPU %3.0f%%  %6.0f B written per patch  load %.1f\n",
					l.t.name, conns, st.Throughput, st.P50, st.P99, cpu, run.WrittenPer, load)
			}
		}
	}
	res.ScalingRatios = scalingRatios(res.Scaling, targets[0].t.name, targets[1].t.name)
	fmt.Println()
	for _, r := range res.ScalingRatios {
		fmt.Printf("  %s ÷ %s, %4d connections: median %.2f (rounds %s)\n", targets[0].t.name, targets[1].t.name,
			r.Connections, r.Median, formatRatios(r.Rounds))
	}
	return nil
}

// scalingRatios pairs num's and den's runs of the same round and concurrency.
func scalingRatios(runs []scalingRun, num, den string) []scalingRatio {
	type at struct{ conns, round int }
	dens := map[at]float64{}
	for _, r := range runs {
		if r.Target == den {
			dens[at{r.Connections, r.Round}] = r.Throughput
		}
	}
	var out []scalingRatio
	for _, conns := range scalingConnections {
		sr := scalingRatio{Connections: conns}
		for _, r := range runs {
			if d := dens[at{conns, r.Round}]; r.Target == num && r.Connections == conns && d > 0 {
				sr.Rounds = append(sr.Rounds, r.Throughput/d)
			}
		}
		if len(sr.Rounds) > 0 {
			sr.Median = medianOf(sr.Rounds)
			out = append(out, sr)
		}
	}
	return out
}

// formatRatios prints ratios with two decimals, space-separated.
func formatRatios(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(s, " ")
}
