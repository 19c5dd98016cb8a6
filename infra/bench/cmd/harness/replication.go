package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"
)

type replicationResult struct {
	Nodes       int     `json:"nodes"`
	Regions     int     `json:"regions"`
	TargetRate  float64 `json:"target_writes_per_second"`
	Writes      float64 `json:"writes_per_second"`
	WriteP50    float64 `json:"write_p50_ms"`
	WriteP99    float64 `json:"write_p99_ms"`
	WriteErrors int64   `json:"write_errors"`
	Applied     float64 `json:"propagations"` // changes applied from a push, all nodes
	PropP50     float64 `json:"propagation_p50_ms"`
	PropP90     float64 `json:"propagation_p90_ms"`
	PropP99     float64 `json:"propagation_p99_ms"`
	ProbeN      int     `json:"probe_samples"`
	ProbeP50    float64 `json:"probe_p50_ms"`
	ProbeP99    float64 `json:"probe_p99_ms"`
	ProbeMax    float64 `json:"probe_max_ms"`
	SyncBytes   float64 `json:"sync_bytes_sent"`
	BenchCPU    float64 `json:"bench_cpu_percent"`
	ServersCPU  float64 `json:"servers_cpu_percent"`
	Load        float64 `json:"load_average"`
}

// runReplication measures propagation in a six-node, three-region loopback cluster under
// paced writes: from the nodes' sessiond_replication_propagation_seconds histograms
// (origin commit → applied on each peer), and by a probe that writes on one node and
// polls another until the write is visible.
func runReplication(ctx context.Context, o options, res *results) error {
	regions := []string{"eu", "eu", "us", "us", "ap", "ap"}
	fmt.Printf("\n== replication: %d nodes in 3 regions, %.0f writes/s for %s\n", len(regions), o.repRate, o.repDuration)
	ns, err := startCluster(ctx, o, "rep", regions, true)
	if err != nil {
		return err
	}
	probe, err := newProbe(ctx, ns)
	if err != nil {
		return fmt.Errorf("probe user: %w", err)
	}
	// The nodes' histograms are read when measuring starts (after the bench's setup,
	// whose registrations would count too) and when it ends.
	var before []metrics
	var scrapeErr error
	scrapeAll := func() {
		for _, n := range ns {
			m, err := scrape(n.url())
			if err != nil && scrapeErr == nil {
				scrapeErr = err
			}
			before = append(before, m)
		}
	}
	probeCtx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan []time.Duration)
	load := loadAvg()
	// The probe starts once the bench has set its users up (its first writes are the
	// registrations' own propagation, not the paced load's).
	measuring := make(chan struct{})
	go func() {
		select {
		case <-measuring:
			probeDone <- probe.run(probeCtx)
		case <-probeCtx.Done():
			probeDone <- nil
		}
	}()
	r, serverCPU, err := bench(ctx, o, "bench-replication", procsOf(ns), func() { scrapeAll(); close(measuring) },
		"--target", joinURLs(ns), "--mix", "patch=1", "--rate", strconv.FormatFloat(o.repRate, 'f', 0, 64),
		"--connections", "64", "--duration", o.repDuration.String(), "--users", "120")
	stopProbe()
	samples := <-probeDone
	if err != nil {
		return err
	}
	if scrapeErr != nil || len(before) != len(ns) {
		return fmt.Errorf("scrape at start of measuring: %v", scrapeErr)
	}
	var after []metrics
	for _, n := range ns {
		m, err := scrape(n.url())
		if err != nil {
			return err
		}
		after = append(after, m)
	}
	h := histogramOf("sessiond_replication_propagation_seconds", after, before)
	var sent float64
	for i := range ns {
		sent += after[i].sum("sessiond_sync_bytes_total", `direction="sent"`) - before[i].sum("sessiond_sync_bytes_total", `direction="sent"`)
	}
	st := r.Operations["patch"]
	rr := &replicationResult{Nodes: len(ns), Regions: 3, TargetRate: o.repRate, Writes: st.Throughput,
		WriteP50: st.P50, WriteP99: st.P99, WriteErrors: st.Errors, Applied: h.count(),
		PropP50: 1000 * h.quantile(.5), PropP90: 1000 * h.quantile(.9), PropP99: 1000 * h.quantile(.99),
		SyncBytes: sent, BenchCPU: r.CPU.Percent, ServersCPU: serverCPU, Load: load}
	if len(samples) > 0 {
		slices.Sort(samples)
		q := func(f float64) float64 {
			return float64(samples[min(int(f*float64(len(samples))), len(samples)-1)]) / 1e6
		}
		rr.ProbeN, rr.ProbeP50, rr.ProbeP99, rr.ProbeMax = len(samples), q(.5), q(.99), float64(samples[len(samples)-1])/1e6
	}
	res.Replication = rr
	fmt.Printf("  writes: %.0f/s (p50 %.1f ms, p99 %.1f ms, errors %d), servers' CPU %.0f%% of one core, load %.1f\n",
		rr.Writes, rr.WriteP50, rr.WriteP99, rr.WriteErrors, rr.ServersCPU, load)
	fmt.Printf("  propagation (nodes' histograms, %.0f applications): p50 %.1f ms  p90 %.1f ms  p99 %.1f ms   (target p99 ≤ 100 ms)\n",
		rr.Applied, rr.PropP50, rr.PropP90, rr.PropP99)
	fmt.Printf("  write on A → visible on B (probe, %d samples): p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
		rr.ProbeN, rr.ProbeP50, rr.ProbeP99, rr.ProbeMax)
	fmt.Printf("  sync bytes sent, all nodes: %.1f MB (%.0f B per write per peer)\n", sent/1e6, sent/max(st.Throughput*r.Elapsed*5, 1))
	return nil
}

