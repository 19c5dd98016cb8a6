// Command sessiond runs a sessiond node: the distributed user-session store's API, UI and
// replica. Run `sessiond --help` for its flags; every flag also reads SESSIOND_<NAME>.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/edge"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "keygen":
			fmt.Fprintln(stdout, edge.NewClusterKey())
			return 0
		case "health":
			return health(args[1:], stdout, stderr)
		case "bench":
			return benchCmd(args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "sessiond", version)
			return 0
		}
	}
	return serve(args, stderr)
}

const usageHead = `sessiond — the distributed user-session store: one node of a multi-region cluster.

Usage:
  sessiond [flags]            run a node (API and UI on --http, data in --data)
  sessiond keygen             print a new cluster key (base64 of 32 random bytes)
  sessiond health [--http A]  exit 0 if the node at A answers /healthz (container health checks)
  sessiond version            print the version
  sessiond bench [flags]      measure nodes under a workload mix (sessiond bench --help)

Every flag can also be set in the environment as SESSIOND_<NAME>, e.g. SESSIOND_HTTP,
SESSIOND_CLUSTER_KEY_FILE; a flag on the command line wins. SESSIOND_CLUSTER_KEY may hold
the key itself instead of a file.

Flags:
`

type flags struct {
	cfg            edge.Config
	testHooks      bool
	clockOffset    time.Duration
	join           string
	keyFile        string
	logFormat      string
	logLevel       string
	cors           string
	trustedProxies string
}

func newFlagSet(stderr io.Writer) (*flag.FlagSet, *flags) {
	f := &flags{cfg: edge.DefaultConfig()}
	fs := flag.NewFlagSet("sessiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &f.cfg
	fs.StringVar(&c.HTTPAddr, "http", c.HTTPAddr, "`ADDR` to serve the API and UI on")
	fs.StringVar(&c.DataDir, "data", c.DataDir, "`DIR` for the bbolt file and the node's identity")
	fs.StringVar(&c.NodeName, "node", c.NodeName, "unique node `NAME` (default: host name)")
	fs.StringVar(&c.Region, "region", c.Region, "region `NAME` this node is in")
	fs.StringVar(&c.GossipAddr, "gossip", c.GossipAddr, "`ADDR` for cluster membership (serf) to bind")
	fs.StringVar(&c.SyncAddr, "sync", "", "`ADDR` for the node-to-node data channel (mutual TLS); default: gossip host, gossip port + 1")
	fs.BoolVar(&c.FastGossip, "fast-gossip", false, "detect failures and reconnect within about a second (loopback clusters, tests)")
	fs.DurationVar(&c.CatchUpTimeout, "catch-up-timeout", c.CatchUpTimeout, "how long a joining node waits to catch up from a peer before /readyz says ready anyway")
	fs.DurationVar(&c.AntiEntropyEvery, "anti-entropy-every", c.AntiEntropyEvery, "mean period of anti-entropy with each peer")
	fs.DurationVar(&c.BookmarkWait, "bookmark-wait", c.BookmarkWait, "how long a request whose X-Sessiond-Bookmark this node does not hold yet waits for replication before fetching from another node")
	fs.DurationVar(&c.BookmarkTimeout, "bookmark-timeout", c.BookmarkTimeout, "bound on waiting and fetching for a bookmark; past it the request gets 503 behind")
	fs.StringVar(&c.Advertise, "advertise", "", "`HOST` other nodes reach this one at (containers, NAT); default: the bind address")
	fs.StringVar(&f.join, "join", "", "comma-separated `ADDR`s of members to join; none: a cluster of one")
	fs.StringVar(&f.keyFile, "cluster-key-file", "", "`FILE` with the cluster key (base64 of 32 bytes; more lines: older keys still accepted);\nwithout it a lone node keeps a generated key in --data")
	fs.DurationVar(&c.SessionTTL, "session-ttl", c.SessionTTL, "absolute lifetime of a session")
	fs.DurationVar(&c.IdleTTL, "idle-ttl", c.IdleTTL, "a session unused this long expires")
	fs.DurationVar(&c.MaxSkew, "max-skew", c.MaxSkew, "remote timestamps further ahead of local time are rejected")
	fs.IntVar(&c.LoginPerAccount, "login-per-account", c.LoginPerAccount, "failed logins allowed per account per minute from all addresses (a login with a device token from an earlier sign-in is exempt)")
	fs.IntVar(&c.LoginPerAddress, "login-per-address", c.LoginPerAddress, "failed logins allowed per client address per minute")
	fs.IntVar(&c.LoginPerAccountAddress, "login-per-account-address", c.LoginPerAccountAddress, "failed logins allowed per account per minute from one address, below --login-per-account; 0: min(10, --login-per-account - 1)")
	fs.IntVar(&c.SignupsPerAddress, "signups-per-address", c.SignupsPerAddress, "registrations allowed per client address per 10 minutes; 0: 10")
	fs.DurationVar(&c.CounterFlush, "counter-flush", c.CounterFlush, "how often a node sends its login and sign-up counts to its peers (bounds the cluster-wide overshoot); 0: 200ms")
	fs.StringVar(&f.cors, "cors-origins", "", "comma-separated browser `ORIGINS` allowed to call the API; default none (CORS off)")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated `ADDRS` of load balancers whose X-Forwarded-For is believed")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "bound on a graceful shutdown")
	fs.BoolVar(&f.testHooks, "enable-test-hooks", false, "allow the flags below that exist only for fault-injection tests")
	fs.DurationVar(&f.clockOffset, "test-clock-offset", 0, "(test hook) shift this node's clock by `DURATION`, to test skew handling; needs --enable-test-hooks")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: `text|json`")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: `debug|info|warn|error`")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	return fs, f
}

