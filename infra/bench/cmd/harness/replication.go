package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"
)

type replicationResult struct {
	Nodes         int                 `json:"nodes"`
	Regions       int                 `json:"regions"`
	TargetRate    float64             `json:"target_writes_per_second"`
	Writes        float64             `json:"writes_per_second"`
	WriteP50      float64             `json:"write_p50_ms"`
	WriteP99      float64             `json:"write_p99_ms"`
	WriteErrors   int64               `json:"write_errors"`
	WriteBehind   int64               `json:"write_behind"` // … of which 503 behind (the bench sends each user's bookmark)
	Applied       float64             `json:"propagations"` // changes applied from a push, all nodes
	PropP50       float64             `json:"propagation_p50_ms"`
	PropP90       float64             `json:"propagation_p90_ms"`
	PropP99       float64             `json:"propagation_p99_ms"`
	ProbeN        int                 `json:"probe_samples"`
	ProbeP50      float64             `json:"probe_p50_ms"`
	ProbeP99      float64             `json:"probe_p99_ms"`
	ProbeMax      float64             `json:"probe_max_ms"`
	SyncBytes     float64             `json:"sync_bytes_sent"`
	BenchCPU      float64             `json:"bench_cpu_percent"`
	ServersCPU    float64             `json:"servers_cpu_percent"`
	Load          float64             `json:"load_average"`
	Revocation    *revocationResult   `json:"revocation,omitempty"`
	BookmarkReads *bookmarkReadResult `json:"bookmark_reads,omitempty"`
}

// revocationResult is the revoker's part of the replication run.
type revocationResult struct {
	TargetRate float64 `json:"target_sign_outs_per_second"`
	SignOuts   int     `json:"sign_outs"`
	Errors     int     `json:"sign_out_errors"`
	// From the nodes' sessiond_revocation_propagation_seconds: origin commit → applied by
	// push on each other node. MaxBucket is the upper bound of the highest bucket reached.
	Samples   float64 `json:"propagation_samples"`
	P50       millis  `json:"propagation_p50_ms"`
	P90       millis  `json:"propagation_p90_ms"`
	P99       millis  `json:"propagation_p99_ms"`
	MaxBucket millis  `json:"propagation_max_bucket_ms"`
	// Measured: sign-out acknowledged → every other node answers 401, polled without a
	// bookmark every revokerPoll.
	Refused    durationStats `json:"all_refused"`
	Unresolved int           `json:"all_refused_unresolved"`
	Polls      int64         `json:"polls"`
	PollErrors int64         `json:"poll_errors"`
}

// bookmarkReadResult is the bookmark probe's part of the replication run.
type bookmarkReadResult struct {
	TargetRate  float64        `json:"target_per_second"`
	Read        durationStats  `json:"read"` // the GET sending the PATCH's bookmark, answered 200
	Stale       int            `json:"stale_reads"`
	PatchErrors int            `json:"patch_errors"`
	ReadErrors  map[string]int `json:"read_errors"`
	// The nodes' counters over the window: every request that carried a bookmark, the
	// bench's too (BenchRequests: it sends each user's latest bookmark with every request).
	BenchRequests int64              `json:"bench_requests"`
	Outcomes      map[string]float64 `json:"bookmark_requests"`
	Fetches       map[string]float64 `json:"bookmark_fetches"`
	// sessiond_bookmark_wait_seconds: requests whose bookmark was not held at once.
	WaitSamples float64 `json:"wait_samples"`
	WaitP50     millis  `json:"wait_p50_ms"`
	WaitP99     millis  `json:"wait_p99_ms"`
}