func joinURLs(ns []*node) string {
	s := ""
	for i, u := range urls(ns) {
		if i > 0 {
			s += ","
		}
		s += u
	}
	return s
}

// probe writes a counter into its own session on one node and times how long until
// another node shows it.
type probe struct {
	ns    []*node
	token string
}

func call(method, url, token string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func newProbe(ctx context.Context, ns []*node) (*probe, error) {
	st, b, err := call("POST", ns[0].url()+"/v1/users", "", map[string]any{"username": "probe", "password": "probe-password",
		"profile": map[string]string{"first_name": "Probe"}})
	if err != nil || (st != 201 && st != 409) {
		return nil, fmt.Errorf("register: %d %s %v", st, b, err)
	}
	st, b, err = call("POST", ns[0].url()+"/v1/sessions", "", map[string]string{"username": "probe", "password": "probe-password"})
	if err != nil || st != 201 {
		return nil, fmt.Errorf("login: %d %s %v", st, b, err)
	}
	var lr struct{ Token string }
	json.Unmarshal(b, &lr)
	p := &probe{ns: ns, token: lr.Token}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range ns {
		for {
			if st, _, _ := call("GET", n.url()+"/v1/sessions/current", p.token, nil); st == 200 {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("probe session not on %s", n.name)
			}
			if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// run probes until ctx ends: write on node i, then poll node j every millisecond.
func (p *probe) run(ctx context.Context) []time.Duration {
	var out []time.Duration
	for k := 0; ctx.Err() == nil; k++ {
		a := p.ns[k%len(p.ns)]
		b := p.ns[(k+1+k/len(p.ns))%len(p.ns)]
		if a == b {
			continue
		}
		val := strconv.Itoa(k)
		st, _, err := call("PATCH", a.url()+"/v1/sessions/current", p.token, map[string]any{"data": map[string]int{"probe": k}})
		if err != nil || st != 200 {
			continue
		}
		acked := time.Now()
		for ctx.Err() == nil {
			st, body, err := call("GET", b.url()+"/v1/sessions/current", p.token, nil)
			if err == nil && st == 200 && bytes.Contains(body, []byte(`"probe":`+val+`}`)) {
				out = append(out, time.Since(acked))
				break
			}
			if time.Since(acked) > 10*time.Second {
				break
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}
