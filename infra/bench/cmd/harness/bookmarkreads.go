package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
)

// The read+bookmark case of the HTTP comparison: the session read of the read mix, each
// request sending X-Sessiond-Bookmark with a bookmark every node already holds (its
// session's login), beside the same read without one. `sessiond bench` sends no bookmark,
// so the harness drives both itself, with the same kind of client (fasthttp keep-alive
// connections, one request in flight on each): its reads with and without the header
// alternate every bookmarkPhase on the same connections, so that their ratio compares
// the two under the same machine load, as the in-process benchmark's rounds do.

// bookmarkPhase is how long each kind of read runs before the other takes over: short,
// so that bursts of other jobs on the machine fall on both kinds alike; long beside the
// few requests in flight at a switch, which count for the kind they began as.
const bookmarkPhase = 250 * time.Millisecond

// bookmarkReadRun is the read+bookmark case on one target in one round.
type bookmarkReadRun struct {
	Target   string    `json:"target"`
	Round    int       `json:"round"`
	Plain    readPhase `json:"read"`          // without a bookmark
	Bookmark readPhase `json:"read_bookmark"` // with one the node holds
	Ratio    float64   `json:"ratio"`         // Bookmark.Throughput ÷ Plain.Throughput
	// The nodes' sessiond_bookmark_requests_total over the measured phases: how the
	// bookmarks were met (all "covered" when the node held them, as intended).
	Outcomes  map[string]float64 `json:"bookmark_requests"`
	ClientCPU float64            `json:"harness_cpu_percent"`
	Load      float64            `json:"load_average"`
}

// readPhase is one kind of read over all its phases.
type readPhase struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	Errors     int64   `json:"errors"`
	ServerCPU  float64 `json:"server_cpu_percent"`
	ServerUS   float64 `json:"server_cpu_us_per_request"`
}

// hostClient is the part of fasthttp.HostClient the case uses (reached through Fiber's
// client, as `sessiond bench` does, so that this module needs no fasthttp of its own).
type hostClient interface {
	Do(req *fiber.Request, resp *fiber.Response) error
}

func newHostClient(base string, conns int) (hostClient, error) {
	a := fiber.AcquireAgent()
	a.NoDefaultUserAgentHeader = true
	a.Request().SetRequestURI(base + "/")
	if err := a.Parse(); err != nil {
		return nil, fmt.Errorf("client for %s: %w", base, err)
	}
	hc := a.HostClient // the Agent is dropped; its HostClient lives on
	hc.MaxConns = conns + 8
	hc.ReadTimeout = 5 * time.Second
	hc.WriteTimeout = 5 * time.Second
	hc.MaxIdleConnDuration = time.Minute
	hc.MaxIdemponentCallAttempts = 1 // a retried request would be measured as one
	return hc, nil
}

// runBookmarkReads runs the read+bookmark case against a started sessiond target: one
// user per connection, registered on the first node and logged in round-robin over them;
// requests go round-robin over the nodes, as `sessiond bench` sends them.
func runBookmarkReads(ctx context.Context, o options, target string, urls []string, ps []*proc, round int) (bookmarkReadRun, error) {
	run := bookmarkReadRun{Target: target, Round: round}
	users := make([]login, o.connections)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 4) // a few at a time: a node hashes as many passwords at once as it has cores
	for w := range errs {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(users) {
					return
				}
				name := fmt.Sprintf("bmread-%d", i)
				bm, err := register(probec, urls[0], name)
				if err == nil {
					users[i], err = logIn(probec, urls[i%len(urls)], name, bm)
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range append(errs, ctx.Err()) {
		if err != nil {
			return run, err
		}
	}
	// Every node must hold each bookmark before measuring (the first such read may wait).
	for _, u := range users {
		if u.bookmark == "" {
			return run, fmt.Errorf("login of a bmread user carried no %s", headerBookmark)
		}
		for _, url := range urls {
			if st, b, _, err := request(probec, "GET", url+"/v1/sessions/current", u.token, u.bookmark, nil); err != nil || st != http.StatusOK {
				return run, fmt.Errorf("read with bookmark on %s: %d %s %v", url, st, b, err)
			}
		}
	}
	hcs := make([]hostClient, len(urls))
	for i, u := range urls {
		var err error
		if hcs[i], err = newHostClient(u, o.connections); err != nil {
			return run, err
		}
	}

	var mode atomic.Int32 // 0: without a bookmark, 1: with
	var measuring atomic.Bool
	stop := make(chan struct{})
	type tally struct {
		lat  [2][]time.Duration
		errs [2]int64
	}
	tallies := make([]tally, len(users))
	for w, u := range users {
		auth := "Bearer " + u.token
		wg.Go(func() {
			var req fiber.Request
			var resp fiber.Response
			for k := w; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				m, meas := mode.Load(), measuring.Load()
				req.Reset()
				resp.Reset()
				req.Header.SetMethod("GET")
				req.SetRequestURI(urls[k%len(urls)] + "/v1/sessions/current")
				req.Header.Set("Authorization", auth)
				if m == 1 {
					req.Header.Set(headerBookmark, u.bookmark)
				}
				start := time.Now()
				err := hcs[k%len(hcs)].Do(&req, &resp)
				d := time.Since(start)
				if !meas {
					continue
				}
				if err != nil || resp.StatusCode() != http.StatusOK {
					tallies[w].errs[m]++
					continue
				}
				tallies[w].lat[m] = append(tallies[w].lat[m], d)
			}
		})
	}
	serverCPU := func() float64 {
		var t float64
		for _, p := range ps {
			t += cpuSeconds(p.pid())
		}
		return t
	}
	// Phases alternate through the warm-up too, so that both paths are warm; measuring
	// runs an even number of them.
	phases := max(2, int(o.duration/bookmarkPhase)&^1)
	warm := int(o.warmup / bookmarkPhase)
	var elapsed, cpu [2]float64
	var before []metrics
	var self0 float64
	var err error
	for p := -warm; p < phases && err == nil; p++ {
		m := int32(p & 1)
		if p == 0 {
			run.Load = loadAvg()
			if before, err = scrapeNodes(urls); err != nil {
				break
			}
			self0 = cpuSeconds(os.Getpid())
			measuring.Store(true)
		}
		mode.Store(m)
		t0, c0 := time.Now(), serverCPU()
		err = sleepCtx(ctx, bookmarkPhase)
		if p >= 0 {
			elapsed[m] += time.Since(t0).Seconds()
			cpu[m] += serverCPU() - c0
		}
	}
	measuring.Store(false)
	self1 := cpuSeconds(os.Getpid())
	close(stop)
	wg.Wait()
	if err != nil {
		return run, err
	}
	after, err := scrapeNodes(urls)
	if err != nil {
		return run, err
	}
	run.Outcomes = counterDeltas("sessiond_bookmark_requests_total", "outcome", bookmarkOutcomes, after, before)
	run.ClientCPU = 100 * (self1 - self0) / (elapsed[0] + elapsed[1])
	for m, ph := range []*readPhase{&run.Plain, &run.Bookmark} {
		var lat []time.Duration
		for _, t := range tallies {
			lat = append(lat, t.lat[m]...)
			ph.Errors += t.errs[m]
		}
		s := statsOf(lat)
		ph.Throughput = float64(s.N) / elapsed[m]
		ph.P50, ph.P90, ph.P99, ph.Max = s.P50, s.P90, s.P99, s.Max
		ph.ServerCPU = 100 * cpu[m] / elapsed[m]
		if s.N > 0 {
			ph.ServerUS = cpu[m] * 1e6 / float64(s.N)
		}
	}
	if run.Plain.Throughput > 0 {
		run.Ratio = run.Bookmark.Throughput / run.Plain.Throughput
	}
	return run, nil
}

