package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/edgetest"
	"github.com/sessiond/sessiond/edge/loadgen"
)

// startBenchNode starts a node in-process (edgetest.Start), with login and sign-up
// throttling loose enough for the bench's users and a login mix, and stops it when the
// test ends.
func startBenchNode(tb testing.TB) *edge.Node {
	tb.Helper()
	return edgetest.Start(tb, "bench-test", func(cfg *edge.Config) {
		cfg.LoginPerAccount = 1_000_000
		cfg.LoginPerAddress = 1_000_000
		cfg.SignInsPerAccount = 1_000_000 // a login mix signs each user in again and again
		cfg.SignupsPerAddress = 1_000_000 // the bench registers its users from one address
		// The tool is under test, not the hashing bound: on a loaded machine a login may
		// wait for a hashing worker longer than the default second, and get a 503
		// (edgetest.Start lets it wait a minute).
		cfg.PasswordQueue = 4096
	})
}

func TestBenchJSON(t *testing.T) {
	n := startBenchNode(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--target", "http://" + n.HTTPAddr(), "--duration", "2s",
		"--connections", "4", "--users", "3", "--json",
		"--mix", "login=1,read=10,patch=5,send=2,conversation=2"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("sessiond bench exited %d; stderr:\n%s", code, stderr.String())
	}
	var res struct {
		Operations map[string]struct {
			Requests   int64   `json:"requests"`
			Errors     int64   `json:"errors"`
			Throughput float64 `json:"throughput"`
			P50        float64 `json:"p50_ms"`
			P99        float64 `json:"p99_ms"`
			Max        float64 `json:"max_ms"`
		} `json:"operations"`
		Total  struct{ Requests, Errors int64 } `json:"total"`
		Errors map[string]int64                 `json:"errors"`
		Behind *int64                           `json:"behind"`
		CPU    struct {
			Percent float64 `json:"percent"`
			Cores   int     `json:"cores"`
		} `json:"cpu"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	for _, op := range []string{"login", "read", "patch", "send", "conversation"} {
		st, ok := res.Operations[op]
		if !ok {
			t.Errorf("operations[%q] missing; output:\n%s", op, stdout.String())
			continue
		}
		if st.Requests == 0 || st.Throughput <= 0 {
			t.Errorf("operations[%q]: requests=%d throughput=%v, want both > 0", op, st.Requests, st.Throughput)
		}
		if st.Errors != 0 {
			t.Errorf("operations[%q].errors=%d, want 0", op, st.Errors)
		}
		if st.P50 <= 0 || st.P50 > st.P99 || st.P99 > st.Max {
			t.Errorf("operations[%q]: p50=%v p99=%v max=%v, want 0 < p50 ≤ p99 ≤ max", op, st.P50, st.P99, st.Max)
		}
	}
	if res.Total.Errors != 0 || len(res.Errors) != 0 {
		t.Errorf("errors: total=%d by kind %v, want none", res.Total.Errors, res.Errors)
	}
	if res.Behind == nil || *res.Behind != 0 {
		t.Errorf("behind=%v, want 0 (and present)", res.Behind)
	}
	if res.CPU.Cores <= 0 {
		t.Errorf("cpu.cores=%d, want > 0", res.CPU.Cores)
	}
	if !strings.Contains(stderr.String(), "setup: register 3 users") {
		t.Errorf("stderr lacks the setup lines:\n%s", stderr.String())
	}
}

func TestBenchTable(t *testing.T) {
	n := startBenchNode(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--target", n.HTTPAddr(), "--requests", "200",
		"--connections", "2", "--users", "2", "--mix", "read=3,patch=1", "--quiet"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("sessiond bench exited %d; stderr:\n%s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"operation", "read", "patch", "total", "errors: none", "behind: none", "load generator CPU"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// TestBenchTwoTargets runs the bench over a two-node cluster right after it formed: each
// user registers on one node and logs in on the other at once, then the mix alternates
// nodes. The users' bookmarks, not retries, make every request see the user's writes, so
// nothing fails.
func TestBenchTwoTargets(t *testing.T) {
	keys, err := edge.ParseClusterKeys(edge.NewClusterKey())
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(name string) edge.Config {
		c := edge.DefaultConfig()
		c.NodeName, c.DataDir, c.ClusterKeys, c.FastGossip = name, t.TempDir(), keys, true
		c.HTTPAddr, c.GossipAddr, c.SyncAddr = "127.0.0.1:0", freeAddr(t), "127.0.0.1:0"
		c.LoginPerAccount, c.LoginPerAddress, c.SignInsPerAccount = 1_000_000, 1_000_000, 1_000_000
		// Errors are what the test counts: on a loaded machine a login may wait longer than
		// the default second for the one hashing worker (CI saw two 503s so).
		c.PasswordWait = 30 * time.Second
		return c
	}
	start := func(c edge.Config) *edge.Node {
		n, err := edge.NewNode(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.Close(context.Background()); err != nil {
				t.Errorf("close node %s: %v", c.NodeName, err)
			}
		})
		return n
	}
	ca := cfg("bench-a")
	a := start(ca)
	cb := cfg("bench-b")
	cb.Join = []string{ca.GossipAddr}
	b := start(cb)
	for deadline := time.Now().Add(30 * time.Second); !b.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bench-b not ready after 30s")
		}
	}

	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--target", a.HTTPAddr() + "," + b.HTTPAddr(), "--requests", "600",
		"--connections", "4", "--users", "4", "--json",
		"--mix", "login=1,read=4,patch=4,send=2,conversation=2"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("sessiond bench exited %d; stderr:\n%s", code, stderr.String())
	}
	var res struct {
		Total  struct{ Requests, Errors int64 } `json:"total"`
		Errors map[string]int64                 `json:"errors"`
		Behind int64                            `json:"behind"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	if res.Total.Requests != 600 {
		t.Errorf("total.requests=%d, want 600", res.Total.Requests)
	}
	if res.Total.Errors != 0 || len(res.Errors) != 0 || res.Behind != 0 {
		t.Errorf("errors: total=%d by kind %v, behind=%d; want none", res.Total.Errors, res.Errors, res.Behind)
	}
	if !strings.Contains(stderr.String(), "setup: check sessions on every target of 4 users") {
		t.Errorf("stderr lacks the check of sessions on every target:\n%s", stderr.String())
	}
}

func TestBenchFlags(t *testing.T) {
	for name, args := range map[string][]string{
		"ErrUnknownOp":     {"--mix", "read=1,fly=2"},
		"ErrNoTarget":      {"--target", ""},
		"ErrOneUser":       {"--users", "1"},
		"ErrZeroDuration":  {"--duration", "0s"},
		"ErrUnexpectedArg": {"extra"},
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(append([]string{"bench"}, args...), &stdout, &stderr); code != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
		})
	}
}

