package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The wrk part: authenticated session reads, GET /v1/sessions/current with a bearer
// token, driven by wrk (a C load generator, much lighter than `sessiond bench`) against
// one sessiond node and the bare Fiber baseline, each its own process, interleaved round
// by round. The baseline runs twice: as it is (the ceiling, sending only Content-Type)
// and with --headers sessiond (the headers sessiond's answers carry), so that the ratio
// to each says what the headers cost and what the work does. sessiond runs with its
// defaults (access log at info level, 1 % sampled) and one session, as a user of the
// API would read it; the session holds one data key, as the baseline's fixed body does.
// With --wrk-other DIR, the sessiond build in DIR (another commit's) runs beside it, in
// the same rounds, so that two builds compare under the same load.

// wrkRun is one wrk run against one target.
type wrkRun struct {
	Target     string  `json:"target"`
	Round      int     `json:"round"`
	Requests   int64   `json:"requests"`
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	Errors     int64   `json:"errors"` // non-2xx answers and socket errors
	ServerUS   float64 `json:"server_cpu_us_per_request"`
	Load       float64 `json:"load_average"`
}

// wrkResult is the wrk part's runs and, per round, sessiond's throughput over each
// baseline's.
type wrkResult struct {
	Command string             `json:"command"` // wrk's command line, URL and script aside
	Runs    []wrkRun           `json:"runs"`
	Ratios  map[string]float64 `json:"median_ratios"`
}

// wrkTargets are the wrk part's targets, in the order of each round; sessiond-other runs
// only with --wrk-other.
var wrkTargets = []struct{ name, label string }{
	{"sessiond-1", "sessiond, one node"},
	{"sessiond-other", "sessiond, one node, --wrk-other build"},
	{"bare", "(a) bare Fiber, fixed JSON"},
	{"bare-headers", "(a) bare Fiber, sessiond's headers"},
}

func runWrk(ctx context.Context, o options, res *results) error {
	wrk, err := exec.LookPath(o.wrk)
	if err != nil {
		fmt.Printf("== wrk: %s not found (apt-get install wrk); skipping the wrk part\n", o.wrk)
		return nil
	}
	args := []string{"-t", strconv.Itoa(o.wrkThreads), "-c", strconv.Itoa(o.wrkConnections),
		"-d", strconv.Itoa(int(o.wrkDuration.Seconds())) + "s", "--latency"}
	fmt.Printf("== wrk: GET /v1/sessions/current with a bearer token, one session, %s, %d rounds interleaved (after %s of unmeasured load on each)\n",
		"wrk "+strings.Join(args, " "), o.repeat, o.warmup)

	nodes, err := startCluster(ctx, o, "wrk", []string{"local"}, false, "--log-level", "info")
	if err != nil {
		return fmt.Errorf("sessiond: %w", err)
	}
	bare, bareP, err := startBaseline(o, "wrk-bare", "--mode", "bare")
	if err != nil {
		return fmt.Errorf("bare: %w", err)
	}
	bareH, bareHP, err := startBaseline(o, "wrk-bare-headers", "--mode", "bare", "--headers", "sessiond")
	if err != nil {
		return fmt.Errorf("bare with headers: %w", err)
	}
	type target struct {
		url, script string
		p           *proc
	}
	targets := map[string]target{}
	for _, t := range []struct {
		name string
		n    *node
	}{{"sessiond-1", nodes[0]}} {
		targets[t.name] = target{url: t.n.url(), p: t.n.p}
	}
	if o.wrkOther != "" {
		other := o
		other.bin = o.wrkOther
		ns, err := startCluster(ctx, other, "wrk-other", []string{"local"}, false, "--log-level", "info")
		if err != nil {
			return fmt.Errorf("sessiond of --wrk-other: %w", err)
		}
		targets["sessiond-other"] = target{url: ns[0].url(), p: ns[0].p}
	}
	// Each sessiond gets a session of its own; the baselines take any token.
	for name, t := range targets {
		token, err := wrkSession(t.url)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if t.script, err = wrkScript(o.out, token); err != nil {
			return err
		}
		defer os.Remove(t.script)
		targets[name] = t
	}
	targets["bare"] = target{url: bare, p: bareP, script: targets["sessiond-1"].script}
	targets["bare-headers"] = target{url: bareH, p: bareHP, script: targets["sessiond-1"].script}
	r := &wrkResult{Command: "wrk " + strings.Join(args, " ") + " -s SCRIPT URL/v1/sessions/current"}
	res.Wrk = r
	// Unmeasured load first (--warmup), as the HTTP part has: a fresh process's first
	// seconds (its heap growing, its threads starting) are not what it serves at.
	if w := int(o.warmup.Seconds()); w > 0 {
		warm := append(slices.Clone(args[:4]), "-d", strconv.Itoa(w)+"s")
		for _, t := range wrkTargets {
			if tg, ok := targets[t.name]; ok {
				if _, err := wrkOnce(ctx, o, wrk, warm, tg.script, tg.url+"/v1/sessions/current", tg.p); err != nil {
					return fmt.Errorf("%s warm-up: %w", t.name, err)
				}
			}
		}
	}
	for round := range o.repeat {
		for _, t := range wrkTargets {
			tg, ok := targets[t.name]
			if !ok {
				continue
			}
			run, err := wrkOnce(ctx, o, wrk, args, tg.script, tg.url+"/v1/sessions/current", tg.p)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			run.Target, run.Round = t.name, round
			r.Runs = append(r.Runs, run)
			fmt.Printf("  round %d  %-13s %9.0f req/s  p50 %6.2f  p99 %7.2f ms  errors %d  server %5.1f µs/req  load %.1f\n",
				round+1, t.name, run.Throughput, run.P50, run.P99, run.Errors, run.ServerUS, run.Load)
			if run.Errors > 0 {
				return fmt.Errorf("%s answered %d requests with an error: the figures would not be of reads", t.name, run.Errors)
			}
		}
		tp := wrkRound(r.Runs, round)
		fmt.Printf("  round %d  sessiond ÷ bare %.3f, ÷ bare with sessiond's headers %.3f", round+1,
			tp["sessiond-1"]/tp["bare"], tp["sessiond-1"]/tp["bare-headers"])
		if o.wrkOther != "" {
			fmt.Printf("; --wrk-other build ÷ bare %.3f, ÷ bare with headers %.3f; sessiond ÷ --wrk-other build %.3f",
				tp["sessiond-other"]/tp["bare"], tp["sessiond-other"]/tp["bare-headers"], tp["sessiond-1"]/tp["sessiond-other"])
		}
		fmt.Println()
	}
	r.Ratios = wrkRatios(r.Runs, o.repeat)
	printWrk(r)
	return nil
}

