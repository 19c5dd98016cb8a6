// Command chaos runs the sessiond chaos suite against the three-region Docker deployment of
// infra/compose.yml: a workload of users, sessions, profiles and messages through the load
// balancer and straight at nodes; faults (kill -9, pause, region and node partitions,
// rolling restart, clock skew, a node with the wrong cluster key, a node joining a region
// while another leaves it); and a checker in the spirit of Jepsen's set-full. It brings
// its own copy of the deployment up under a project of its own and removes it
// (containers, networks, volumes) when it ends, however it ends.
//
//	go run ./infra/chaos --mode quick     # or full; see --help
//
// It needs the images of `task docker:build` (bash infra/images.sh). It prints one summary
// line and writes report.json, report.md, history.jsonl and the nodes' logs under
// build/chaos/<run>/. It exits 1 on any violation, 2 when it could not run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config is a run's shape; quick and full differ only in it.
type Config struct {
	Mode            string
	Users           int           // regular users (pairs that message each other)
	Workers         int           // concurrent clients
	Baseline        time.Duration // workload with no fault, before the first one
	ConvergeTimeout time.Duration // per heal, before it is reported as not converged
	SkewOffset      time.Duration // clock offset of the skewed node (beyond --max-skew 1m)
	Schedule        []Scenario
	Abuse           AbuseConfig // the abusive clients beside the workload
	// LagBound bounds ack → visible on every node (p99) for writes acknowledged while no
	// fault held, abuse running.
	LagBound time.Duration
}

func configFor(mode string) (Config, error) {
	switch mode {
	case "quick":
		return Config{Mode: mode, Users: 16, Workers: 4, Baseline: 5 * time.Second, ConvergeTimeout: 60 * time.Second,
			SkewOffset: 90 * time.Second, LagBound: 5 * time.Second,
			Abuse: AbuseConfig{Abusers: 2, NullEvery: time.Second, NullKeys: 100, ForgedEvery: 10 * time.Second,
				ForgedAhead: 59 * time.Second, Victims: 2, GuessEvery: 300 * time.Millisecond, Streams: 12,
				StreamHold: 5 * time.Second, ClockTolerance: 5 * time.Second},
			Schedule: []Scenario{
				clockSkew("ap-2", 90*time.Second, 10*time.Second),
				killNode("eu-1", 8*time.Second),
				pauseNode("us-2", 8*time.Second),
				partitionRegion("eu", 15*time.Second, nil),
				partitionNode("ap-1", 12*time.Second),
				rollingRestart(),
				rebalance("eu-2", 15*time.Second),
				wrongKey(8 * time.Second),
			}}, nil
	case "full":
		return Config{Mode: mode, Users: 32, Workers: 6, Baseline: 15 * time.Second, ConvergeTimeout: 120 * time.Second,
			SkewOffset: 5 * time.Minute, LagBound: 5 * time.Second,
			Abuse: AbuseConfig{Abusers: 3, NullEvery: 500 * time.Millisecond, NullKeys: 200, ForgedEvery: 5 * time.Second,
				ForgedAhead: 59 * time.Second, Victims: 3, GuessEvery: 250 * time.Millisecond, Streams: 12,
				StreamHold: 10 * time.Second, ClockTolerance: 5 * time.Second},
			Schedule: []Scenario{
				clockSkew("ap-2", 5*time.Minute, 30*time.Second),
				killNode("eu-1", 20*time.Second),
				pauseNode("us-2", 20*time.Second),
				partitionRegion("eu", 40*time.Second, nil),
				partitionNode("ap-1", 30*time.Second),
				rollingRestart(),
				rebalance("eu-2", 30*time.Second),
				wrongKey(20 * time.Second),
				partitionRegion("us", 40*time.Second, func(ctx context.Context, r *Runner, res *ScenarioResult) {
					n := r.d.Node("us-1")
					r.prober.SetDown(n.Name, true)
					if err := r.d.Kill(ctx, n); err != nil {
						res.violate("kill us-1: %v", err)
					}
					sleep(ctx, 10*time.Second)
					if err := r.d.Start(ctx, n); err != nil {
						res.violate("restart us-1: %v", err)
					}
					r.prober.SetDown(n.Name, false)
					res.note("us-1 killed with -9 and restarted inside the partition")
				}),
				pauseNode("eu-2", 15*time.Second),
				killRegion("ap", 20*time.Second),
				partitionRegion("ap", 30*time.Second, nil),
				partitionNode("eu-2", 20*time.Second),
			}}, nil
	}
	return Config{}, fmt.Errorf("--mode %q: want quick or full", mode)
}