func TestBenchSeed(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"bench", "seed", "--data", dir, "--users", "50", "--sessions-per-user", "3", "--batch", "20"}, &stdout, &stderr); code != 0 {
		t.Fatalf("seed exited %d: %s", code, stderr.String())
	}
	var res struct{ Users, Sessions, Records int }
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("seed output: %v\n%s", err, stdout.String())
	}
	if res.Users != 50 || res.Sessions != 150 || res.Records != 250 {
		t.Fatalf("seed wrote users=%d sessions=%d records=%d, want 50, 150, 250", res.Users, res.Sessions, res.Records)
	}
	// The node opens the seeded file and a seeded user signs in.
	cfg := edge.DefaultConfig()
	cfg.DataDir, cfg.HTTPAddr, cfg.GossipAddr, cfg.SyncAddr = dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	n, err := edge.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	stdout.Reset()
	if code := run([]string{"bench", "--target", n.HTTPAddr(), "--requests", "20", "--connections", "2",
		"--users", "2", "--user-prefix", "seed", "--mix", "read=1", "--json", "--quiet"}, &stdout, &stderr); code != 0 {
		t.Fatalf("bench against seeded users exited %d: %s", code, stderr.String())
	}
}

// BenchmarkNode runs the bench tool against an in-process node, so that one CPU profile
// covers the node (and, separately identifiable, the load generator):
//
//	go test ./edge/cmd/sessiond -run '^$' -bench Node/read -benchtime 1x -cpuprofile cpu.out
//	go tool pprof -top cpu.out
func BenchmarkNode(b *testing.B) {
	for _, mix := range []string{"read=1", "patch=1"} {
		b.Run(mix[:len(mix)-2], func(b *testing.B) {
			n := startBenchNode(b)
			for range b.N {
				var stdout, stderr bytes.Buffer
				if code := run([]string{"bench", "--target", n.HTTPAddr(), "--duration", "5s", "--connections", "32",
					"--users", "50", "--mix", mix, "--json", "--quiet"}, &stdout, &stderr); code != 0 {
					b.Fatalf("bench exited %d: %s", code, stderr.String())
				}
				var res struct {
					Total struct {
						Throughput float64 `json:"throughput"`
					} `json:"total"`
				}
				if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(res.Total.Throughput, "req/s")
			}
		})
	}
}

// BenchmarkRepair starts a node holding 100,000 records (seeded straight into its file)
// and a second, empty node that joins it, in one process, and times the second node's
// catch-up by anti-entropy, so that one CPU profile covers both ends of the repair:
//
//	go test ./edge/cmd/sessiond -run '^$' -bench Repair -benchtime 1x -cpuprofile cpu.out
//	go tool pprof -top -tagignore phase=seed cpu.out
func BenchmarkRepair(b *testing.B) {
	key := edge.NewClusterKey()
	keys, err := edge.ParseClusterKeys(key)
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		b.StopTimer()
		dirA := b.TempDir()
		// Labelled, so that a profile can leave the seeding out: -tagignore phase=seed.
		pprof.Do(context.Background(), pprof.Labels("phase", "seed"), func(ctx context.Context) {
			if _, err := loadgen.Seed(ctx, loadgen.SeedConfig{
				Path: filepath.Join(dirA, "sessiond.db"), Users: 10_000, SessionsPerUser: 8}); err != nil {
				b.Fatal(err)
			}
		})
		cfg := func(name, dir string) edge.Config {
			c := edge.DefaultConfig()
			c.NodeName, c.DataDir, c.ClusterKeys, c.FastGossip = name, dir, keys, true
			c.HTTPAddr, c.GossipAddr, c.SyncAddr = "127.0.0.1:0", freeAddr(b), "127.0.0.1:0"
			return c
		}
		ca := cfg("a", dirA)
		a, err := edge.NewNode(ca)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		cb := cfg("b", b.TempDir())
		cb.Join = []string{ca.GossipAddr}
		cb.CatchUpTimeout = 5 * time.Minute
		nb, err := edge.NewNode(cb)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := nb.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		for !nb.Ready() {
			time.Sleep(5 * time.Millisecond)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/repair")
		b.StopTimer()
		nb.Close(context.Background())
		a.Close(context.Background())
	}
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