// envName returns the environment variable of a flag: SESSIOND_ and the flag's name in
// upper case with dashes as underscores.
func envName(flagName string) string {
	return "SESSIOND_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags applies the environment, then the command line.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var err error
	fs.VisitAll(func(fl *flag.Flag) {
		if v, ok := os.LookupEnv(envName(fl.Name)); ok && err == nil {
			if e := fl.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(fl.Name), v, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return fs.Parse(args)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func serve(args []string, stderr io.Writer) int {
	fs, f := newFlagSet(stderr)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "sessiond:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sessiond: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	logger, err := newLogger(f.logFormat, f.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond:", err)
		return 2
	}
	cfg := f.cfg
	cfg.Logger = logger
	if f.clockOffset != 0 {
		if !f.testHooks {
			fmt.Fprintln(stderr, "sessiond: --test-clock-offset is a test hook: it needs --enable-test-hooks")
			return 2
		}
		offset := f.clockOffset
		cfg.Now = func() time.Time { return time.Now().Add(offset) }
		logger.Warn("test hook: clock shifted", "offset", offset)
	}
	cfg.Join = splitList(f.join)
	cfg.CORSOrigins = splitList(f.cors)
	cfg.TrustedProxies = splitList(f.trustedProxies)
	if keys, err := readClusterKeys(f.keyFile); err != nil {
		fmt.Fprintln(stderr, "sessiond:", err)
		return 1
	} else {
		cfg.ClusterKeys = keys
	}
	node, err := edge.NewNode(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := node.Start(ctx); err != nil {
		fmt.Fprintln(stderr, "sessiond:", err)
		return 1
	}
	logger.Info("serving", "url", "http://"+node.HTTPAddr(), "version", version)
	<-ctx.Done()
	stop()
	logger.Info("shutting down")
	if err := node.Close(context.Background()); err != nil {
		fmt.Fprintln(stderr, "sessiond: shutdown:", err)
		return 1
	}
	return 0
}

// readClusterKeys reads the key file, or SESSIOND_CLUSTER_KEY, or returns none.
func readClusterKeys(file string) ([][]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read cluster key file: %w", err)
		}
		keys, err := edge.ParseClusterKeys(string(b))
		if err != nil {
			return nil, fmt.Errorf("cluster key file %s: %w", file, err)
		}
		return keys, nil
	}
	if v := os.Getenv("SESSIOND_CLUSTER_KEY"); v != "" {
		keys, err := edge.ParseClusterKeys(v)
		if err != nil {
			return nil, fmt.Errorf("SESSIOND_CLUSTER_KEY: %w", err)
		}
		return keys, nil
	}
	return nil, nil
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// health checks a node's /healthz, for container health checks (the image has no curl).
func health(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessiond health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("http", "127.0.0.1:8080", "`ADDR` of the node's API")
	if v, ok := os.LookupEnv("SESSIOND_HTTP"); ok {
		*addr = v
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	host := *addr
	if strings.HasPrefix(host, ":") || strings.HasPrefix(host, "0.0.0.0:") {
		host = "127.0.0.1:" + host[strings.LastIndex(host, ":")+1:]
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + host + "/healthz")
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy: status", resp.StatusCode)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}
