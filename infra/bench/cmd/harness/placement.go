package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The placement part (--replicas N): how the work of each node shrinks as a region
// grows, what a forwarded request costs, and whether propagation keeps its target.
//
//  1. Per-node work: one region of n nodes (each of --placement-nodes) at
//     --placement-replicas and, side by side, at --replicas 0 (every node holds
//     everything), the same write workload through every node in turn; once the nodes'
//     sessiond_stored_keys stop changing, per node: writes applied (requests it served,
//     by X-Served-By, plus remote changes it applied), keys stored and the size of its
//     data file, each as a fraction of what a node holding everything has (the mean of
//     the --replicas 0 run of the same n) against the ideal replicas/n.
//  2. Forwarding overhead (forwarding.go), on the six-node cluster of step 1.
//  3. Propagation: six nodes in three regions, the same paced writes through every
//     node, at each of --propagation-replicas: p50/p99 of the nodes'
//     sessiond_replication_propagation_seconds.

// placementResult is everything the placement part measured.
type placementResult struct {
	Replicas    int                    `json:"replicas"`
	Work        []placementWork        `json:"work"`
	Forwarding  *forwardingResult      `json:"forwarding,omitempty"`
	Propagation []placementPropagation `json:"propagation"`
}

// placementWork is one cluster of step 1.
type placementWork struct {
	Nodes    int     `json:"nodes"`
	Replicas int     `json:"replicas"`
	Load     float64 `json:"load_average"`
	Users    int     `json:"users"`
	// Write requests answered 2xx, and those a node relayed to a holder.
	Writes      int64             `json:"write_requests"`
	Relayed     int64             `json:"relayed_by_a_non_holder"`
	Errors      map[string]int    `json:"errors"`
	ErrorBodies map[string]string `json:"error_examples,omitempty"`
	DriveSecs   float64           `json:"workload_seconds"`
	SettleSecs  float64           `json:"settle_seconds"`
	// After settling: sessions read back without every patch, conversations' message
	// counts short of what was sent.
	MissingPatches  int        `json:"sessions_missing_patches"`
	MissingMessages int        `json:"messages_missing"`
	PerNode         []nodeWork `json:"per_node"`
	// The nodes' sessiond_forwarded_requests_total by outcome, summed.
	Forwards map[string]float64 `json:"forwarded_requests"`
	// Fractions of a node that holds everything (filled in once both runs of n are in).
	Ideal    float64 `json:"ideal_fraction"`
	WorkFrac spread  `json:"writes_fraction"`
	KeysFrac spread  `json:"keys_fraction"`
	// The keys split: records (claims, users, sessions: one home each) and message log
	// entries (two homes, the sender's and the recipient's partitions).
	RecordsFrac  spread `json:"records_fraction"`
	MessagesFrac spread `json:"messages_fraction"`
	FileFrac     spread `json:"file_fraction"`
	// Partitions held (GET /v1/cluster) over the 4,096: the share placement assigned.
	ShareFrac spread `json:"partition_fraction"`
	// Keys stored on all nodes over the keys of a full copy: the copies of each key.
	Copies float64 `json:"copies_per_key"`
}

// nodeWork is one node's figures after settling.
type nodeWork struct {
	Name    string  `json:"name"`
	Served  int64   `json:"served_writes"`          // 2xx write responses naming it in X-Served-By
	Applied float64 `json:"remote_changes_applied"` // sessiond_remote_changes_total{outcome="applied"}
	Keys    float64 `json:"stored_keys"`
	// Message log entries among Keys (sessiond_stored_messages); the rest are records.
	Messages float64 `json:"stored_messages"`
	// The data file: its size (bbolt grows it in steps of 16 MiB, sparse) and the bytes
	// allocated to it on disk, which grow with what was written, less those allocated
	// when the node had started (before the workload).
	FileSize   int64 `json:"file_size"`
	FileBytes  int64 `json:"file_bytes_written"`
	Partitions int   `json:"partitions"`  // held, by /v1/cluster; 0 without placement
	Moving     int   `json:"moving_keys"` // stored without being held, to hand off (its /v1/cluster)
}

func (w nodeWork) writes() float64 { return float64(w.Served) + w.Applied }

