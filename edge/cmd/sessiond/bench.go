package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sessiond/sessiond/edge/loadgen"
)

const benchUsage = `sessiond bench — measure a sessiond cluster (or a single node) under a workload mix.

Usage:
  sessiond bench --target URL[,URL…] [flags]

It registers --users users through the API (reusing them if a previous run did), logs each
in (on another target than it registered on, with several), and with several targets reads
every session once on every one. Then it runs --connections concurrent requests,
round-robin over the targets, for --duration or --requests, printing a progress line each
second on stderr, and reports throughput and latency percentiles per operation, errors by
kind, how many responses were behind, and its own CPU use.

Each user is one client: its requests, whichever connection makes them, carry its latest
X-Sessiond-Bookmark, so every node shows it its own writes (waiting for them or fetching
them if it must); the tool itself never waits for replication or retries around it. While
measuring nothing is retried: a "401 unauthorized" is a session that ended (the per-user
session cap revokes the oldest), and a "503 behind" is a node that could not catch up with
the user's bookmark in time (both are errors; the report counts the behind ones on a line
of their own). Setup heeds Retry-After (up to 5 s) on 429 and 503 (behind, or
unavailable: a node's password-hashing queue was full), 10 times at most.

Operations (--mix NAME=WEIGHT,…): login (POST /v1/sessions), read (GET
/v1/sessions/current), patch (PATCH /v1/sessions/current, one data key), send (POST
/v1/messages to another bench user), conversation (GET /v1/messages?with=…).

Logins are throttled by the nodes (--login-per-account, --login-per-address; 10 and 60 a
minute by default): start the nodes with, e.g., --login-per-account 1000000
--login-per-address 1000000 for a login-heavy mix, else the logins above the limit count
as "429 rate_limited" errors. Setup itself logs each user in once.

  sessiond bench seed --data DIR --users N --sessions-per-user K
      (benchmark harness) write N users with K sessions each straight into the data file
      of a stopped node, through storage's API; prints what it wrote as JSON.

Flags:
`

// helpOutput is where a flag set prints: stdout when the arguments ask for help (the
// usage is then the answer), stderr otherwise (errors).
func helpOutput(args []string, stdout, stderr io.Writer) io.Writer {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			return stdout
		case "--":
			return stderr
		}
	}
	return stderr
}

// benchCmd runs `sessiond bench`.
func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "seed" {
		return benchSeed(args[1:], stdout, stderr)
	}
	cfg := loadgen.DefaultConfig()
	fs := flag.NewFlagSet("sessiond bench", flag.ContinueOnError)
	fs.SetOutput(helpOutput(args, stdout, stderr))
	targets := fs.String("target", "http://127.0.0.1:8080", "comma-separated node `URL`s; requests go round-robin over them")
	mix := fs.String("mix", loadgen.DefaultMix, "workload: operation=weight,… of login, read, patch, send, conversation")
	asJSON := fs.Bool("json", false, "print the result as JSON on stdout instead of a table")
	quiet := fs.Bool("quiet", false, "no progress line")
	fs.IntVar(&cfg.Connections, "connections", cfg.Connections, "concurrent requests (`N` keep-alive connections per target at most)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to measure (ignored with --requests)")
	fs.Int64Var(&cfg.Requests, "requests", 0, "measure this many requests in all instead of a duration")
	fs.Float64Var(&cfg.Rate, "rate", 0, "pace to this many requests per second in all (0: as fast as the targets answer); latency then counts from each request's scheduled start")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "run the load this long, unmeasured, before measuring")
	fs.IntVar(&cfg.Users, "users", cfg.Users, "users to register (or reuse) and log in before measuring")
	fs.StringVar(&cfg.UserPrefix, "user-prefix", cfg.UserPrefix, "usernames are `PREFIX` + a number")
	fs.StringVar(&cfg.Password, "password", cfg.Password, "the bench users' password")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per-request timeout")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), benchUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sessiond bench: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	cfg.Targets = splitList(*targets)
	m, err := loadgen.ParseMix(*mix)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond bench:", err)
		return 2
	}
	cfg.Mix = m
	if !*quiet {
		cfg.Progress = stderr
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "sessiond bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond bench:", err)
		return 1
	}
	if *asJSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sessiond bench:", err)
		return 1
	}
	return 0
}

// benchSeed runs `sessiond bench seed`.
func benchSeed(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessiond bench seed", flag.ContinueOnError)
	fs.SetOutput(helpOutput(args, stdout, stderr))
	var cfg loadgen.SeedConfig
	data := fs.String("data", "./data", "`DIR` of the (stopped) node: its sessiond.db is created or extended")
	fs.IntVar(&cfg.Users, "users", 10_000, "users to write")
	fs.IntVar(&cfg.SessionsPerUser, "sessions-per-user", 10, "sessions per user")
	fs.StringVar(&cfg.Prefix, "prefix", "seed", "usernames are `PREFIX` + a number")
	fs.StringVar(&cfg.Password, "password", "bench-password", "every user's password")
	fs.IntVar(&cfg.Batch, "batch", 200, "users per storage transaction (bbolt inserts into a node cost O(keys in it) until commit, so larger batches get slower, not faster)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := os.MkdirAll(*data, 0o700); err != nil {
		fmt.Fprintln(stderr, "sessiond bench seed:", err)
		return 1
	}
	cfg.Path = *data + "/sessiond.db"
	cfg.Progress = stderr
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Seed(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond bench seed:", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return 1
	}
	return 0
}