// runReplication measures propagation in a six-node, three-region loopback cluster under
// paced writes: from the nodes' sessiond_replication_propagation_seconds histograms
// (origin commit → applied on each peer), and by a probe that writes on one node and
// polls another until the write is visible. Alongside the paced writes, a revoker signs
// sessions out (revoker.go) and a bookmark probe reads its writes on other nodes
// (bookmarkprobe.go).
func runReplication(ctx context.Context, o options, res *results) error {
	regions := []string{"eu", "eu", "us", "us", "ap", "ap"}
	fmt.Printf("\n== replication: %d nodes in 3 regions, %.0f writes/s for %s; %.0f sign-outs/s, %.0f cross-node reads with a bookmark/s\n",
		len(regions), o.repRate, o.repDuration, o.revokeRate, o.bookmarkRate)
	ns, err := startCluster(ctx, o, "rep", regions, true)
	if err != nil {
		return err
	}
	probe, err := newProbe(ctx, ns)
	if err != nil {
		return fmt.Errorf("probe user: %w", err)
	}
	var rev *revoker
	if o.revokeRate > 0 {
		// Enough sessions for the window and some (measuring may outlast --replication-duration a little).
		n := int(math.Ceil(o.revokeRate*o.repDuration.Seconds()*1.25)) + 5
		fmt.Printf("  setup: logging in %d sessions to sign out\n", n)
		if rev, err = newRevoker(ctx, ns, n); err != nil {
			return fmt.Errorf("revoker: %w", err)
		}
	}
	var bp *bookmarkProbe
	if o.bookmarkRate > 0 {
		if bp, err = newBookmarkProbe(ns); err != nil {
			return fmt.Errorf("bookmark probe: %w", err)
		}
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
	defer stopProbe()
	load := loadAvg()
	// The probes start once the bench has set its users up (its first writes are the
	// registrations' own propagation, not the paced load's).
	measuring := make(chan struct{})
	probeDone := during(probeCtx, measuring, func() []time.Duration { return probe.run(probeCtx) })
	var revDone <-chan *revocations
	if rev != nil {
		revDone = during(probeCtx, measuring, func() *revocations { return rev.run(probeCtx, ctx, o.revokeRate) })
	}
	var bpDone <-chan *bookmarkReads
	if bp != nil {
		bpDone = during(probeCtx, measuring, func() *bookmarkReads { return bp.run(probeCtx, o.bookmarkRate) })
	}
	r, serverCPU, err := bench(ctx, o, "bench-replication", procsOf(ns), func() { scrapeAll(); close(measuring) },
		"--target", joinURLs(ns), "--mix", "patch=1", "--rate", strconv.FormatFloat(o.repRate, 'f', 0, 64),
		"--connections", "64", "--duration", o.repDuration.String(), "--users", "120")
	stopProbe()
	samples := <-probeDone
	var revs *revocations
	if revDone != nil {
		revs = <-revDone // after its last pollers, so that the nodes' histograms hold their revocations
	}
	var bps *bookmarkReads
	if bpDone != nil {
		bps = <-bpDone
	}
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
		WriteP50: st.P50, WriteP99: st.P99, WriteErrors: st.Errors, WriteBehind: r.Behind, Applied: h.count(),
		PropP50: 1000 * h.quantile(.5), PropP90: 1000 * h.quantile(.9), PropP99: 1000 * h.quantile(.99),
		SyncBytes: sent, BenchCPU: r.CPU.Percent, ServersCPU: serverCPU, Load: load}
	if len(samples) > 0 {
		s := statsOf(samples)
		rr.ProbeN, rr.ProbeP50, rr.ProbeP99, rr.ProbeMax = s.N, s.P50, s.P99, s.Max
	}
	if revs != nil {
		hr := histogramOf("sessiond_revocation_propagation_seconds", after, before)
		rr.Revocation = &revocationResult{TargetRate: o.revokeRate, SignOuts: revs.signOuts, Errors: revs.errors,
			Samples: hr.count(), P50: msOf(hr.quantile(.5)), P90: msOf(hr.quantile(.9)), P99: msOf(hr.quantile(.99)),
			MaxBucket: msOf(hr.maxBound()), Refused: statsOf(revs.refused), Unresolved: revs.unresolved,
			Polls: revs.polls.Load(), PollErrors: revs.pollErrors.Load()}
	}
	if bps != nil {
		hw := histogramOf("sessiond_bookmark_wait_seconds", after, before)
		rr.BookmarkReads = &bookmarkReadResult{TargetRate: o.bookmarkRate, Read: statsOf(bps.reads), Stale: bps.stale,
			PatchErrors: bps.patchErrors, ReadErrors: bps.readErrors, BenchRequests: st.Requests,
			Outcomes:    counterDeltas("sessiond_bookmark_requests_total", "outcome", bookmarkOutcomes, after, before),
			Fetches:     counterDeltas("sessiond_bookmark_fetches_total", "result", []string{"ok", "error"}, after, before),
			WaitSamples: hw.count(), WaitP50: msOf(hw.quantile(.5)), WaitP99: msOf(hw.quantile(.99))}
	}
	res.Replication = rr
	fmt.Printf("  writes: %.0f/s (p50 %.1f ms, p99 %.1f ms, errors %d, of which 503 behind %d), servers' CPU %.0f%% of one core, load %.1f\n",
		rr.Writes, rr.WriteP50, rr.WriteP99, rr.WriteErrors, rr.WriteBehind, rr.ServersCPU, load)
	fmt.Printf("  propagation (nodes' histograms, %.0f applications): p50 %.1f ms  p90 %.1f ms  p99 %.1f ms   (target p99 ≤ 100 ms)\n",
		rr.Applied, rr.PropP50, rr.PropP90, rr.PropP99)
	fmt.Printf("  write on A → visible on B (probe, %d samples): p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
		rr.ProbeN, rr.ProbeP50, rr.ProbeP99, rr.ProbeMax)
	fmt.Printf("  sync bytes sent, all nodes: %.1f MB (%.0f B per write per peer)\n", sent/1e6, sent/max(st.Throughput*r.Elapsed*5, 1))
	if v := rr.Revocation; v != nil {
		fmt.Printf("  sign-outs on random nodes: %d (%.1f/s asked; %d failed), load %.1f\n", v.SignOuts, v.TargetRate, v.Errors, load)
		fmt.Printf("    revocation propagation (nodes' histograms, %.0f applications): p50 %s  p90 %s  p99 %s  max ≤ %s\n",
			v.Samples, v.P50, v.P90, v.P99, v.MaxBucket)
		fmt.Printf("    sign-out acknowledged → every other node refuses the token (polled every %s without a bookmark, %d samples): p50 %.1f ms  p99 %.1f ms  max %.1f ms  (%d not refused everywhere within %s; %d polls, %d neither 200 nor 401)\n",
			revokerPoll, v.Refused.N, v.Refused.P50, v.Refused.P99, v.Refused.Max, v.Unresolved, revokerGiveUp, v.Polls, v.PollErrors)
	}
	if v := rr.BookmarkReads; v != nil {
		readErrs := 0
		for _, n := range v.ReadErrors {
			readErrs += n
		}
		fmt.Printf("  PATCH on A → GET on B with its bookmark (%d samples, %.0f/s asked): p50 %.1f ms  p99 %.1f ms  max %.1f ms; stale reads %d; failed reads %d %v, failed patches %d; load %.1f\n",
			v.Read.N, v.TargetRate, v.Read.P50, v.Read.P99, v.Read.Max, v.Stale, readErrs, v.ReadErrors, v.PatchErrors, load)
		fmt.Printf("    nodes' counters, every request that carried a bookmark (the probe's %d reads and the bench's %d patches, which carry their user's latest): covered %.0f  waited %.0f  fetched %.0f  set_aside %.0f  behind %.0f; fetches ok %.0f, error %.0f\n",
			v.Read.N+readErrs, v.BenchRequests, v.Outcomes["covered"], v.Outcomes["waited"], v.Outcomes["fetched"], v.Outcomes["set_aside"], v.Outcomes["behind"],
			v.Fetches["ok"], v.Fetches["error"])
		fmt.Printf("    time meeting a bookmark not held at once (nodes' sessiond_bookmark_wait_seconds, the same requests; %.0f not held at once): p50 %s  p99 %s\n",
			v.WaitSamples, v.WaitP50, v.WaitP99)
	}
	return nil
}