// spread is the least, mean and greatest of a figure over the nodes.
type spread struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func spreadOf(vs []float64) spread {
	if len(vs) == 0 {
		return spread{}
	}
	s := spread{Min: math.Inf(1), Max: math.Inf(-1)}
	for _, v := range vs {
		s.Min, s.Max = min(s.Min, v), max(s.Max, v)
		s.Mean += v / float64(len(vs))
	}
	return s
}

// placementPropagation is one cluster of step 3.
type placementPropagation struct {
	Replicas    int                `json:"replicas"`
	Nodes       int                `json:"nodes"`
	TargetRate  float64            `json:"target_writes_per_second"`
	Writes      float64            `json:"writes_per_second"`
	WriteP50    float64            `json:"write_p50_ms"`
	WriteP99    float64            `json:"write_p99_ms"`
	WriteErrors int64              `json:"write_errors"`
	ErrorKinds  map[string]int64   `json:"error_kinds,omitempty"`
	Applied     float64            `json:"propagations"`
	P50         millis             `json:"propagation_p50_ms"`
	P90         millis             `json:"propagation_p90_ms"`
	P99         millis             `json:"propagation_p99_ms"`
	MaxBucket   millis             `json:"propagation_max_bucket_ms"`
	Forwards    map[string]float64 `json:"forwarded_requests"`
	SyncBytes   float64            `json:"sync_bytes_sent"`
	ServersCPU  float64            `json:"servers_cpu_percent"`
	Load        float64            `json:"load_average"`
}

func runPlacement(ctx context.Context, o options, res *results) error {
	pr := &placementResult{Replicas: o.plReplicas}
	res.Placement = pr
	fwdAt := o.plNodes[len(o.plNodes)-1]
	if slices.Contains(o.plNodes, 6) {
		fwdAt = 6
	}
	fmt.Printf("\n== placement: one region of %v nodes at --replicas %d and 0, %d users (register, log in, 5 patches, %d messages each) through every node in turn\n",
		o.plNodes, o.plReplicas, o.plUsers, o.plMessages)
	for _, n := range o.plNodes {
		for _, r := range []int{o.plReplicas, 0} {
			fwdHere := n == fwdAt && r == o.plReplicas && r > 0 && r < n
			if !o.plSteps["work"] && !(o.plSteps["forwarding"] && fwdHere) {
				continue // forwarding alone still needs its cluster and users
			}
			prefix := fmt.Sprintf("pl%dr%d", n, r)
			regions := make([]string, n)
			for i := range regions {
				regions[i] = "eu"
			}
			load := loadAvg()
			ns, err := startCluster(ctx, o, prefix, regions, true, "--replicas", strconv.Itoa(r))
			if err != nil {
				return fmt.Errorf("%s: %w", prefix, err)
			}
			w, wl, err := measureWork(ctx, o, ns, r, prefix)
			if err != nil {
				return fmt.Errorf("%s: %w", prefix, err)
			}
			w.Load = load
			pr.Work = append(pr.Work, *w)
			printWork(*w)
			if fwdHere && o.plSteps["forwarding"] {
				f, err := measureForwarding(ctx, o, ns, wl.users, r)
				if err != nil {
					return fmt.Errorf("forwarding: %w", err)
				}
				pr.Forwarding = f
				printForwarding(f)
			}
			stopNodes(ns)
		}
	}
	if o.plSteps["work"] {
		fractions(pr.Work)
		printWorkTable(pr.Work)
	}
	if !o.plSteps["propagation"] {
		return nil
	}

	// Two nodes a region, as in the replication part: --replicas 2 (or more) puts every
	// partition on both (the sharded code paths, the same copies as --replicas 0), and
	// --replicas 1 is what a smaller share does to pushes and their tail.
	regions := []string{"eu", "eu", "us", "us", "ap", "ap"}
	fmt.Printf("\n== placement propagation: %d nodes in 3 regions, %.0f writes/s for %s, at --replicas %v\n",
		len(regions), o.plRate, o.plDuration, o.propReplicas)
	for _, r := range o.propReplicas {
		p, err := measurePropagation(ctx, o, regions, r)
		if err != nil {
			return fmt.Errorf("propagation at --replicas %d: %w", r, err)
		}
		pr.Propagation = append(pr.Propagation, *p)
		fmt.Printf("  --replicas %d: writes %.0f/s (p50 %.1f ms, p99 %.1f ms, errors %d %v); propagation (%.0f applications) p50 %s  p90 %s  p99 %s  max ≤ %s (target p99 ≤ 100 ms); forwarded %v; sync %.1f MB; servers' CPU %.0f%%; load %.1f\n",
			r, p.Writes, p.WriteP50, p.WriteP99, p.WriteErrors, p.ErrorKinds, p.Applied, p.P50, p.P90, p.P99, p.MaxBucket,
			p.Forwards, p.SyncBytes/1e6, p.ServersCPU, p.Load)
	}
	return nil
}

