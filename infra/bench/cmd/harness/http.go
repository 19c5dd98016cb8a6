package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// benchResult is the part of `sessiond bench --json` the harness reads.
type benchResult struct {
	Elapsed    float64 `json:"elapsed_seconds"`
	Operations map[string]struct {
		Requests   int64   `json:"requests"`
		Errors     int64   `json:"errors"`
		Throughput float64 `json:"throughput"`
		P50        float64 `json:"p50_ms"`
		P90        float64 `json:"p90_ms"`
		P99        float64 `json:"p99_ms"`
		Max        float64 `json:"max_ms"`
	} `json:"operations"`
	Errors map[string]int64 `json:"errors"`
	Behind int64            `json:"behind"` // responses 503 behind (errors too)
	CPU    struct {
		Percent float64 `json:"percent"`
	} `json:"cpu"`
}

// bench runs `sessiond bench --json` and measures the CPU the server processes used
// meanwhile (setup included in neither).
func bench(ctx context.Context, o options, logName string, servers []*proc, onMeasure func(), args ...string) (*benchResult, float64, error) {
	r, cpu, _, err := benchIO(ctx, o, logName, servers, onMeasure, args...)
	return r, cpu, err
}

// benchIO is bench that also returns the bytes written to storage meanwhile: to the
// device holding --out, where the servers keep their data (deviceWritten).
func benchIO(ctx context.Context, o options, logName string, servers []*proc, onMeasure func(), args ...string) (*benchResult, float64, float64, error) {
	f, err := os.OpenFile(filepath.Join(o.logs(), logName+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	// The log is appended to by every run of the same name: only this run's lines count.
	from, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, 0, err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, o.sessiond(), append([]string{"bench", "--json"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, f
	if err := cmd.Start(); err != nil {
		return nil, 0, 0, err
	}
	// Server CPU is sampled once setup is over: the bench prints its first progress line
	// a second into measuring; sampling at the end minus the whole run would count setup.
	cpu0 := map[int]float64{}
	var io0 float64
	var t0 time.Time
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	logPath := f.Name()
wait:
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, 0, 0, fmt.Errorf("sessiond bench: %w (log %s)", err, logPath)
			}
			break wait
		case <-tick.C:
			if t0.IsZero() {
				if b := readFrom(logPath, from); bytes.Contains(b, []byte("setup: log in")) && bytes.Count(b, []byte("setup: ")) >= setupLines(args) {
					t0 = time.Now()
					for _, s := range servers {
						cpu0[s.pid()] = cpuSeconds(s.pid())
					}
					io0 = deviceWritten(o.out)
					if onMeasure != nil {
						onMeasure()
					}
				}
			}
		}
	}
	elapsed := time.Since(t0).Seconds()
	var serverCPU, written float64
	if !t0.IsZero() {
		for _, s := range servers {
			serverCPU += cpuSeconds(s.pid()) - cpu0[s.pid()]
		}
		written = deviceWritten(o.out) - io0
		serverCPU = 100 * serverCPU / elapsed
	}
	var r benchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, 0, 0, fmt.Errorf("sessiond bench output: %w", err)
	}
	fmt.Fprintf(f, "%s\n", out.Bytes())
	return &r, serverCPU, written, nil
}

// setupLines is how many "setup:" lines precede measuring: register, log in, and with
// several targets the replication wait.
func setupLines(args []string) int {
	i := slices.Index(args, "--target")
	if i >= 0 && strings.Contains(args[i+1], ",") {
		return 3
	}
	return 2
}

// httpRun is one target under one mix.
type httpRun struct {
	Target     string           `json:"target"`
	Mix        string           `json:"mix"`
	Round      int              `json:"round"`
	Throughput float64          `json:"throughput"`
	P50        float64          `json:"p50_ms"`
	P90        float64          `json:"p90_ms"`
	P99        float64          `json:"p99_ms"`
	Max        float64          `json:"max_ms"`
	Errors     map[string]int64 `json:"errors"`
	BenchCPU   float64          `json:"bench_cpu_percent"`
	ServerCPU  float64          `json:"server_cpu_percent"`
	ServerUS   float64          `json:"server_cpu_us_per_request"`
	Load       float64          `json:"load_average"`
}

