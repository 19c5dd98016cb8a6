// Command harness runs the benchmarks of BENCHMARKS.md (`task bench`): it starts every
// target on loopback ports — a bare Fiber handler, Fiber + JWT + Redis (appendfsync
// everysec and always), one sessiond node, a three-node sessiond cluster — runs
// `sessiond bench` with the same load against each (and, on sessiond, reads with and
// without a bookmark), drives authenticated reads with wrk against one node and the bare
// baseline (wrk.go; skipped when wrk is not installed), then measures replication in a six-node, three-region cluster
// (with sign-outs and cross-node reads with bookmarks alongside the paced writes),
// anti-entropy repair, memory and start-up time; and, asked for with --parts placement,
// per-node work, forwarding and propagation with --replicas (placement.go). It stops
// everything it started, on failure and on Ctrl-C too, and prints the figures and ratios;
// results.json in --out keeps them all.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	bin, out     string
	duration     time.Duration
	warmup       time.Duration
	connections  int
	users        int
	repeat       int
	parts        map[string]bool
	repRate      float64
	repDuration  time.Duration
	revokeRate   float64
	bookmarkRate float64
	repairUsers  int
	startupUsers int
	redisServer  string
	// The wrk part.
	wrk            string
	wrkThreads     int
	wrkConnections int
	wrkDuration    time.Duration
	wrkOther       string
	// The placement part.
	plSteps      map[string]bool
	plNodes      []int
	plReplicas   int
	plUsers      int
	plMessages   int
	fwdUsers     int
	fwdRounds    int
	plRate       float64
	plDuration   time.Duration
	propReplicas []int
}

// results is everything measured, as results.json holds it.
type results struct {
	Started       time.Time          `json:"started"`
	Cores         int                `json:"cores"`
	LoadBefore    float64            `json:"load_before"`
	LoadAfter     float64            `json:"load_after"`
	HTTP          []httpRun          `json:"http,omitempty"`
	HTTPBookmark  []bookmarkReadRun  `json:"http_read_bookmark,omitempty"`
	Ratios        map[string]float64 `json:"ratios,omitempty"`
	Wrk           *wrkResult         `json:"wrk,omitempty"`
	Replication   *replicationResult `json:"replication,omitempty"`
	Repair        *repairResult      `json:"repair,omitempty"`
	Memory        []memoryResult     `json:"memory,omitempty"`
	Startup       *startupResult     `json:"startup,omitempty"`
	Scaling       []scalingRun       `json:"patch_scaling,omitempty"`
	ScalingRatios []scalingRatio     `json:"patch_scaling_ratios,omitempty"`
	Placement     *placementResult   `json:"placement,omitempty"`
}