// stopNodes stops the nodes at once (each leaves the cluster first).
func stopNodes(ns []*node) {
	var wg sync.WaitGroup
	for _, n := range ns {
		if n.p != nil {
			wg.Go(n.p.stop)
		}
	}
	wg.Wait()
}

// plUser is a user of the workload: its session and the bookmark of its latest response.
type plUser struct {
	name, token, bm string
	ok              bool // registered and logged in
}

// workload is what driving the writes saw.
type workload struct {
	users   []*plUser
	mu      sync.Mutex
	served  map[string]int64 // 2xx write responses by X-Served-By
	relayed int64            // … that carried X-Sessiond-Forwarded-By
	errors  map[string]int   // "operation status" → count
	bodies  map[string]string
	sent    []int // messages each user is in (sent or received)
}

// do sends a write through base as user u (token and bookmark as it holds them) and
// tallies the answer; it returns the body when the status was want.
func (w *workload) do(hc *http.Client, op, method, base, path string, u *plUser, body any, want int) ([]byte, bool) {
	st, b, h, err := requestHeaders(hc, method, base+path, u.token, u.bm, body)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil || st != want {
		kind := op + " "
		if err != nil {
			kind += "transport"
		} else {
			kind += strconv.Itoa(st)
		}
		w.errors[kind]++
		if _, ok := w.bodies[kind]; !ok {
			w.bodies[kind] = fmt.Sprintf("%.300s %v", b, err)
		}
		return nil, false
	}
	if bm := h.Get(headerBookmark); bm != "" {
		u.bm = bm
	}
	w.served[h.Get("X-Served-By")]++
	if h.Get("X-Sessiond-Forwarded-By") != "" {
		w.relayed++
	}
	return b, true
}

// eachUser runs fn for every user index, on par goroutines.
func eachUser(ctx context.Context, n, par int, fn func(i int)) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// messagePeers are the users user i writes to: two conversations that, for most users,
// live in other partitions than the sender's.
func messagePeers(i, users int) [2]int { return [2]int{(i + 1) % users, (i + 7) % users} }

// drive runs the workload through the nodes in turn: user i registers on node i, logs in
// on node i+1 and patches its session on nodes i+2 … i+6, each request sending the
// bookmark of the user's previous answer; then every user sends two messages (node
// i+7, i+8), or as many of them as messages says. Failures are counted, not retried.
func drive(ctx context.Context, ns []*node, users, messages int, prefix string) (*workload, error) {
	w := &workload{served: map[string]int64{}, errors: map[string]int{}, bodies: map[string]string{}, sent: make([]int, users)}
	for i := range users {
		w.users = append(w.users, &plUser{name: fmt.Sprintf("%s-u%d", prefix, i)})
	}
	at := func(i int) string { return ns[i%len(ns)].url() }
	// A few at a time: a node hashes as many passwords at once as it has cores.
	err := eachUser(ctx, users, 8, func(i int) {
		u := w.users[i]
		if _, ok := w.do(probec, "register", "POST", at(i), "/v1/users", u, map[string]any{"username": u.name,
			"password": password(u.name), "profile": map[string]string{"first_name": "Placement"}}, 201); !ok {
			return
		}
		b, ok := w.do(probec, "login", "POST", at(i+1), "/v1/sessions", u,
			map[string]string{"username": u.name, "password": password(u.name)}, 201)
		if !ok {
			return
		}
		var lr struct{ Token string }
		if json.Unmarshal(b, &lr) != nil || lr.Token == "" {
			w.mu.Lock()
			w.errors["login no token"]++
			w.mu.Unlock()
			return
		}
		u.token, u.ok = lr.Token, true
		for k := range 5 {
			w.do(probec, "patch", "PATCH", at(i+2+k), "/v1/sessions/current", u,
				map[string]any{"data": map[string]int{"p" + strconv.Itoa(k): k}}, 200)
		}
	})
	if err != nil {
		return w, err
	}
	err = eachUser(ctx, users, 8, func(i int) {
		u := w.users[i]
		if !u.ok {
			return
		}
		for m, to := range messagePeers(i, users) {
			if m >= messages {
				break
			}
			if !w.users[to].ok {
				continue
			}
			if _, ok := w.do(probec, "message", "POST", at(i+7+m), "/v1/messages", u,
				map[string]string{"to": w.users[to].name, "body": "placement " + strconv.Itoa(m)}, 201); ok {
				w.mu.Lock()
				w.sent[i]++
				w.sent[to]++
				w.mu.Unlock()
			}
		}
	})
	return w, err
}