// during runs fn once measuring is closed (nothing if ctx ends first) and delivers its
// result, or the zero value, on the channel returned.
func during[T any](ctx context.Context, measuring <-chan struct{}, fn func() T) <-chan T {
	ch := make(chan T, 1)
	go func() {
		var zero T
		select {
		case <-measuring:
			ch <- fn()
		case <-ctx.Done():
			ch <- zero
		}
	}()
	return ch
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
	st, b, _, err := request(httpc, method, url, token, "", body)
	return st, b, err
}

// request sends method url with an optional bearer token, X-Sessiond-Bookmark and JSON
// body, and returns the status, the body and the response's bookmark.
func request(hc *http.Client, method, url, token, bookmark string, body any) (int, []byte, string, error) {
	st, b, h, err := requestHeaders(hc, method, url, token, bookmark, body)
	return st, b, h.Get(headerBookmark), err
}

// requestHeaders is request returning every response header (nil without a response).
func requestHeaders(hc *http.Client, method, url, token, bookmark string, body any) (int, []byte, http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if bookmark != "" {
		req.Header.Set(headerBookmark, bookmark)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header, err
}

// headerBookmark is what sessiond's /v1/ responses say they showed, and what a request
// sends back to be answered only from state that includes it (docs/API.md, "Consistency").
const headerBookmark = "X-Sessiond-Bookmark"

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