func main() {
	os.Exit(chaos())
}

func chaos() int {
	mode := flag.String("mode", "quick", "quick (a few minutes) or full (every fault, longer)")
	composeFile := flag.String("compose-file", "infra/compose.yml", "the deployment")
	project := flag.String("project", "sessiond-chaos", "compose project of the run's own deployment")
	netPrefix := flag.String("net-prefix", "10.214", "first two octets of the deployment's subnets (task up uses 10.213)")
	portBase := flag.Int("port-base", 18080, "load balancer port on 127.0.0.1 (sticky entry point); nodes take the next six, its round-robin entry point +7, the joining node eu-3 +8, the rogue node +9")
	replicas := flag.String("replicas", os.Getenv("REPLICAS"), "holders of each key per region (compose variable REPLICAS; 0: every node holds everything); empty: compose.yml's default")
	outDir := flag.String("out", "build/chaos", "reports go to a directory per run under it")
	seed := flag.Uint64("seed", 0, "workload seed (0: from the clock); printed for replay")
	only := flag.String("only", "", "run only the scenarios whose names start with one of these, comma-separated (e.g. rebalance,kill9): to reproduce one")
	flag.Parse()

	cfg, err := configFor(*mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	if *only != "" {
		var picked []Scenario
		for _, s := range cfg.Schedule {
			for _, p := range strings.Split(*only, ",") {
				if p = strings.TrimSpace(p); p != "" && strings.HasPrefix(s.Name, p) {
					picked = append(picked, s)
					break
				}
			}
		}
		if len(picked) == 0 {
			fmt.Fprintf(os.Stderr, "chaos: --only %q matches no scenario of --mode %s\n", *only, *mode)
			return 2
		}
		cfg.Schedule = picked
	}
	if *replicas != "" {
		if n, err := strconv.Atoi(*replicas); err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "chaos: --replicas %q: want a number ≥ 0\n", *replicas)
			return 2
		}
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	start := time.Now()
	runID := strconv.FormatUint(rand.Uint64()%(36*36*36*36*36), 36)
	dir, err := filepath.Abs(filepath.Join(*outDir, start.Format("20060102-150405")+"-"+*mode))
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	logFile, err := os.Create(filepath.Join(dir, "chaos.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	defer logFile.Close()
	logf := func(format string, args ...any) {
		line := time.Now().Format("15:04:05.000") + " " + fmt.Sprintf(format, args...)
		fmt.Fprintln(os.Stderr, line)
		fmt.Fprintln(logFile, line)
	}
	logf("chaos %s: seed %d, run %s, reports in %s", *mode, *seed, runID, dir)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	d, err := newDeployment(ctx, *composeFile, *project, *netPrefix, *portBase, *replicas, dir)
	if err != nil {
		logf("cannot run: %v", err)
		return 2
	}
	d.log = logf
	r := &Runner{cfg: cfg, d: d, client: newClient(5 * time.Second), lbURL: fmt.Sprintf("http://127.0.0.1:%d", *portBase),
		lbRRURL: fmt.Sprintf("http://127.0.0.1:%d", *portBase+7), rogueport: *portBase + 9, runID: runID,
		history: &History{}, model: &Model{}, state: &nemesisState{scenario: "setup"}, logf: logf}
	// The prober and the workload get copies: the joiner joins their lists while it is in
	// the cluster, never d.Nodes.
	r.prober = newProber(r.client, slices.Clone(d.Nodes))
	r.workload = &Workload{client: r.client, lb: r.lbURL, lbRR: r.lbRRURL, nodes: slices.Clone(d.Nodes), history: r.history, model: r.model, prober: r.prober,
		convs: map[*User]*Conversation{}, run: runID, scenario: r.state.Scenario, skewed: r.state.Skewed, tokenAhead: r.state.tokenAhead}

	// Whatever happens from here on, the deployment goes away.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if err := d.Logs(cctx, filepath.Join(dir, "compose.log")); err != nil {
			logf("saving logs: %v", err)
		}
		if err := d.Down(cctx); err != nil {
			logf("tearing down: %v", err)
		}
		if left := d.Leftovers(cctx); len(left) > 0 {
			logf("LEFT BEHIND (remove by hand): %s", strings.Join(left, ", "))
		} else {
			logf("deployment %s removed (containers, networks, volumes)", d.Project)
		}
	}()

	rep, err := r.Run(ctx)
	if err != nil {
		logf("run failed: %v", err)
	}
	if rep == nil {
		return 2
	}
	if rep.Verdict == nil { // stopped early: still say what the clients saw, and the faults did
		v := &Verdict{}
		var violations []string
		v.Consistency, rep.ConsistencyBy, violations = consistencyOf(r.history.Ops())
		for _, x := range violations {
			v.violate("%s", x)
		}
		rep.Verdict = v
		rep.history = r.history.Ops() // history.jsonl: the evidence
		for _, op := range rep.history {
			if op.ForwardedBy != "" {
				rep.Forwarded++
			}
		}
		rep.Scenarios = r.results
		for _, s := range rep.Scenarios {
			if c := rep.ConsistencyBy[s.Name]; c != nil {
				s.Consistency = *c
			}
			for _, x := range s.Violations {
				rep.Violations = append(rep.Violations, s.Name+": "+x)
			}
		}
	}
	rep.Seed, rep.RunID, rep.Started, rep.Elapsed = *seed, runID, start, time.Since(start)
	rep.Compose = strings.Join(d.compose, " ")
	if err != nil {
		rep.Error = err.Error()
	}
	if werr := rep.Write(dir); werr != nil {
		logf("writing the report: %v", werr)
	}
	fmt.Println(rep.Summary(dir))
	if err != nil || !rep.Passed() {
		return 1
	}
	return 0
}