// httpTarget starts one comparison target and returns its URLs and processes.
type httpTarget struct {
	name  string
	label string
	start func(ctx context.Context, o options) ([]string, []*proc, error)
}

func startBaseline(o options, name string, args ...string) (string, *proc, error) {
	addr := loopback()
	p, err := start(o.logs(), name, o.baseline(), append([]string{"--http", addr}, args...)...)
	if err != nil {
		return "", nil, err
	}
	return "http://" + addr, p, waitTCP(p, addr, 10*time.Second)
}

func startRedis(o options, name, fsync string) (string, *proc, error) {
	port := freePort()
	dir := o.data(name)
	if err := os.RemoveAll(dir); err != nil { // each start is a fresh, empty store
		return "", nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := start(o.logs(), name, o.redisServer, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--daemonize", "no",
		"--protected-mode", "yes")
	if err != nil {
		return "", nil, err
	}
	return addr, p, waitTCP(p, addr, 10*time.Second)
}

var httpTargets = []httpTarget{
	{"bare", "(a) bare Fiber, fixed JSON", func(ctx context.Context, o options) ([]string, []*proc, error) {
		u, p, err := startBaseline(o, "bare", "--mode", "bare")
		return []string{u}, []*proc{p}, err
	}},
	{"redis-everysec", "(b) Fiber+JWT+Redis, appendfsync everysec", func(ctx context.Context, o options) ([]string, []*proc, error) {
		return startJWTRedis(o, "everysec")
	}},
	{"redis-always", "(b) Fiber+JWT+Redis, appendfsync always", func(ctx context.Context, o options) ([]string, []*proc, error) {
		return startJWTRedis(o, "always")
	}},
	{"sessiond-1", "(c) sessiond, one node", func(ctx context.Context, o options) ([]string, []*proc, error) {
		n, err := startCluster(ctx, o, "single", []string{"local"}, false)
		return urls(n), procsOf(n), err
	}},
	{"sessiond-3", "(d) sessiond, three nodes", func(ctx context.Context, o options) ([]string, []*proc, error) {
		n, err := startCluster(ctx, o, "three", []string{"eu", "us", "ap"}, true)
		return urls(n), procsOf(n), err
	}},
}

func startJWTRedis(o options, fsync string) ([]string, []*proc, error) {
	raddr, rp, err := startRedis(o, "redis-"+fsync, fsync)
	if err != nil {
		return nil, nil, err
	}
	u, p, err := startBaseline(o, "jwtredis-"+fsync, "--mode", "jwtredis", "--redis", raddr)
	return []string{u}, []*proc{p, rp}, err
}

var httpMixes = []string{"read=1", "patch=1"}

func runHTTP(ctx context.Context, o options, res *results) error {
	fmt.Printf("== HTTP: %d connections, %s per run (after %s warm-up), %d users, mixes %s; on sessiond also read+bookmark (the harness's own client, %d users)\n",
		o.connections, o.duration, o.warmup, o.users, strings.Join(httpMixes, " and "), o.connections)
	for round := range o.repeat {
		for _, t := range httpTargets {
			urls, ps, err := t.start(ctx, o)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			for _, mix := range httpMixes {
				load := loadAvg()
				r, serverCPU, err := bench(ctx, o, "bench-"+t.name, ps, nil,
					"--target", strings.Join(urls, ","), "--mix", mix, "--connections", strconv.Itoa(o.connections),
					"--duration", o.duration.String(), "--warmup", o.warmup.String(), "--users", strconv.Itoa(o.users))
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, mix, err)
				}
				op := strings.TrimSuffix(mix, "=1")
				st := r.Operations[op]
				run := httpRun{Target: t.name, Mix: op, Round: round, Throughput: st.Throughput,
					P50: st.P50, P90: st.P90, P99: st.P99, Max: st.Max, Errors: r.Errors,
					BenchCPU: r.CPU.Percent, ServerCPU: serverCPU, Load: load}
				if st.Throughput > 0 {
					run.ServerUS = serverCPU * 1e4 / st.Throughput
				}
				res.HTTP = append(res.HTTP, run)
				fmt.Printf("  %-15s %-6s %8.0f req/s  p50 %6.2f  p99 %7.2f ms  errors %d  server CPU %3.0f%% (%5.1f µs/req)  bench CPU %3.0f%%  load %.1f\n",
					t.name, op, st.Throughput, st.P50, st.P99, st.Errors, serverCPU, run.ServerUS, r.CPU.Percent, load)
			}
			if isSessiond(t.name) {
				r, err := runBookmarkReads(ctx, o, t.name, urls, ps, round)
				if err != nil {
					return fmt.Errorf("%s read+bookmark: %w", t.name, err)
				}
				res.HTTPBookmark = append(res.HTTPBookmark, r)
				printBookmarkRead(r)
			}
			for _, p := range ps {
				p.stop()
			}
		}
	}
	res.Ratios = ratios(res.HTTP)
	for _, t := range httpTargets {
		if r, ok := medianBookmarkRead(res.HTTPBookmark, t.name); ok {
			res.Ratios["read+bookmark "+t.name+"/read"] = r.Ratio
		}
	}
	printHTTP(res)
	printBookmarkReads(res)
	return nil
}

