package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Runner drives one chaos run: the deployment, the workload, the nemeses and the checks.
type Runner struct {
	cfg       Config
	d         *Deployment
	client    *Client
	lbURL     string // the load balancer's sticky entry point
	lbRRURL   string // its plain round-robin entry point
	rogueport int
	runID     string

	history  *History
	model    *Model
	prober   *Prober
	workload *Workload
	state    *nemesisState

	observer *User // a user of the suite's own (not the workload's): its token reads /v1/cluster
	results  []*ScenarioResult
	checks   []Check // checks outside the scenarios (load balancer, throttling)
	logf     func(format string, args ...any)
	// markers holds, for each node, an observer whose partition the node holds: the one
	// whose anchor session carries the markers written straight at that node (see
	// assignMarkers); observers are all of them, r.observer first.
	markers   map[string]*User
	observers []*User
	// checkerSeq numbers the checker's client addresses (checkerAddr).
	checkerSeq atomic.Int64
}

// Check is a named yes/no check with what it saw.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func randomKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// waitReady waits until each node answers /readyz with 200.
func (r *Runner) waitReady(ctx context.Context, timeout time.Duration, nodes ...*Node) bool {
	return waitUntil(ctx, timeout, 200*time.Millisecond, func() bool {
		for _, n := range nodes {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			res := r.client.Do(rctx, n.URL(), "GET", "/readyz", "", "", nil)
			cancel()
			if res.Status != 200 {
				return false
			}
		}
		return true
	})
}