func scrapeNodes(urls []string) ([]metrics, error) {
	var out []metrics
	for _, u := range urls {
		m, err := scrape(u)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// printBookmarkRead prints one run of the case, in the form of the comparison's lines.
func printBookmarkRead(r bookmarkReadRun) {
	notCovered := 0.0
	for k, v := range r.Outcomes {
		if k != "covered" {
			notCovered += v
		}
	}
	fmt.Printf("  %-15s %-6s %8.0f req/s  p50 %6.2f  p99 %7.2f ms  errors %d  server %5.1f µs/req | same client, no bookmark %8.0f req/s  p50 %6.2f  p99 %7.2f ms  server %5.1f µs/req | ratio %.3f  bookmarks covered %.0f, not %.0f  harness CPU %3.0f%%  load %.1f\n",
		r.Target, "read+bm", r.Bookmark.Throughput, r.Bookmark.P50, r.Bookmark.P99, r.Bookmark.Errors, r.Bookmark.ServerUS,
		r.Plain.Throughput, r.Plain.P50, r.Plain.P99, r.Plain.ServerUS, r.Ratio, r.Outcomes["covered"], notCovered, r.ClientCPU, r.Load)
}

// medianBookmarkRead returns the run of target with the median ratio.
func medianBookmarkRead(runs []bookmarkReadRun, target string) (bookmarkReadRun, bool) {
	var sel []bookmarkReadRun
	for _, r := range runs {
		if r.Target == target {
			sel = append(sel, r)
		}
	}
	if len(sel) == 0 {
		return bookmarkReadRun{}, false
	}
	slices.SortFunc(sel, func(a, b bookmarkReadRun) int { return cmp.Compare(a.Ratio, b.Ratio) })
	return sel[len(sel)/2], true
}

// printBookmarkReads prints the case's table: the median run of each target.
func printBookmarkReads(res *results) {
	if len(res.HTTPBookmark) == 0 {
		return
	}
	fmt.Println()
	fmt.Printf("reads with a bookmark the node holds ÷ reads without (harness client, %s phases alternating; median run)\n", bookmarkPhase)
	fmt.Printf("%-44s %10s %8s %8s %8s %10s %8s %8s %8s %8s\n", "target", "read/s", "p50 ms", "p99 ms", "µs/req", "read+bm/s", "p50 ms", "p99 ms", "µs/req", "ratio")
	for _, t := range httpTargets {
		r, ok := medianBookmarkRead(res.HTTPBookmark, t.name)
		if !ok {
			continue
		}
		fmt.Printf("%-44s %10.0f %8.2f %8.2f %8.1f %10.0f %8.2f %8.2f %8.1f %8.3f\n", t.label,
			r.Plain.Throughput, r.Plain.P50, r.Plain.P99, r.Plain.ServerUS,
			r.Bookmark.Throughput, r.Bookmark.P50, r.Bookmark.P99, r.Bookmark.ServerUS, r.Ratio)
	}
}

// isSessiond reports whether a comparison target is sessiond (knows bookmarks).
func isSessiond(target string) bool { return strings.HasPrefix(target, "sessiond") }