func main() {
	var o options
	parts := flag.String("parts", "http,wrk,scaling,replication,repair,memory,startup", "what to measure; also placement (not by default: ~10 min)")
	flag.StringVar(&o.bin, "bin", "build/bench", "`DIR` holding the sessiond and baseline binaries")
	flag.StringVar(&o.out, "out", "build/bench/run", "`DIR` for data, logs and results.json (emptied first)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measuring time of each HTTP run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load before each HTTP run")
	flag.IntVar(&o.connections, "connections", 32, "concurrent connections of each HTTP run")
	flag.IntVar(&o.users, "users", 200, "bench users of each HTTP run")
	flag.IntVar(&o.repeat, "repeat", 1, "run the HTTP, wrk and scaling comparisons this many times, interleaved; the median counts")
	flag.StringVar(&o.wrk, "wrk", "wrk", "wrk `BINARY` of the wrk part (skipped when it is not found)")
	flag.IntVar(&o.wrkThreads, "wrk-threads", 2, "wrk threads of the wrk part")
	flag.IntVar(&o.wrkConnections, "wrk-connections", 64, "wrk connections of the wrk part")
	flag.DurationVar(&o.wrkDuration, "wrk-duration", 8*time.Second, "length of each wrk run (whole seconds)")
	flag.StringVar(&o.wrkOther, "wrk-other", "", "`DIR` holding another sessiond build (another commit's) to run beside --bin's in the wrk part's rounds")
	flag.Float64Var(&o.repRate, "replication-rate", 1000, "writes per second during the replication run")
	flag.DurationVar(&o.repDuration, "replication-duration", 20*time.Second, "length of the replication run")
	flag.Float64Var(&o.revokeRate, "revocation-rate", 20, "sign-outs per second during the replication run (0: none)")
	flag.Float64Var(&o.bookmarkRate, "bookmark-read-rate", 20, "cross-node reads with a bookmark per second during the replication run (0: none)")
	flag.IntVar(&o.repairUsers, "repair-users", 10_000, "users (each with 8 sessions: 10 records) the repaired node misses")
	flag.IntVar(&o.startupUsers, "startup-users", 100_000, "users (each with 10 sessions) in the start-up and memory run")
	flag.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server binary")
	plSteps := flag.String("placement-steps", "work,forwarding,propagation", "placement: which of its steps to run (forwarding runs on the work step's six-node cluster)")
	plNodes := flag.String("placement-nodes", "3,6,9", "placement: sizes of the one-region clusters whose per-node work is compared")
	flag.IntVar(&o.plReplicas, "placement-replicas", 2, "placement: --replicas of the clusters compared with --replicas 0")
	flag.IntVar(&o.plUsers, "placement-users", 600, "placement: users of the write workload (register, log in, 5 patches, --placement-messages messages each)")
	flag.IntVar(&o.plMessages, "placement-messages", 2, "placement: messages each user of the write workload sends (0, 1 or 2)")
	flag.IntVar(&o.fwdUsers, "forwarding-users", 300, "placement: users whose reads go through a holder and a non-holder (on the 6-node cluster)")
	flag.IntVar(&o.fwdRounds, "forwarding-rounds", 10, "placement: measured rounds of one read pair per user")
	flag.Float64Var(&o.plRate, "placement-rate", 200, "placement: writes per second of the propagation runs")
	flag.DurationVar(&o.plDuration, "placement-duration", 20*time.Second, "placement: length of each propagation run")
	propReplicas := flag.String("propagation-replicas", "2,0,1", "placement: --replicas of the six-node, three-region propagation runs")
	flag.Parse()
	o.plSteps = map[string]bool{}
	for _, s := range strings.Split(*plSteps, ",") {
		o.plSteps[strings.TrimSpace(s)] = true
	}
	var err error
	if o.plNodes, err = intList(*plNodes); err != nil {
		fmt.Fprintln(os.Stderr, "harness: --placement-nodes:", err)
		os.Exit(2)
	}
	if o.propReplicas, err = intList(*propReplicas); err != nil {
		fmt.Fprintln(os.Stderr, "harness: --propagation-replicas:", err)
		os.Exit(2)
	}
	if o.plMessages < 0 || o.plMessages > 2 {
		fmt.Fprintln(os.Stderr, "harness: --placement-messages: 0, 1 or 2")
		os.Exit(2)
	}
	o.parts = map[string]bool{}
	for _, p := range strings.Split(*parts, ",") {
		o.parts[strings.TrimSpace(p)] = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = runAll(ctx, o)
	stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		fmt.Fprintln(os.Stderr, "logs:", filepath.Join(o.out, "logs"))
		os.Exit(1)
	}
}

func runAll(ctx context.Context, o options) error {
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	for _, d := range []string{"logs", "data"} {
		if err := os.MkdirAll(filepath.Join(o.out, d), 0o755); err != nil {
			return err
		}
	}
	res := &results{Started: time.Now().UTC(), Cores: runtime.NumCPU(), LoadBefore: loadAvg()}
	fmt.Printf("machine: %d cores, load average %.2f at start\n\n", res.Cores, res.LoadBefore)
	save := func() error {
		b, _ := json.MarshalIndent(res, "", "  ")
		return os.WriteFile(filepath.Join(o.out, "results.json"), b, 0o644)
	}
	steps := []struct {
		part string
		fn   func(context.Context, options, *results) error
	}{
		{"http", runHTTP}, {"wrk", runWrk}, {"scaling", runScaling}, {"replication", runReplication}, {"repair", runRepair},
		{"memory", runMemory}, {"startup", runStartup}, {"placement", runPlacement},
	}
	for _, s := range steps {
		if !o.parts[s.part] {
			continue
		}
		if err := s.fn(ctx, o, res); err != nil {
			save()
			return fmt.Errorf("%s: %w", s.part, err)
		}
		stopAll()
		if err := save(); err != nil {
			return err
		}
	}
	res.LoadAfter = loadAvg()
	fmt.Printf("\nload average %.2f at the end; results in %s\n", res.LoadAfter, filepath.Join(o.out, "results.json"))
	return save()
}

func (o options) sessiond() string { return filepath.Join(o.bin, "sessiond") }
func (o options) baseline() string { return filepath.Join(o.bin, "baseline") }
func (o options) logs() string     { return filepath.Join(o.out, "logs") }
func (o options) data(name string) string {
	return filepath.Join(o.out, "data", name)
}

// intList parses a comma-separated list of non-negative integers.
func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%q is not a list of non-negative integers", s)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	return out, nil
}