// settle polls the nodes until their sessiond_stored_keys and applied remote changes
// have not changed for quiet, and returns the last scrapes and how long after the first
// poll they stopped changing.
func settle(ctx context.Context, ns []*node, timeout time.Duration) ([]metrics, float64, error) {
	const every, quiet = 250 * time.Millisecond, 3 * time.Second
	t0 := time.Now()
	var last string
	var since time.Time
	for {
		ms, err := scrapeNodes(urls(ns))
		if err != nil {
			return nil, 0, err
		}
		var key strings.Builder
		for _, m := range ms {
			fmt.Fprintf(&key, "%v/%v ", m.sum("sessiond_stored_keys"), m.sum(`sessiond_remote_changes_total{outcome="applied"}`))
		}
		if key.String() != last {
			last, since = key.String(), time.Now()
		} else if time.Since(since) >= quiet {
			return ms, since.Sub(t0).Seconds(), nil
		}
		if time.Since(t0) > timeout {
			return ms, 0, fmt.Errorf("stored keys still changing after %s: %s", timeout, last)
		}
		if err := sleepCtx(ctx, every); err != nil {
			return nil, 0, err
		}
	}
}

// clusterShares returns the partitions each member holds, by name, as GET /v1/cluster on
// base reports them to a signed-in user (none without placement).
func clusterShares(base, token string) (map[string]int, error) {
	st, b, err := call("GET", base+"/v1/cluster", token, nil)
	if err != nil || st != 200 {
		return nil, fmt.Errorf("GET /v1/cluster: %d %.200s %v", st, b, err)
	}
	var doc struct {
		Members []struct {
			Name       string `json:"name"`
			Partitions *int   `json:"partitions"`
		} `json:"members"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("GET /v1/cluster: %w", err)
	}
	out := map[string]int{}
	for _, m := range doc.Members {
		if m.Partitions != nil {
			out[m.Name] = *m.Partitions
		}
	}
	return out, nil
}

// movingKeys returns the keys the node at base stores without holding them, on their way
// to their holders (GET /v1/cluster's placement.moving.keys; 0 without placement).
func movingKeys(base, token string) (int, error) {
	st, b, err := call("GET", base+"/v1/cluster", token, nil)
	if err != nil || st != 200 {
		return 0, fmt.Errorf("GET /v1/cluster: %d %.200s %v", st, b, err)
	}
	var doc struct {
		Placement *struct {
			Moving struct {
				Keys int `json:"keys"`
			} `json:"moving"`
		} `json:"placement"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("GET /v1/cluster: %w", err)
	}
	if doc.Placement == nil {
		return 0, nil
	}
	return doc.Placement.Moving.Keys, nil
}

// fileBytes returns the size of a file and the bytes allocated to it on disk.
func fileBytes(path string) (size, allocated int64) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		allocated = st.Blocks * 512
	}
	return fi.Size(), allocated
}