// wrkSession registers a user on the node at base, logs it in, sets one data key shaped
// like the baseline's, and returns the session's token.
func wrkSession(base string) (string, error) {
	if _, err := register(httpc, base, "wrk0"); err != nil {
		return "", err
	}
	l, err := logIn(httpc, base, "wrk0", "")
	if err != nil {
		return "", err
	}
	st, b, _, err := request(httpc, "PATCH", base+"/v1/sessions/current", l.token, "",
		map[string]any{"data": map[string]any{"k0": map[string]int{"n": 1, "w": 0}}})
	if err != nil || st != 200 {
		return "", fmt.Errorf("set session data: %d %s %v", st, b, err)
	}
	return l.token, nil
}

// wrkScript writes the Lua script that adds the token to every request, in a temporary
// file under dir that the caller removes.
func wrkScript(dir, token string) (string, error) {
	f, err := os.CreateTemp(dir, "wrk-*.lua")
	if err != nil {
		return "", err
	}
	_, err = fmt.Fprintf(f, "wrk.headers[\"Authorization\"] = %q\n", "Bearer "+token)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return f.Name(), err
}

// wrkOnce runs wrk once against url, served by p, and measures p's CPU meanwhile.
func wrkOnce(ctx context.Context, o options, wrk string, args []string, script, url string, p *proc) (wrkRun, error) {
	run := wrkRun{Load: loadAvg()}
	f, err := os.OpenFile(filepath.Join(o.logs(), "wrk.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return run, err
	}
	defer f.Close()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, wrk, append(args, "-s", script, url)...)
	cmd.Stdout, cmd.Stderr = &out, f
	cpu0 := cpuSeconds(p.pid())
	err = cmd.Run()
	cpu := cpuSeconds(p.pid()) - cpu0
	fmt.Fprintf(f, "%s\n%s\n", strings.Join(cmd.Args, " "), out.Bytes())
	if err != nil {
		return run, fmt.Errorf("wrk: %w (log %s)", err, f.Name())
	}
	if err := parseWrk(out.Bytes(), &run); err != nil {
		return run, fmt.Errorf("wrk output: %w (log %s)", err, f.Name())
	}
	if run.Requests > 0 {
		run.ServerUS = cpu * 1e6 / float64(run.Requests)
	}
	return run, nil
}

