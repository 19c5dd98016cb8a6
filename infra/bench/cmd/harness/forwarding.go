package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Forwarding overhead: the same authenticated read (GET /v1/sessions/current with the
// user's bookmark) sent to a node that holds the caller's partition and to one that does
// not and forwards it to a holder over the node-to-node channel. The two alternate, pair
// by pair and in alternating order, one request at a time, so that whatever else the
// machine does falls on both alike. Each target node has a keep-alive net/http client of
// its own, made for this measurement and warmed by one unmeasured round, and every
// response is read in full, headers and body, as a client would read it.

// forwardingResult is the forwarding step of the placement part.
type forwardingResult struct {
	Nodes    int           `json:"nodes"`
	Replicas int           `json:"replicas"`
	Users    int           `json:"users"`
	Rounds   int           `json:"rounds"`
	Direct   durationStats `json:"holder"`     // served by the node asked
	Relayed  durationStats `json:"non_holder"` // forwarded by the node asked
	// Forwarded minus direct, pair by pair (both requests of one user, back to back).
	PairP50 float64 `json:"pair_difference_p50_ms"`
	PairP99 float64 `json:"pair_difference_p99_ms"`
	// Relayed.P99 − Direct.P99: the figure the target is about.
	P99Overhead float64 `json:"p99_overhead_ms"`
	// The nodes' CPU time (all six, every thread) per read, over blocks of reads that go
	// only through holders or only through non-holders, alternating: less sensitive to
	// the machine's load than latency. What the nodes use when idle (gossip, timers:
	// IdleCPU, in per cent of a core, measured over a pause before the blocks) is taken
	// out in proportion to each block's duration; the raw figures keep it.
	DirectCPU     float64 `json:"holder_cpu_us_per_read"`
	RelayedCPU    float64 `json:"non_holder_cpu_us_per_read"`
	DirectCPURaw  float64 `json:"holder_cpu_us_per_read_raw"`
	RelayedCPURaw float64 `json:"non_holder_cpu_us_per_read_raw"`
	IdleCPU       float64 `json:"idle_cpu_percent"`
	CPUReads      int     `json:"cpu_reads_per_kind"`
	Errors        int     `json:"errors"`
	// Answers whose X-Served-By / X-Sessiond-Forwarded-By did not say what was expected:
	// a holder's naming itself and no forwarder, a non-holder's naming a holder and itself.
	WrongHeaders int `json:"wrong_headers"`
	// Response header names a client gets from one path and not the other (Date and the
	// like aside), from the first pair.
	OnlyDirect  []string           `json:"headers_only_direct"`
	OnlyRelayed []string           `json:"headers_only_relayed"`
	Holders     map[int]int        `json:"users_by_holder_count"`
	Forwards    map[string]float64 `json:"forwarded_requests"`
	Load        float64            `json:"load_average"`
}

// fwdUser is a user of the measurement with the nodes that hold its partition and the
// others, as the nodes' answers showed them.
type fwdUser struct {
	u          *plUser
	holders    []int
	nonHolders []int
}

// measureForwarding runs the forwarding step against ns with users from the work step.
func measureForwarding(ctx context.Context, o options, ns []*node, users []*plUser, replicas int) (*forwardingResult, error) {
	f := &forwardingResult{Nodes: len(ns), Replicas: replicas, Rounds: o.fwdRounds, Holders: map[int]int{}}
	// Which nodes hold whom: a holder serves the read itself (no X-Sessiond-Forwarded-By).
	var fus []fwdUser
	for _, u := range users {
		if len(fus) == o.fwdUsers {
			break
		}
		if !u.ok {
			continue
		}
		fu := fwdUser{u: u}
		for j, n := range ns {
			st, b, h, err := requestHeaders(probec, "GET", n.url()+"/v1/sessions/current", u.token, u.bm, nil)
			if err != nil || st != 200 {
				return nil, fmt.Errorf("read %s on %s: %d %.200s %v", u.name, n.name, st, b, err)
			}
			if h.Get("X-Sessiond-Forwarded-By") == "" {
				fu.holders = append(fu.holders, j)
			} else {
				fu.nonHolders = append(fu.nonHolders, j)
			}
		}
		f.Holders[len(fu.holders)]++
		if len(fu.holders) == 0 || len(fu.nonHolders) == 0 {
			continue
		}
		fus = append(fus, fu)
	}
	f.Users = len(fus)
	if len(fus) == 0 {
		return nil, fmt.Errorf("no user with both a holder and a non-holder among %d nodes", len(ns))
	}
	clients := make([]*http.Client, len(ns))
	for i := range clients {
		clients[i] = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}
	}
	defer func() {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
	}()
	get := func(node int, u *plUser) (time.Duration, int, http.Header, error) {
		req, err := http.NewRequest("GET", ns[node].url()+"/v1/sessions/current", nil)
		if err != nil {
			return 0, 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+u.token)
		req.Header.Set(headerBookmark, u.bm)
		start := time.Now()
		resp, err := clients[node].Do(req)
		if err != nil {
			return 0, 0, nil, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), resp.StatusCode, resp.Header, err
	}
	var direct, relayed, pair []time.Duration
	var before []metrics
	for round := -1; round < o.fwdRounds; round++ { // round -1 warms the connections
		if round == 0 {
			f.Load = loadAvg()
			var err error
			if before, err = scrapeNodes(urls(ns)); err != nil {
				return nil, err
			}
		}
		for k, fu := range fus {
			if ctx.Err() != nil {
				return nil, errInterrupted
			}
			h := fu.holders[(round+1+k)%len(fu.holders)]
			x := fu.nonHolders[(round+1+k)%len(fu.nonHolders)]
			var d [2]time.Duration
			var hs [2]http.Header
			failed := false
			for step := range 2 {
				which := (step + k + round + 1) % 2 // 0: the holder, 1: the non-holder
				node := h
				if which == 1 {
					node = x
				}
				dur, st, hdr, err := get(node, fu.u)
				if err != nil || st != 200 {
					failed = true
					continue
				}
				d[which], hs[which] = dur, hdr
			}
			if round < 0 {
				continue
			}
			if failed {
				f.Errors++
				continue
			}
			if hs[0].Get("X-Served-By") != ns[h].name || hs[0].Get("X-Sessiond-Forwarded-By") != "" ||
				hs[1].Get("X-Sessiond-Forwarded-By") != ns[x].name || !slices.ContainsFunc(fu.holders, func(j int) bool { return ns[j].name == hs[1].Get("X-Served-By") }) {
				f.WrongHeaders++
			}
			if round == 0 && k == 0 {
				f.OnlyDirect, f.OnlyRelayed = headerDiff(hs[0], hs[1])
			}
			direct = append(direct, d[0])
			relayed = append(relayed, d[1])
			pair = append(pair, d[1]-d[0])
		}
	}
	// CPU per read: blocks of one read per user, all through holders or all through
	// non-holders, alternating, as many as the latency pairs had rounds.
	nodesCPU := func() int64 {
		var t int64
		for _, n := range ns {
			t += cpuNanos(n.p.pid())
		}
		return t
	}
	idle0, t0 := nodesCPU(), time.Now()
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return nil, err
	}
	idleRate := float64(nodesCPU()-idle0) / float64(time.Since(t0)) // CPU ns per ns
	f.IdleCPU = 100 * idleRate
	var cpu, wall [2]int64
	var reads [2]int
	for b := range 2 * o.fwdRounds {
		which := b % 2
		c0, b0 := nodesCPU(), time.Now()
		for k, fu := range fus {
			if ctx.Err() != nil {
				return nil, errInterrupted
			}
			node := fu.holders[(b+k)%len(fu.holders)]
			if which == 1 {
				node = fu.nonHolders[(b+k)%len(fu.nonHolders)]
			}
			if _, st, _, err := get(node, fu.u); err != nil || st != 200 {
				f.Errors++
				continue
			}
			reads[which]++
		}
		cpu[which] += nodesCPU() - c0
		wall[which] += int64(time.Since(b0))
	}
	if reads[0] > 0 && reads[1] > 0 {
		per := func(k int, net bool) float64 {
			c := float64(cpu[k])
			if net {
				c -= idleRate * float64(wall[k])
			}
			return c / 1e3 / float64(reads[k])
		}
		f.DirectCPU, f.RelayedCPU = per(0, true), per(1, true)
		f.DirectCPURaw, f.RelayedCPURaw = per(0, false), per(1, false)
		f.CPUReads = reads[0]
	}
	after, err := scrapeNodes(urls(ns))
	if err != nil {
		return nil, err
	}
	f.Forwards = counterDeltas("sessiond_forwarded_requests_total", "outcome", []string{"forwarded", "no_holder"}, after, before)
	f.Direct, f.Relayed = statsOf(direct), statsOf(relayed)
	slices.Sort(pair)
	if len(pair) > 0 {
		q := func(p float64) float64 { return float64(pair[min(int(p*float64(len(pair))), len(pair)-1)]) / 1e6 }
		f.PairP50, f.PairP99 = q(.5), q(.99)
	}
	f.P99Overhead = f.Relayed.P99 - f.Direct.P99
	return f, nil
}