// members returns the names of the members a node lists as alive or suspect.
func (r *Runner) members(ctx context.Context, n *Node, token string) ([]string, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res := r.client.Do(rctx, n.URL(), "GET", "/v1/cluster", token, "", nil)
	if res.Status != 200 {
		return nil, errStatus(res)
	}
	var body struct {
		Members []apiMember `json:"members"`
	}
	if err := res.Decode(&body); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range body.Members {
		if m.Status == "alive" || m.Status == "suspect" {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

func errStatus(r Result) error {
	if r.Err != nil {
		return r.Err
	}
	return fmt.Errorf("status %d: %s", r.Status, truncate(string(r.Body), 200))
}

// rejected scrapes sessiond_rejected_timestamps_total from every node that answers.
func (r *Runner) rejected(ctx context.Context) map[string]float64 {
	out := map[string]float64{}
	for _, n := range r.d.Nodes {
		if v, ok := r.metric(ctx, n, "sessiond_rejected_timestamps_total"); ok {
			out[n.Name] = v
		}
	}
	return out
}

// metric reads one unlabelled metric from a node's /metrics.
func (r *Runner) metric(ctx context.Context, n *Node, name string) (float64, bool) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res := r.client.Do(rctx, n.URL(), "GET", "/metrics", "", "", nil)
	if res.Status != 200 {
		return 0, false
	}
	sc := bufio.NewScanner(strings.NewReader(string(res.Body)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// marker writes a key in an observer's session straight at one node and follows it. The
// observer is one whose partition the node holds, so that the node itself serves the
// write (assignMarkers).
func (r *Runner) marker(ctx context.Context, n *Node, label string) *Op {
	obs := r.markers[n.Name]
	if obs == nil {
		obs = r.observer
	}
	s := obs.Anchor
	key := fmt.Sprintf("m%03d", s.NextKey)
	s.NextKey++
	enc, _ := json.Marshal(label)
	op := &Op{Kind: OpSet, User: obs.Name, Session: s.ID, Key: key, Value: string(enc)}
	// No bookmark: a marker must land on the node it is sent to, whatever the observer
	// wrote on the other side of a partition.
	r.workload.do(ctx, op, call{session: s, target: Target{Name: n.Name, URL: n.URL()}, method: "PATCH", path: "/v1/sessions/current",
		body: map[string]any{"data": map[string]any{key: label}}})
	if op.Outcome == Fail {
		return nil
	}
	r.model.mu.Lock()
	s.Keys[key] = &KeyState{Set: op, Uncertain: op.Outcome == Info || op.Skewed}
	r.model.mu.Unlock()
	if op.Outcome != OK {
		return nil
	}
	r.prober.KeySet(op, s.Token, key, string(enc))
	if op.ServedBy != n.Name {
		r.logf("marker %s %q written at %s was served by %s (forwarded by %q)", key, label, n.Name, op.ServedBy, op.ForwardedBy)
	}
	return op
}

// checkDivergence writes a marker on a node of each side of a partition and checks
// where each arrived: everywhere on its own side, nowhere on the other. "On a node" is
// what a read through the node's API shows: with --replicas a node that does not hold
// the marker's partition relays the read from a holder it reaches on its own side, and
// until membership sees the other side failed, it may first try a holder there and time
// out. So the check waits until every node saw its side's marker, up to until (the end
// of the fault, less a second), and at least divergenceWait, which a marker crossing the
// partition would have had to show; it reports how long its side took to arrive.
func (r *Runner) checkDivergence(ctx context.Context, res *ScenarioResult, label string, cut, rest []*Node, until time.Time) string {
	sleep(ctx, time.Second)
	in := r.marker(ctx, cut[0], label+"-inside")
	out := r.marker(ctx, rest[0], label+"-outside")
	if in == nil || out == nil {
		res.violate("a partition marker was not acknowledged")
		return "markers not acknowledged"
	}
	written := time.Now()
	// unreached returns a problem for each node that has not seen its own side's marker
	// (the nodes of rest the prober sees down aside).
	unreached := func(seenIn, seenOut []string) []string {
		var out []string
		late := fmt.Sprintf(" within %s", until.Sub(written).Round(time.Second))
		for _, n := range cut {
			if !slices.Contains(seenIn, n.Name) {
				out = append(out, fmt.Sprintf("the marker written on %s did not reach %s on the same side%s", cut[0].Name, n.Name, late))
			}
		}
		for _, n := range rest {
			if !r.prober.IsDown(n.Name) && !slices.Contains(seenOut, n.Name) {
				out = append(out, fmt.Sprintf("the marker written on %s did not reach %s on the same side%s", rest[0].Name, n.Name, late))
			}
		}
		return out
	}
	var took time.Duration
	for {
		if len(unreached(r.prober.SeenBy(in), r.prober.SeenBy(out))) == 0 {
			took = time.Since(written)
			break
		}
		if ctx.Err() != nil || time.Now().After(until) {
			break
		}
		sleep(ctx, 200*time.Millisecond)
	}
	sleep(ctx, divergenceWait-time.Since(written))
	seenIn, seenOut := r.prober.SeenBy(in), r.prober.SeenBy(out)
	problems := unreached(seenIn, seenOut)
	for _, n := range cut {
		if slices.Contains(seenOut, n.Name) {
			problems = append(problems, fmt.Sprintf("the marker written on %s crossed the partition to %s", rest[0].Name, n.Name))
		}
	}
	for _, n := range rest {
		if !r.prober.IsDown(n.Name) && slices.Contains(seenIn, n.Name) {
			problems = append(problems, fmt.Sprintf("the marker written on %s crossed the partition to %s", cut[0].Name, n.Name))
		}
	}
	for _, p := range problems {
		res.violate("%s", p)
	}
	if len(problems) > 0 {
		return "partition not as intended: " + strings.Join(problems, "; ")
	}
	return fmt.Sprintf("diverged: each marker reached its own side in %s, and after %s a write on %s was on %v only, a write on %s on %v only",
		took.Round(100*time.Millisecond), max(divergenceWait, took).Round(time.Second), cut[0].Name, seenIn, rest[0].Name, seenOut)
}

// divergenceWait is the least time checkDivergence gives a marker to cross a partition
// (replication takes milliseconds when nothing is cut).
const divergenceWait = 4 * time.Second

// entryPoints are the load balancer's two entry points, by target name.
func (r *Runner) entryPoints() []Target {
	return []Target{{Name: targetLB, URL: r.lbURL}, {Name: targetLBRR, URL: r.lbRRURL}}
}

// checkFailover sends requests through each entry point of the load balancer while nodes
// are down: every one must succeed, and none may be served by a node that is down.
func (r *Runner) checkFailover(ctx context.Context, res *ScenarioResult, down ...string) string {
	const n = 24
	var msgs []string
	for _, ep := range r.entryPoints() {
		ok, from := 0, map[string]int{}
		var bad []string
		for range n {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			out := r.client.Do(rctx, ep.URL, "GET", "/healthz", "", "", nil)
			cancel()
			if out.Status == 200 {
				ok++
				from[out.ServedBy]++
				if slices.Contains(down, out.ServedBy) {
					bad = append(bad, out.ServedBy)
				}
			}
		}
		var served []string
		for k, v := range from {
			served = append(served, fmt.Sprintf("%s×%d", k, v))
		}
		slices.Sort(served)
		msgs = append(msgs, fmt.Sprintf("%s: %d/%d answered 200, served by %s", ep.Name, ok, n, strings.Join(served, " ")))
		if ok < n {
			res.violate("load balancer (%s): %d of %d requests failed with %v down", ep.Name, n-ok, n, down)
		}
		if len(bad) > 0 {
			res.violate("load balancer (%s) sent %d requests to %v while down", ep.Name, len(bad), down)
		}
	}
	return "requests through the LB a few seconds after the fault: " + strings.Join(msgs, "; ")
}

// checkThrottle checks that the LB passes X-Forwarded-For and that the nodes, trusting
// only the LB, throttle logins per client. Pinned to one node by the LB's stickiness
// cookie, a client spends its 60 attempts a minute and gets 429, while another client
// behind the same LB, on the same node, still logs in.
func (r *Runner) checkThrottle(ctx context.Context) Check {
	c := Check{Name: "per-client login throttling behind the LB (X-Forwarded-For)"}
	const attacker, other = "203.0.113.66", "198.51.100.250"
	first := r.client.Do(ctx, r.lbURL, "GET", "/healthz", "", "", nil)
	var cookie string
	for _, ck := range (&http.Response{Header: first.Header}).Cookies() {
		if ck.Name == "sessiond_node" {
			cookie = ck.Name + "=" + ck.Value
		}
	}
	if cookie == "" {
		c.Detail = "the load balancer set no sessiond_node cookie"
		return c
	}
	login := func(xff, user, password string) Result {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return r.client.DoHeaders(rctx, r.lbURL, "POST", "/v1/sessions",
			map[string]string{"X-Forwarded-For": xff, "Cookie": cookie}, map[string]string{"username": user, "password": password})
	}
	// The limit is a sliding window over this minute and the previous one (the nodes'
	// windows are Unix minutes): failures that straddle a minute's end weigh less as the
	// next minute runs, so the right password may pass a moment after the 61st attempt
	// was refused, and the check would fail about once in twenty runs. The flood and the
	// logins after it take seconds: start them in a minute's first half.
	if s := time.Now().Unix() % 60; s >= 30 {
		select {
		case <-time.After(time.Duration(61-s) * time.Second):
		case <-ctx.Done():
			c.Detail = ctx.Err().Error()
			return c
		}
	}
	var statuses []int
	node := map[string]bool{}
	// With --replicas the node the cookie pins forwards each login to a holder of the
	// username's partition (another node for most names): the pinned node is the entry.
	for i := range 80 {
		res := login(attacker, fmt.Sprintf("nobody%s%d", r.runID, i), "not-the-password")
		statuses = append(statuses, res.Status)
		node[res.Entry()] = true
		if res.Status == 429 && len(statuses) > 60 {
			break
		}
	}
	firstLimited := slices.Index(statuses, 429)
	good := login(other, r.observer.Name, r.observer.Password)
	again := login(attacker, r.observer.Name, r.observer.Password)
	c.OK = firstLimited >= 60 && len(node) == 1 && good.Status == 201 && again.Status == 429 && good.Entry() == first.ServedBy
	c.Detail = fmt.Sprintf("pinned to %s by the LB cookie, client %s was refused (429) from attempt %d on (limit 60/min), even with the right password (%d, via %s); client %s, same LB, same node: %d (via %s)",
		first.ServedBy, attacker, firstLimited+1, again.Status, again.Entry(), other, good.Status, good.Entry())
	if len(node) != 1 {
		c.Detail += fmt.Sprintf(" (the logins reached %d nodes, want 1)", len(node))
	}
	return c
}

// checkLBBasics checks the UI and API through each entry point of the load balancer and
// that each spreads requests over every node.
func (r *Runner) checkLBBasics(ctx context.Context) Check {
	c := Check{Name: "UI and API through both entry points of the load balancer, spread over all nodes", OK: true}
	var details []string
	for _, ep := range r.entryPoints() {
		ui := r.client.Do(ctx, ep.URL, "GET", "/", "", "", nil)
		api := r.client.Do(ctx, ep.URL, "GET", "/v1/users/me", r.observer.Anchor.Token, "", nil)
		from := map[string]bool{}
		for range 24 {
			res := r.client.Do(ctx, ep.URL, "GET", "/healthz", "", "", nil)
			from[res.ServedBy] = true
		}
		isHTML := strings.Contains(strings.ToLower(string(ui.Body)), "<html")
		c.OK = c.OK && ui.Status == 200 && isHTML && api.Status == 200 && len(from) == len(r.d.Nodes)
		details = append(details, fmt.Sprintf("%s: GET / → %d (html %v); GET /v1/users/me → %d; 24 requests served by %d distinct nodes",
			ep.Name, ui.Status, isHTML, api.Status, len(from)))
	}
	c.Detail = strings.Join(details, "; ")
	return c
}

// checkRoundRobin checks that the round-robin entry point is not sticky: it sets no
// cookie, and a browser's cookie from the sticky entry point does not pin it either.
func (r *Runner) checkRoundRobin(ctx context.Context) Check {
	c := Check{Name: "round-robin entry point: never sticky"}
	first := r.client.Do(ctx, r.lbURL, "GET", "/healthz", "", "", nil)
	var cookie string
	for _, ck := range (&http.Response{Header: first.Header}).Cookies() {
		if ck.Name == "sessiond_node" {
			cookie = ck.Name + "=" + ck.Value
		}
	}
	set := 0
	from := map[string]bool{}
	for range 12 {
		h := map[string]string{}
		if cookie != "" {
			h["Cookie"] = cookie
		}
		res := r.client.DoHeaders(ctx, r.lbRRURL, "GET", "/healthz", h, nil)
		from[res.ServedBy] = true
		if res.Header.Get("Set-Cookie") != "" {
			set++
		}
	}
	c.OK = cookie != "" && set == 0 && len(from) == len(r.d.Nodes)
	c.Detail = fmt.Sprintf("the sticky entry point pinned a client to %s; with that cookie, 12 requests to the round-robin one were served by %d distinct nodes and set %d cookies",
		first.ServedBy, len(from), set)
	return c
}

// setup registers the users and waits until every node has them.
func (r *Runner) setup(ctx context.Context) error {
	users := r.cfg.Users
	var regular []*User
	for i := range users {
		// Every fourth user of each worker goes only through the round-robin entry point.
		u := &User{Name: fmt.Sprintf("u%s%02d", r.runID, i), Password: fmt.Sprintf("password-%s-%d", r.runID, i),
			Worker: i % r.cfg.Workers, RoundRobin: (i/r.cfg.Workers)%4 == 3, Profile: map[string][]*Op{}}
		regular = append(regular, u)
	}
	for i := 0; i+1 < len(regular); i += 2 {
		a, b := regular[i], regular[i+1]
		a.Partner, b.Partner = b, a
	}
	r.observer = &User{Name: "obs" + r.runID, Password: "observer-" + r.runID, Worker: 0, Profile: map[string][]*Op{}}
	all := append([]*User{r.observer}, regular...)
	var wg sync.WaitGroup
	errs := make(chan error, len(all))
	sem := make(chan struct{}, 4)
	for _, u := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := r.workload.Register(ctx, u); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	r.model.Users = all
	for i := 0; i+1 < len(regular); i += 2 {
		r.workload.convs[regular[i]] = newConversation(regular[i], regular[i+1])
	}
	r.observers = []*User{r.observer}
	if err := r.assignMarkers(ctx); err != nil {
		return err
	}
	if _, left, ok := r.prober.WaitConverged(ctx, time.Now(), 60*time.Second); !ok {
		return fmt.Errorf("setup: %d users or sessions not on every node after 60s", left)
	}
	return nil
}

// runScenario runs one nemesis and waits for the cluster to converge after the heal.
func (r *Runner) runScenario(ctx context.Context, s Scenario) *ScenarioResult {
	res := &ScenarioResult{Name: s.Name, Fault: s.Fault, Start: time.Now()}
	r.logf("scenario %s: %s", s.Name, s.Fault)
	r.state.setScenario(s.Name)
	s.Run(ctx, r, res)
	res.Healed = time.Now()
	r.state.setScenario("recovery:" + s.Name)
	for _, c := range r.crashed(ctx) {
		res.violate("%s", c)
	}
	if !r.waitReady(ctx, 120*time.Second, r.d.Nodes...) {
		res.violate("not every node ready 120s after the heal")
	}
	res.Converge, res.Unconverged, res.Converged = r.prober.WaitConverged(ctx, res.Healed, r.cfg.ConvergeTimeout)
	if !res.Converged {
		res.note("%d writes acknowledged before the heal were still not on every node %s after it: %s", res.Unconverged, r.cfg.ConvergeTimeout, r.prober.Stuck(res.Healed))
	} else if s := r.prober.Slowest(res.Healed); s != "" {
		res.note("%s", s)
	}
	r.state.setScenario("steady")
	res.Duration = time.Since(res.Start)
	for _, op := range r.history.Ops() {
		if op.Scenario != s.Name {
			continue
		}
		if op.ForwardedBy != "" {
			res.Forwarded++
		}
		cnt := &res.Direct
		switch op.Target {
		case targetLB:
			cnt = &res.LB
		case targetLBRR:
			cnt = &res.LBRR
		}
		switch op.Outcome {
		case OK:
			cnt.OK++
		case Fail:
			cnt.Fail++
		default:
			cnt.Info++
		}
	}
	r.logf("scenario %s: healed, converged in %s (%v); %s; %d violations", s.Name, res.Converge.Round(time.Millisecond), res.Converged, res.Divergence, len(res.Violations))
	for _, v := range res.Violations {
		r.logf("scenario %s: violation: %s", s.Name, v)
	}
	for _, n := range res.Notes {
		r.logf("scenario %s: %s", s.Name, n)
	}
	r.results = append(r.results, res)
	return res
}

// crashed finds the nodes whose containers exited although every fault was healed (no
// scenario leaves a node stopped), describes each, and starts it again, so that the rest
// of the run still tests something: a node that stopped on its own is a violation.
func (r *Runner) crashed(ctx context.Context) []string {
	var out []string
	for _, n := range r.d.Nodes {
		exited, code, panicked, err := r.d.Exited(ctx, n)
		if err != nil || !exited {
			continue
		}
		msg := fmt.Sprintf("%s exited on its own, status %d (its log is in compose.log)", n.Name, code)
		if panicked != "" {
			msg += ": " + panicked
		}
		r.logf("%s; starting it again", msg)
		if err := r.d.Start(ctx, n); err != nil {
			msg += fmt.Sprintf("; starting it again: %v", err)
		}
		r.prober.SetDown(n.Name, false)
		out = append(out, msg)
	}
	return out
}

// healAll puts every node back: running, unpaused, on every region network, true clock.
func (r *Runner) healAll(ctx context.Context) []string {
	var problems []string
	for _, n := range r.d.Nodes {
		st, err := r.d.State(ctx, n)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		switch st {
		case "paused":
			if err := r.d.Unpause(ctx, n); err != nil {
				problems = append(problems, err.Error())
			}
		case "exited", "created":
			if err := r.d.Start(ctx, n); err != nil {
				problems = append(problems, err.Error())
			}
		}
		att, err := r.d.Attached(ctx, n)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		var links []Link
		for _, net := range Regions {
			if !att[net] {
				links = append(links, Link{Node: n, Region: net})
			}
		}
		if len(links) > 0 {
			if err := r.d.Connect(ctx, links); err != nil {
				problems = append(problems, err.Error())
			}
		}
		r.prober.SetDown(n.Name, false)
	}
	return problems
}

// metricNow reads one metric from a node, with a short timeout of its own.
func (r *Runner) metricNow(n *Node, name string) (float64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return r.metric(ctx, n, name)
}