// median returns the run of target and mix with the median throughput.
func median(runs []httpRun, target, mix string) (httpRun, bool) {
	var sel []httpRun
	for _, r := range runs {
		if r.Target == target && r.Mix == mix {
			sel = append(sel, r)
		}
	}
	if len(sel) == 0 {
		return httpRun{}, false
	}
	slices.SortFunc(sel, func(a, b httpRun) int { return int(a.Throughput - b.Throughput) })
	return sel[len(sel)/2], true
}

func ratios(runs []httpRun) map[string]float64 {
	out := map[string]float64{}
	for _, mix := range []string{"read", "patch"} {
		for _, num := range []string{"sessiond-1", "sessiond-3"} {
			n, ok := median(runs, num, mix)
			if !ok {
				continue
			}
			for _, den := range []string{"bare", "redis-everysec", "redis-always"} {
				if d, ok := median(runs, den, mix); ok && d.Throughput > 0 {
					out[mix+" "+num+"/"+den] = n.Throughput / d.Throughput
				}
			}
		}
	}
	return out
}

func printHTTP(res *results) {
	fmt.Println()
	fmt.Printf("%-44s %10s %8s %8s %8s %10s %8s %8s %8s\n", "target (median run)", "read/s", "p50 ms", "p99 ms", "µs/req", "patch/s", "p50 ms", "p99 ms", "µs/req")
	for _, t := range httpTargets {
		r, ok1 := median(res.HTTP, t.name, "read")
		p, ok2 := median(res.HTTP, t.name, "patch")
		if !ok1 || !ok2 {
			continue
		}
		fmt.Printf("%-44s %10.0f %8.2f %8.2f %8.1f %10.0f %8.2f %8.2f %8.1f\n", t.label, r.Throughput, r.P50, r.P99, r.ServerUS, p.Throughput, p.P50, p.P99, p.ServerUS)
	}
	fmt.Println()
	fmt.Printf("%-12s %-12s %10s %16s %14s\n", "ratio", "", "to (a) bare", "to (b) everysec", "to (b) always")
	for _, mix := range []string{"read", "patch"} {
		for _, num := range []string{"sessiond-1", "sessiond-3"} {
			fmt.Printf("%-12s %-12s %10.2f %16.2f %14.2f\n", mix, num,
				res.Ratios[mix+" "+num+"/bare"], res.Ratios[mix+" "+num+"/redis-everysec"], res.Ratios[mix+" "+num+"/redis-always"])
		}
	}
	fmt.Println("targets: reads ≥ 0.60× bare; durable patches ≥ 0.25× bare")
	fmt.Println("µs/req: the servers' CPU (user+sys, Redis included) per successful request while measuring")
	fmt.Println("sessiond rows: `sessiond bench` sends each user's latest X-Sessiond-Bookmark with every request")
}

// readFrom returns the contents of the file at path from offset on (nil if it cannot).
func readFrom(path string, offset int64) []byte {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return nil
	}
	return b[offset:]
}