// headerDiff returns the response header names only a has and only b has, leaving out
// those that name the node or differ by request anyway.
func headerDiff(a, b http.Header) (onlyA, onlyB []string) {
	skip := map[string]bool{"Date": true, "X-Sessiond-Forwarded-By": true}
	for k := range a {
		if _, ok := b[k]; !ok && !skip[k] {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok && !skip[k] {
			onlyB = append(onlyB, k)
		}
	}
	slices.Sort(onlyA)
	slices.Sort(onlyB)
	return onlyA, onlyB
}

func printForwarding(f *forwardingResult) {
	fmt.Printf("  forwarding, %d nodes at --replicas %d: %d users (by holders found: %v) × %d rounds, one request at a time, load %.1f\n",
		f.Nodes, f.Replicas, f.Users, f.Holders, f.Rounds, f.Load)
	fmt.Printf("    %-28s %7s %8s %8s %8s %8s\n", "GET /v1/sessions/current", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms")
	for _, r := range []struct {
		label string
		s     durationStats
	}{{"through a holder", f.Direct}, {"through a non-holder", f.Relayed}} {
		fmt.Printf("    %-28s %7d %8.3f %8.3f %8.3f %8.3f\n", r.label, r.s.N, r.s.P50, r.s.P90, r.s.P99, r.s.Max)
	}
	fmt.Printf("    p99 overhead %.3f ms (target ≤ 1 ms); pair by pair (non-holder − holder): p50 %.3f ms, p99 %.3f ms\n",
		f.P99Overhead, f.PairP50, f.PairP99)
	fmt.Printf("    nodes' CPU per read (all nodes, %d reads of each kind in alternating blocks, less their idle %.1f%% of a core): through a holder %.1f µs, through a non-holder %.1f µs (%.2f×; raw %.1f and %.1f µs)\n",
		f.CPUReads, f.IdleCPU, f.DirectCPU, f.RelayedCPU, f.RelayedCPU/max(f.DirectCPU, 1e-9), f.DirectCPURaw, f.RelayedCPURaw)
	fmt.Printf("    errors %d, wrong X-Served-By/X-Sessiond-Forwarded-By %d; nodes' forwarded requests %v (reads through a non-holder: %d); headers only through a holder %v, only through a non-holder %v\n",
		f.Errors, f.WrongHeaders, f.Forwards, f.Relayed.N+f.CPUReads, strings.Join(f.OnlyDirect, ","), strings.Join(f.OnlyRelayed, ","))
}