// measureWork drives the workload through ns, waits for it to settle and reads every
// node's figures, then reads every session and conversation back.
func measureWork(ctx context.Context, o options, ns []*node, replicas int, prefix string) (*placementWork, *workload, error) {
	base := map[string]int64{}
	for _, n := range ns {
		_, base[n.name] = fileBytes(n.data + "/sessiond.db")
	}
	t0 := time.Now()
	wl, err := drive(ctx, ns, o.plUsers, o.plMessages, prefix)
	if err != nil {
		return nil, nil, err
	}
	w := &placementWork{Nodes: len(ns), Replicas: replicas, Users: o.plUsers, DriveSecs: time.Since(t0).Seconds(),
		Errors: wl.errors, ErrorBodies: wl.bodies, Relayed: wl.relayed}
	for _, v := range wl.served {
		w.Writes += v
	}
	ms, secs, err := settle(ctx, ns, 3*time.Minute)
	if err != nil {
		return nil, nil, err
	}
	w.SettleSecs = secs
	token := ""
	for _, u := range wl.users {
		if u.ok {
			token = u.token
			break
		}
	}
	shares, err := clusterShares(ns[0].url(), token)
	if err != nil {
		return nil, nil, err
	}
	w.Forwards = counterDeltas("sessiond_forwarded_requests_total", "outcome", []string{"forwarded", "no_holder"}, ms, nil)
	for i, n := range ns {
		size, alloc := fileBytes(n.data + "/sessiond.db")
		moving, err := movingKeys(n.url(), token)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", n.name, err)
		}
		w.PerNode = append(w.PerNode, nodeWork{Name: n.name, Served: wl.served[n.name],
			Applied: ms[i].sum(`sessiond_remote_changes_total{outcome="applied"}`), Keys: ms[i].sum("sessiond_stored_keys"),
			Messages: ms[i].sum("sessiond_stored_messages"),
			FileSize: size, FileBytes: alloc - base[n.name], Partitions: shares[n.name], Moving: moving})
	}
	if unknown := w.Writes - sumServed(w.PerNode); unknown != 0 {
		w.Errors["answered without a known X-Served-By"] += int(unknown)
	}
	// Read everything back (after the figures: a read may slide a session's idle expiry).
	err = eachUser(ctx, len(wl.users), 8, func(i int) {
		u := wl.users[i]
		if !u.ok {
			return
		}
		base := ns[(i+4)%len(ns)].url()
		st, b, _, err := request(probec, "GET", base+"/v1/sessions/current", u.token, u.bm, nil)
		var doc struct {
			Session struct {
				Data map[string]int `json:"data"`
			} `json:"session"`
		}
		missing := err != nil || st != 200 || json.Unmarshal(b, &doc) != nil
		for k := range 5 {
			if v, ok := doc.Session.Data["p"+strconv.Itoa(k)]; !ok || v != k {
				missing = true
			}
		}
		st, b, _, err = request(probec, "GET", base+"/v1/conversations", u.token, u.bm, nil)
		var conv struct {
			Conversations []struct {
				Count int `json:"count"`
			} `json:"conversations"`
		}
		got := 0
		if err == nil && st == 200 && json.Unmarshal(b, &conv) == nil {
			for _, c := range conv.Conversations {
				got += c.Count
			}
		}
		wl.mu.Lock()
		if missing {
			w.MissingPatches++
		}
		w.MissingMessages += max(wl.sent[i]-got, 0)
		wl.mu.Unlock()
	})
	return w, wl, err
}

func sumServed(ns []nodeWork) int64 {
	var t int64
	for _, n := range ns {
		t += n.Served
	}
	return t
}

// fractions fills in each run's figures as fractions of a node holding everything: the
// mean over the nodes of the --replicas 0 run of the same size.
func fractions(ws []placementWork) {
	for i := range ws {
		w := &ws[i]
		var full *placementWork
		for j := range ws {
			if ws[j].Nodes == w.Nodes && ws[j].Replicas == 0 {
				full = &ws[j]
			}
		}
		if full == nil {
			continue
		}
		w.Ideal = 1
		if w.Replicas > 0 && w.Replicas < w.Nodes {
			w.Ideal = float64(w.Replicas) / float64(w.Nodes)
		}
		per := func(w *placementWork, f func(nodeWork) float64) []float64 {
			var out []float64
			for _, n := range w.PerNode {
				out = append(out, f(n))
			}
			return out
		}
		frac := func(f func(nodeWork) float64) spread {
			total := spreadOf(per(full, f)).Mean
			vs := per(w, f)
			for k := range vs {
				vs[k] /= total
			}
			return spreadOf(vs)
		}
		w.WorkFrac = frac(nodeWork.writes)
		w.KeysFrac = frac(func(n nodeWork) float64 { return n.Keys })
		w.RecordsFrac = frac(func(n nodeWork) float64 { return n.Keys - n.Messages })
		w.MessagesFrac = frac(func(n nodeWork) float64 { return n.Messages })
		w.FileFrac = frac(func(n nodeWork) float64 { return float64(n.FileBytes) })
		var shares []float64
		for _, n := range w.PerNode {
			shares = append(shares, float64(n.Partitions)/4096)
		}
		if w.Replicas > 0 {
			w.ShareFrac = spreadOf(shares)
		}
		w.Copies = w.KeysFrac.Mean * float64(w.Nodes)
	}
}