// parseWrk reads the figures of wrk's report (run with --latency) into r: the request
// count, requests per second, the latency percentiles and maximum, and errors (non-2xx
// answers and socket errors).
func parseWrk(out []byte, r *wrkRun) error {
	var sawRate, sawCount, sawLatency bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return fmt.Errorf("requests/sec %q: %w", f[1], err)
			}
			r.Throughput, sawRate = v, true
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return fmt.Errorf("request count %q: %w", f[0], err)
			}
			r.Requests, sawCount = v, true
		case len(f) >= 4 && f[0] == "Latency": // avg, stdev, max, +/- stdev
			v, err := wrkDuration(f[3])
			if err != nil {
				return err
			}
			r.Max, sawLatency = v, true
		case len(f) == 2 && strings.HasSuffix(f[0], "%"):
			p, err := wrkDuration(f[1])
			if err != nil {
				continue // not a latency percentile line
			}
			switch f[0] {
			case "50%", "50.000%":
				r.P50 = p
			case "90%", "90.000%":
				r.P90 = p
			case "99%", "99.000%":
				r.P99 = p
			}
		case len(f) >= 5 && f[0] == "Non-2xx":
			v, err := strconv.ParseInt(f[len(f)-1], 10, 64)
			if err != nil {
				return fmt.Errorf("non-2xx count %q: %w", f[len(f)-1], err)
			}
			r.Errors += v
		case len(f) >= 3 && f[0] == "Socket" && f[1] == "errors:":
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				v, err := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
				if err != nil {
					return fmt.Errorf("socket errors %q: %w", sc.Text(), err)
				}
				r.Errors += v
			}
		}
	}
	if !sawRate || !sawCount || !sawLatency {
		return errors.New("no Requests/sec, request count or Latency line")
	}
	return nil
}

// wrkDuration parses one of wrk's durations (123.45us, 1.20ms, 2.00s, 1.00m) into
// milliseconds.
func wrkDuration(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1e3}, {"m", 60e3}, {"h", 3600e3}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("duration %q: %w", s, err)
			}
			return f * u.ms, nil
		}
	}
	return 0, fmt.Errorf("duration %q: no unit", s)
}

// wrkRound returns the throughput of each target in round.
func wrkRound(runs []wrkRun, round int) map[string]float64 {
	out := map[string]float64{}
	for _, r := range runs {
		if r.Round == round {
			out[r.Target] = r.Throughput
		}
	}
	return out
}

// wrkRatios returns the medians, over rounds, of each round's sessiond ÷ baseline (and
// sessiond ÷ the --wrk-other build): the ratios are taken within a round, whose runs
// shared the machine's load of the moment.
func wrkRatios(runs []wrkRun, rounds int) map[string]float64 {
	ratios := map[string][]float64{}
	for round := range rounds {
		tp := wrkRound(runs, round)
		for _, num := range []string{"sessiond-1", "sessiond-other"} {
			for _, den := range []string{"bare", "bare-headers", "sessiond-other"} {
				if num != den && tp[num] > 0 && tp[den] > 0 {
					k := "read " + num + "/" + den
					ratios[k] = append(ratios[k], tp[num]/tp[den])
				}
			}
		}
	}
	out := map[string]float64{}
	for k, v := range ratios {
		out[k] = medianOf(v)
	}
	return out
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func printWrk(r *wrkResult) {
	fmt.Println()
	fmt.Printf("%-36s %10s %8s %8s %8s %8s\n", "target (wrk; median of the rounds)", "read/s", "p50 ms", "p99 ms", "µs/req", "load")
	for _, t := range wrkTargets {
		var sel []wrkRun
		for _, run := range r.Runs {
			if run.Target == t.name {
				sel = append(sel, run)
			}
		}
		if len(sel) == 0 {
			continue
		}
		slices.SortFunc(sel, func(a, b wrkRun) int { return int(a.Throughput - b.Throughput) })
		m := sel[len(sel)/2]
		fmt.Printf("%-36s %10.0f %8.2f %8.2f %8.1f %8.1f\n", t.label, m.Throughput, m.P50, m.P99, m.ServerUS, m.Load)
	}
	fmt.Printf("reads, sessiond ÷ bare: %.2f; ÷ bare with sessiond's headers: %.2f (medians of the rounds' ratios; target ≥ 0.75 ÷ bare)\n",
		r.Ratios["read sessiond-1/bare"], r.Ratios["read sessiond-1/bare-headers"])
	if v, ok := r.Ratios["read sessiond-1/sessiond-other"]; ok {
		fmt.Printf("the --wrk-other build ÷ bare: %.2f; ÷ bare with headers: %.2f; sessiond ÷ the --wrk-other build: %.2f\n",
			r.Ratios["read sessiond-other/bare"], r.Ratios["read sessiond-other/bare-headers"], v)
	}
	fmt.Println("µs/req: the server process's CPU (user+sys) per request while wrk ran; load: the 1-minute load average at the run's start")
}