// newDeployment prepares the run's copy of the deployment: compose command, images,
// free ports, a fresh cluster key and the variables that place it beside `task up`.
func newDeployment(ctx context.Context, file, project, prefix string, portBase int, replicas, dir string) (*Deployment, error) {
	cc, err := composeCommand(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := run(ctx, nil, "docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		return nil, fmt.Errorf("no Docker engine: %w", err)
	}
	for _, img := range []string{"sessiond/sessiond:local", "sessiond/lb:local"} {
		if _, err := run(ctx, nil, "docker", "image", "inspect", img); err != nil {
			return nil, fmt.Errorf("image %s missing: run `task docker:build` (or bash infra/images.sh)", img)
		}
	}
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	absFile, _ := filepath.Abs(file)
	d := &Deployment{Project: project, File: absFile, compose: cc, NetPrefix: prefix, LogDir: dir}
	names := []struct {
		name, region string
		host         int
	}{{"eu-1", "eu", 11}, {"eu-2", "eu", 12}, {"us-1", "us", 21}, {"us-2", "us", 22}, {"ap-1", "ap", 31}, {"ap-2", "ap", 32}}
	for i, n := range names {
		d.Nodes = append(d.Nodes, &Node{Name: n.name, Region: n.region, Host: n.host, Port: portBase + 1 + i,
			EnvName: strings.ToUpper(strings.ReplaceAll(n.name, "-", "_"))})
	}
	d.Joiner = &Node{Name: "eu-3", Region: "eu", Host: 13, Port: portBase + 8, EnvName: "EU_3"}
	d.EnvFile = filepath.Join(dir, "compose.env")
	keyFile := filepath.Join(dir, "cluster.env")
	if err := os.WriteFile(keyFile, []byte("SESSIOND_CLUSTER_KEY="+randomKey()+"\n"), 0o600); err != nil {
		return nil, err
	}
	vars := []string{
		"NET_PREFIX=" + prefix,
		"SESSIOND_ENV_FILE=" + keyFile,
		"LB_PORT=" + strconv.Itoa(portBase),
		"LB_RR_PORT=" + strconv.Itoa(portBase+7),
		"ROGUE_PORT=" + strconv.Itoa(portBase+9),
		"ANTI_ENTROPY_EVERY=5s",
	}
	level := os.Getenv("LOG_LEVEL") // the nodes' --log-level; debug shows, for one, why a bookmark was not met
	if level == "" {
		level = "info"
	}
	vars = append(vars, "LOG_LEVEL="+level)
	if replicas != "" {
		vars = append(vars, "REPLICAS="+replicas)
	}
	for _, n := range slices.Concat(d.Nodes, []*Node{d.Joiner}) {
		vars = append(vars, n.EnvName+"_PORT="+strconv.Itoa(n.Port))
	}
	if err := os.WriteFile(d.EnvFile, []byte(strings.Join(vars, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	d.Env = vars
	// A stale run of ours may hold the ports: remove it first.
	if err := d.Down(ctx); err != nil {
		return nil, fmt.Errorf("removing a previous run's deployment: %w", err)
	}
	for p := portBase; p <= portBase+9; p++ {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return nil, fmt.Errorf("port %d is taken (choose others with --port-base): %w", p, err)
		}
		ln.Close()
	}
	return d, nil
}

// Run brings the deployment up, runs the workload through every scenario, heals, checks.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	rep := &Report{Mode: r.cfg.Mode, Config: r.cfg}
	t0 := time.Now()
	r.logf("deployment %s: compose up (%s)", r.d.Project, strings.Join(r.d.compose, " "))
	if err := r.d.Up(ctx); err != nil {
		return rep, err
	}
	if !r.waitReady(ctx, 120*time.Second, r.d.Nodes...) {
		return rep, errors.New("the nodes were not ready 120s after compose up")
	}
	// Ready nodes are not yet ready in the load balancer's eyes: its active health check
	// (every second) admits a node only at its next check. Wait until each entry point
	// has sent requests to every node, so that the checks of how it spreads them judge
	// the balancer, not the moment they ran.
	if !waitUntil(ctx, 30*time.Second, 200*time.Millisecond, func() bool {
		for _, ep := range r.entryPoints() {
			from := map[string]bool{}
			for range 2 * len(r.d.Nodes) {
				res := r.client.Do(ctx, ep.URL, "GET", "/readyz", "", "", nil)
				if res.Status != 200 {
					return false
				}
				from[res.ServedBy] = true
			}
			if len(from) < len(r.d.Nodes) {
				return false
			}
		}
		return true
	}) {
		return rep, errors.New("the load balancer (both entry points) did not send requests to every node 30s after the nodes were ready")
	}
	rep.StartupTime = time.Since(t0)
	r.logf("six nodes ready and the load balancer sending to each after %s", rep.StartupTime.Round(100*time.Millisecond))

	proberCtx, stopProber := context.WithCancel(ctx)
	proberDone := make(chan struct{})
	go func() { defer close(proberDone); r.prober.Run(proberCtx) }()
	defer func() { stopProber(); <-proberDone }()

	if err := r.setup(ctx); err != nil {
		return rep, err
	}
	rep.Replicas = r.replicas(ctx)
	r.logf("setup: %d users registered and signed in, on every node; --replicas %d", len(r.model.Users), rep.Replicas)
	r.checks = append(r.checks, r.checkLBBasics(ctx), r.checkRoundRobin(ctx), r.checkThrottle(ctx))
	for _, c := range r.checks {
		r.logf("check %q: ok=%v: %s", c.Name, c.OK, c.Detail)
	}

	var regular []*User
	for _, u := range r.model.Users {
		if !slices.Contains(r.observers, u) {
			regular = append(regular, u)
		}
	}
	abuse := newAbuse(r.cfg.Abuse, r.workload, r.d.Nodes, r.runID)
	if err := abuse.Setup(ctx, regular[:min(r.cfg.Abuse.Victims, len(regular))]); err != nil {
		return rep, err
	}
	r.logf("abuse: %d abusive accounts and a clock prober signed in; guessing the passwords of %v", r.cfg.Abuse.Abusers, abuse.rep.Victims)
	r.state.setScenario("steady")
	stopWorkers := r.workload.RunWorkers(ctx, r.cfg.Workers, regular, 1)
	stopAbuse := abuse.Run(ctx, 1)
	workersStopped := false
	defer func() {
		if !workersStopped {
			stopAbuse()
			stopWorkers()
		}
	}()
	sleep(ctx, r.cfg.Baseline)
	for _, s := range r.cfg.Schedule {
		if ctx.Err() != nil {
			break
		}
		r.runScenario(ctx, s)
	}
	stopAbuse()
	stopWorkers()
	workersStopped = true
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}

	// Final heal: everything up, connected and on its true clock; then wait for the writes
	// of a skewed node to become acceptable (less than --max-skew ahead) and arrive.
	r.state.setScenario("final")
	healed := time.Now()
	for _, c := range r.crashed(ctx) {
		rep.Violations = append(rep.Violations, "final heal: "+c)
	}
	if problems := r.healAll(ctx); len(problems) > 0 {
		rep.Violations = append(rep.Violations, "final heal: "+strings.Join(problems, "; "))
	}
	if !r.waitReady(ctx, 120*time.Second, r.d.Nodes...) {
		rep.Violations = append(rep.Violations, "not every node ready 120s after the final heal")
	}
	wait := r.cfg.ConvergeTimeout
	if end := r.state.lastSkewEnd(); !end.IsZero() {
		wait = max(wait, time.Until(end.Add(-time.Minute).Add(45*time.Second)))
	}
	r.logf("final heal done; waiting up to %s for every acknowledged write to be everywhere", wait.Round(time.Second))
	rep.FinalConverge, rep.FinalPending = r.waitAll(ctx, healed, wait)
	stopProber()
	<-proberDone

	v := r.Check(ctx, 1)
	if v.Failed() > 0 {
		r.logf("final check: %d violations on the first read; reading again in 15s", v.Failed())
		rep.FirstPass = v
		sleep(ctx, 15*time.Second)
		v = r.Check(ctx, 2)
	}
	// What the clients saw while the run went on: a second read cannot change it.
	var violations []string
	v.Consistency, rep.ConsistencyBy, violations = consistencyOf(r.history.Ops())
	for _, x := range violations {
		v.violate("%s", x)
	}
	rep.Verdict = v
	c := r.checkHandoff(ctx, 60*time.Second)
	r.logf("check %q: ok=%v: %s", c.Name, c.OK, c.Detail)
	r.checks = append(r.checks, c)
	rep.Placement = r.placementOf(ctx, r.d.Nodes)
	rep.Scenarios = r.results
	rep.Checks = r.checks
	rep.fill(r)
	rep.Abuse = abuse.Report(r.history.Ops())
	for _, c := range rep.Abuse.Checks(r.cfg.Abuse, rep.VisibleSteady.P99, r.cfg.LagBound) {
		r.logf("check %q: ok=%v: %s", c.Name, c.OK, c.Detail)
		rep.Checks = append(rep.Checks, c)
		if !c.OK {
			rep.Violations = append(rep.Violations, "check failed: "+c.Name+": "+c.Detail)
		}
	}
	return rep, nil
}

// waitAll waits until every acknowledged write (skewed ones included) is on every node.
func (r *Runner) waitAll(ctx context.Context, since time.Time, timeout time.Duration) (time.Duration, int) {
	deadline := time.Now().Add(timeout)
	for {
		pending := len(r.prober.Pending())
		if pending == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(since), pending
		}
		sleep(ctx, 100*time.Millisecond)
	}
}