func printWork(w placementWork) {
	fmt.Printf("  %d nodes, --replicas %d: %d writes answered (%d relayed by a non-holder) in %.1f s; settled %.1f s later; errors %v; read back: %d sessions missing patches, %d messages missing; forwarded %v; load %.1f\n",
		w.Nodes, w.Replicas, w.Writes, w.Relayed, w.DriveSecs, w.SettleSecs, w.Errors, w.MissingPatches, w.MissingMessages, w.Forwards, w.Load)
	for k, v := range w.ErrorBodies {
		fmt.Printf("    %s: %s\n", k, v)
	}
	for _, n := range w.PerNode {
		fmt.Printf("    %-10s served %5d  applied %6.0f  writes %6.0f  keys %6.0f (messages %6.0f, moving %d)  file %5.1f MiB, %7.0f KiB written  partitions %d\n",
			n.Name, n.Served, n.Applied, n.writes(), n.Keys, n.Messages, n.Moving, float64(n.FileSize)/(1<<20), float64(n.FileBytes)/1024, n.Partitions)
	}
}

func printWorkTable(ws []placementWork) {
	fmt.Println()
	fmt.Println("per-node work as a fraction of a node holding everything (mean of the --replicas 0 run of the same size): min / mean / max")
	fmt.Printf("%-6s %-9s %8s %22s %22s %22s %22s %22s %22s %7s\n", "nodes", "replicas", "ideal", "writes applied", "keys stored",
		"of which records", "of which messages", "data file", "partitions held", "copies")
	f := func(s spread) string { return fmt.Sprintf("%.3f / %.3f / %.3f", s.Min, s.Mean, s.Max) }
	for _, w := range ws {
		fmt.Printf("%-6d %-9d %8.3f %22s %22s %22s %22s %22s %22s %7.2f\n", w.Nodes, w.Replicas, w.Ideal, f(w.WorkFrac), f(w.KeysFrac),
			f(w.RecordsFrac), f(w.MessagesFrac), f(w.FileFrac), f(w.ShareFrac), w.Copies)
	}
	fmt.Println("target: every node within 25 % of replicas/n (ideal)")
}

// measurePropagation runs paced patches through every node of a cluster at --replicas r
// and reads the nodes' propagation histograms over the measured window.
func measurePropagation(ctx context.Context, o options, regions []string, r int) (*placementPropagation, error) {
	ns, err := startCluster(ctx, o, "plprop-r"+strconv.Itoa(r), regions, true, "--replicas", strconv.Itoa(r))
	if err != nil {
		return nil, err
	}
	defer stopNodes(ns)
	var before []metrics
	var scrapeErr error
	load := loadAvg()
	br, cpu, err := bench(ctx, o, "bench-plprop-r"+strconv.Itoa(r), procsOf(ns), func() { before, scrapeErr = scrapeNodes(urls(ns)) },
		"--target", joinURLs(ns), "--mix", "patch=1", "--rate", strconv.FormatFloat(o.plRate, 'f', 0, 64),
		"--connections", "16", "--duration", o.plDuration.String(), "--users", "120")
	if err != nil {
		return nil, err
	}
	if scrapeErr != nil || len(before) != len(ns) {
		return nil, fmt.Errorf("scrape at start of measuring: %v", scrapeErr)
	}
	after, err := scrapeNodes(urls(ns))
	if err != nil {
		return nil, err
	}
	h := histogramOf("sessiond_replication_propagation_seconds", after, before)
	st := br.Operations["patch"]
	p := &placementPropagation{Replicas: r, Nodes: len(ns), TargetRate: o.plRate, Writes: st.Throughput,
		WriteP50: st.P50, WriteP99: st.P99, WriteErrors: st.Errors, ErrorKinds: br.Errors, Applied: h.count(),
		P50: msOf(h.quantile(.5)), P90: msOf(h.quantile(.9)), P99: msOf(h.quantile(.99)), MaxBucket: msOf(h.maxBound()),
		Forwards:   counterDeltas("sessiond_forwarded_requests_total", "outcome", []string{"forwarded", "no_holder"}, after, before),
		ServersCPU: cpu, Load: load}
	for i := range ns {
		p.SyncBytes += after[i].sum("sessiond_sync_bytes_total", `direction="sent"`) - before[i].sum("sessiond_sync_bytes_total", `direction="sent"`)
	}
	return p, nil
}
