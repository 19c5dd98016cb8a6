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
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/cluster"
)

// version is set at build time with -ldflags "-X main.version=…"; without it,
// versionString reports what the Go toolchain recorded of the build.
var version = "dev"

// versionString returns the version and what the build recorded: the module version (a
// tag, or a pseudo-version naming the commit) when version was not set, the commit and
// whether the tree had changes, the commit's time, and the Go version and platform.
func versionString() string {
	v := version
	var extra []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		var rev, when string
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value[:min(12, len(s.Value))]
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if dirty {
				rev += ", modified"
			}
			extra = append(extra, "commit "+rev)
		}
		if when != "" {
			extra = append(extra, when)
		}
		extra = append(extra, bi.GoVersion)
	}
	extra = append(extra, runtime.GOOS+"/"+runtime.GOARCH)
	return v + " (" + strings.Join(extra, ", ") + ")"
}

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
		case "backup":
			return backupCmd(args[1:], stdout, stderr)
		case "apps":
			return appsCmd(args[1:], stdout, stderr)
		case "restore":
			return restoreCmd(args[1:], stdout, stderr)
		case "keys":
			return keysCmd(args[1:], stdout, stderr)
		case "members":
			return membersCmd(args[1:], stdout, stderr)
		case "version", "--version", "-version":
			fmt.Fprintln(stdout, "sessiond", versionString())
			return 0
		case "help":
			args = []string{"--help"}
		}
	}
	return serve(args, stdout, stderr)
}

const usageHead = `sessiond — the distributed user-session store: one node of a multi-region cluster.

Usage:
  sessiond [flags]            run a node (API and UI on --http, data in --data)
  sessiond keygen             print a new cluster key (base64 of 32 random bytes)
  sessiond health [--http A]  exit 0 if the node at A (host:port or URL) answers /healthz
                              (--ready: /readyz, once it has caught up)
  sessiond version            print the version and the build's commit (also --version)
  sessiond help               print this (also --help, -h)
  sessiond bench [flags]      measure nodes under a workload mix (sessiond bench --help)
  sessiond backup --http A --out FILE   take a backup of the running node at A
                              (sessiond backup --help; sessiond backup verify FILE checks one)
  sessiond restore --from FILE --data DIR   write a new data directory from a backup,
                              under a fresh node identity (sessiond restore --help)
  sessiond apps create|list|rotate|revoke [NAME] --http A   manage the API keys of the apps that
                              call the service API (sessiond apps --help)
  sessiond keys rotate|list --http A   rotate or list the session token signing keys of
                              the running cluster (sessiond keys --help)
  sessiond members remove NAME --http A   declare a failed member gone for good, so that
                              no node waits for it (sessiond members --help)

Every flag can also be set in the environment as SESSIOND_<NAME>, e.g. SESSIOND_HTTP,
SESSIOND_CLUSTER_KEY_FILE; a flag on the command line wins. SESSIOND_CLUSTER_KEY may hold
the key itself instead of a file. A node runs Go's garbage collector at GOGC=400 and, in a
container with a memory limit, with GOMEMLIMIT at 90 % of it, unless the environment sets
GOGC or GOMEMLIMIT.

A node listens on three ports, and says which when it starts: --http (TCP), --gossip (TCP
and UDP; 7946 is also Consul's and Docker Swarm's, so pick another beside them) and --sync
(TCP; by default the gossip port + 100, so that nodes on one host may number their gossip
ports consecutively). Several nodes on one host each need their own --http, --gossip and
--data.

Flags:
`

type flags struct {
	cfg            edge.Config
	showVersion    bool
	testHooks      bool
	clockOffset    time.Duration
	protocolMax    uint
	join           string
	keyFile        string
	logFormat      string
	logLevel       string
	cors           string
	trustedProxies string
	sessionAddress bool
}

func newFlagSet() (*flag.FlagSet, *flags) {
	f := &flags{cfg: edge.DefaultConfig()}
	fs := flag.NewFlagSet("sessiond", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // serve prints the errors, and printUsage the usage
	c := &f.cfg
	fs.StringVar(&c.HTTPAddr, "http", c.HTTPAddr, "`ADDR` to serve the API and UI on")
	fs.StringVar(&c.DataDir, "data", c.DataDir, "`DIR` for the bbolt file and the node's identity")
	fs.StringVar(&c.NodeName, "node", c.NodeName, "unique node `NAME`; default: the name --data recorded at its first start, else the host name")
	fs.StringVar(&c.Region, "region", c.Region, "region `NAME` this node is in")
	fs.StringVar(&c.GossipAddr, "gossip", c.GossipAddr, "`ADDR` for cluster membership (serf) to bind; the host may be anything --advertise takes")
	fs.StringVar(&c.SyncAddr, "sync", "", "`ADDR` for the node-to-node data channel (mutual TLS); default: gossip host, gossip port + 100")
	fs.BoolVar(&c.FastGossip, "fast-gossip", false, "detect failures and reconnect within about a second (loopback clusters, tests)")
	fs.DurationVar(&c.CatchUpTimeout, "catch-up-timeout", c.CatchUpTimeout, "how long a joining node waits to catch up from a peer before /readyz says ready anyway")
	fs.DurationVar(&c.AntiEntropyEvery, "anti-entropy-every", c.AntiEntropyEvery, "mean period of anti-entropy with each peer")
	fs.DurationVar(&c.BookmarkWait, "bookmark-wait", c.BookmarkWait, "how long a request whose X-Sessiond-Bookmark this node does not hold yet waits for replication before fetching from another node")
	fs.DurationVar(&c.BookmarkTimeout, "bookmark-timeout", c.BookmarkTimeout, "bound on waiting and fetching for a bookmark; past it the request gets 503 behind")
	fs.StringVar(&c.Advertise, "advertise", "", "`ADDR` other nodes reach this one at, for gossip and sync: an IP, host name, interface (eth0),\n"+
		"network (10.0.1.0/24: this host's address in it) or go-sockaddr template ({{ GetInterfaceIP \"eth0\" }});\n"+
		"default: the gossip bind address, or when that is every interface, the local address this host\n"+
		"reaches the --join targets from (the node logs what it advertises and why)")
	fs.IntVar(&c.Replicas, "replicas", c.Replicas, "how many nodes of each region hold each key, `N`; 0: every node holds everything.\nThe same on every node; a node forwards requests for keys it does not hold")
	fs.IntVar(&c.MoveRate, "move-rate", c.MoveRate, "`MiB` per second of stored data this node sends to peers by anti-entropy and handoff\n(data moving after membership changes, repairs; not new writes); negative: unbounded")
	fs.StringVar(&f.join, "join", "", "comma-separated `ADDR`s of members to join (host:port; a name standing for several addresses,\n"+
		"such as tasks.NAME in Swarm or a headless Service, joins them all; while no other member is alive\n"+
		"the node resolves and joins again); none: a cluster of one")
	fs.StringVar(&f.keyFile, "cluster-key-file", "", "`FILE` with the cluster key (base64 of 32 bytes; more lines: older keys still accepted),\nre-read on SIGHUP (key rotation: docs/OPERATIONS.md, Rotating the cluster key); without it a lone node keeps a generated key in --data")
	fs.DurationVar(&c.SessionTTL, "session-ttl", c.SessionTTL, "absolute lifetime of a session")
	fs.DurationVar(&c.IdleTTL, "idle-ttl", c.IdleTTL, "a session unused this long expires")
	fs.DurationVar(&c.MaxSkew, "max-skew", c.MaxSkew, "remote timestamps further ahead of local time are rejected")
	fs.IntVar(&c.LoginPerAccount, "login-per-account", c.LoginPerAccount, "failed logins allowed per account per minute from all addresses (a login with a device token from an earlier sign-in is exempt)")
	fs.IntVar(&c.SignInsPerAccount, "signins-per-account", c.SignInsPerAccount, "sign-ins that succeed allowed per account per minute, cluster-wide (each makes a session, stored until it expires)")
	fs.IntVar(&c.LoginPerAddress, "login-per-address", c.LoginPerAddress, "failed logins allowed per client address per minute")
	fs.IntVar(&c.LoginPerAccountAddress, "login-per-account-address", c.LoginPerAccountAddress, "failed logins allowed per account per minute from one address, below --login-per-account; 0: min(10, --login-per-account - 1)")
	fs.IntVar(&c.SignupsPerAddress, "signups-per-address", c.SignupsPerAddress, "registrations allowed per client address per 10 minutes; 0: 10")
	fs.IntVar(&c.MessagesPerUser, "messages-per-user", c.MessagesPerUser, "messages one user may send per minute, cluster-wide; 0: 120")
	fs.IntVar(&c.UnknownNamesPerUser, "unknown-names-per-user", c.UnknownNamesPerUser, "times a minute one user may name a user that does not exist (messages), cluster-wide; 0: 30")
	fs.IntVar(&c.ServiceFailuresPerAddress, "service-failures-per-address", c.ServiceFailuresPerAddress, "requests to the service API with an API key that does not authenticate allowed per client address\nper minute, cluster-wide; 0: 60")
	fs.IntVar(&c.ServiceRequestsPerApp, "service-requests-per-app", c.ServiceRequestsPerApp, "requests one app may make to the service API per minute, cluster-wide; 0: 600000")
	fs.IntVar(&c.AppQuotaMiB, "app-quota", c.AppQuotaMiB, "`MiB` one app may store, cluster-wide (one copy): its key-value records, subjects and their\nsessions; past it, writes that add get 403 quota_exceeded; 0: 1024; negative: no bound; at most\n1073741824 (1 PiB); sessiond apps quota NAME MIB gives one app its own")
	fs.DurationVar(&c.CounterFlush, "counter-flush", c.CounterFlush, "how often a node sends its login and sign-up counts to its peers (bounds the cluster-wide overshoot); 0: 200ms")
	fs.IntVar(&c.PasswordWorkers, "password-workers", c.PasswordWorkers, "argon2id password hashes (logins, sign-ups) run at once, `N`, each on one core; 0: max(1, GOMAXPROCS/2),\nso hashing takes at most half the CPUs and reads and writes keep the rest")
	fs.IntVar(&c.PasswordQueue, "password-queue", c.PasswordQueue, "logins and sign-ups that may wait for a hashing worker, `N` (logins first); beyond it 503 unavailable\nwith Retry-After at once; 0: 32 per worker")
	fs.DurationVar(&c.PasswordWait, "password-wait", c.PasswordWait, "longest a login or sign-up waits for a hashing worker before 503 unavailable with Retry-After")
	fs.IntVar(&c.PasswordPerClient, "password-per-client", c.PasswordPerClient, "logins and sign-ups of one client address that may wait for or hold a hashing worker, `N`;\nbeyond it 503 unavailable with Retry-After at once; 0: a quarter of --password-workers and --password-queue")
	fs.StringVar(&f.cors, "cors-origins", "", "comma-separated browser `ORIGINS` allowed to call the API; default none (CORS off)")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated `ADDRS` of load balancers whose X-Forwarded-For is believed")
	fs.BoolVar(&f.sessionAddress, "session-address", true, "record the client's address (as seen through --trusted-proxies) with each new session,\nshown to its owner in the session list; false: don't")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "bound on a graceful shutdown")
	fs.BoolVar(&f.testHooks, "enable-test-hooks", false, "allow the flags below that exist only for fault-injection tests")
	fs.DurationVar(&f.clockOffset, "test-clock-offset", 0, "(test hook) shift this node's clock by `DURATION`, to test skew handling; needs --enable-test-hooks")
	fs.UintVar(&f.protocolMax, "test-sync-protocol-max", 0, "(test hook) speak sync protocol `VERSION` at most, as the previous release would (upgrade tests); needs --enable-test-hooks")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: `text|json`")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: `debug|info|warn|error`")
	fs.Float64Var(&c.AccessLogSample, "access-log-sample", c.AccessLogSample, "`FRACTION` (0 to 1) of requests answered below 400 that get an access log line (info level);\nevery request answered 400 or above gets one")
	fs.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	// On a bad flag the flag package prints the error and calls Usage: keep that to the
	// error; --help prints the usage itself, on stdout.
	fs.Usage = func() {}
	return fs, f
}

// printUsage prints the command's usage and every flag to w.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, usageHead)
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
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

func serve(args []string, stdout, stderr io.Writer) int {
	fs, f := newFlagSet()
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
			return 0
		}
		fmt.Fprintln(stderr, "sessiond:", err, "(sessiond --help lists the flags)")
		return 2
	}
	if f.showVersion {
		fmt.Fprintln(stdout, "sessiond", versionString())
		return 0
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
	if percent, limit := tuneGC(); percent > 0 || limit > 0 {
		logger.Info("garbage collector tuned (the environment's GOGC and GOMEMLIMIT override)", "gogc", percent, "memory_limit_bytes", limit)
	}
	cfg := f.cfg
	cfg.Logger = logger
	cfg.Version = versionString()
	explicit := false
	fs.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "node" })
	if _, ok := os.LookupEnv(envName("node")); ok {
		explicit = true
	}
	if cfg.NodeName != "" && cfg.DataDir != "" {
		name, note, err := stableNodeName(cfg.DataDir, cfg.NodeName, explicit)
		if err != nil {
			fmt.Fprintln(stderr, "sessiond:", err)
			return 1
		}
		if note != "" {
			logger.Warn(note)
		}
		cfg.NodeName = name
	}
	if f.clockOffset != 0 {
		if !f.testHooks {
			fmt.Fprintln(stderr, "sessiond: --test-clock-offset is a test hook: it needs --enable-test-hooks")
			return 2
		}
		offset := f.clockOffset
		cfg.Now = func() time.Time { return time.Now().Add(offset) }
		logger.Warn("test hook: clock shifted", "offset", offset)
	}
	if f.protocolMax != 0 {
		if !f.testHooks {
			fmt.Fprintln(stderr, "sessiond: --test-sync-protocol-max is a test hook: it needs --enable-test-hooks")
			return 2
		}
		if f.protocolMax > 255 {
			fmt.Fprintf(stderr, "sessiond: --test-sync-protocol-max %d: not a protocol version\n", f.protocolMax)
			return 2
		}
		cfg.SyncProtocolMax = uint8(f.protocolMax) // #nosec G115 -- at most 255, checked above; Validate checks the range
	}
	cfg.Join = splitList(f.join)
	cfg.CORSOrigins = splitList(f.cors)
	cfg.TrustedProxies = splitList(f.trustedProxies)
	cfg.OmitSessionAddress = !f.sessionAddress
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
		if strings.Contains(err.Error(), "address already in use") {
			fmt.Fprintln(stderr, "sessiond: another process holds that port: choose free ones with --http, --gossip and --sync (sync defaults to the gossip port + 100)")
		}
		return 1
	}
	logger.Info("serving", "url", "http://"+node.HTTPAddr(), "version", versionString())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	removed, failed := false, false
	for ctx.Err() == nil && !removed && !failed {
		select {
		case <-ctx.Done():
		case <-hup:
			reloadKeys(node, f.keyFile, logger)
		case <-node.Removed():
			removed = true
		case <-node.StorageFailed():
			failed = true
		}
	}
	stop()
	if removed {
		logger.Error("stopping: " + cluster.ErrRemoved.Error())
	}
	if failed {
		// A node that cannot write would refuse what any other node accepts: stopping
		// lets peers and load balancers route around it (see Node.StorageFailed).
		logger.Error("stopping: " + errStorageFailed)
	}
	logger.Info("shutting down")
	err = node.Close(context.Background())
	if err != nil {
		fmt.Fprintln(stderr, "sessiond: shutdown:", err)
	}
	if removed {
		fmt.Fprintln(stderr, "sessiond:", cluster.ErrRemoved)
	}
	if failed {
		fmt.Fprintln(stderr, "sessiond:", errStorageFailed)
	}
	if err != nil || removed || failed {
		return 1
	}
	return 0
}

// errStorageFailed is what a node says when it stops because its storage failed.
const errStorageFailed = "stopped because its storage failed (see above: a full disk, an I/O error); " +
	"start it again once that is mended: it recovers every acknowledged write from its write-ahead log"

// reloadKeys re-reads the key file and makes its keys the node's (SIGHUP): see
// edge.Node.ReloadKeys and docs/OPERATIONS.md, "Rotating the cluster key". A file that cannot be read or parsed
// changes nothing and is logged.
func reloadKeys(node *edge.Node, file string, logger *slog.Logger) {
	if file == "" {
		logger.Warn("SIGHUP: no --cluster-key-file to re-read; the cluster keys stay as they are")
		return
	}
	keys, err := readClusterKeys(file)
	if err == nil {
		err = node.ReloadKeys(keys)
	}
	if err != nil {
		logger.Error("SIGHUP: cluster keys not reloaded; they stay as they were", slog.Any("err", err))
	}
}

// readClusterKeys reads the key file, or SESSIOND_CLUSTER_KEY, or returns none.
func readClusterKeys(file string) ([][]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file) // #nosec G304 -- the operator names the file (--cluster-key-file)
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
	addr := fs.String("http", "127.0.0.1:8080", "the node's API: `ADDR` (host:port, as given to sessiond --http) or URL (http://host:port)")
	ready := fs.Bool("ready", false, "check /readyz instead: exit 0 only once the node has caught up with its peers\n(orchestrators that route by health, such as Swarm's DNS, then send it traffic only when ready)")
	if v, ok := os.LookupEnv("SESSIOND_HTTP"); ok {
		*addr = v
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, "Usage: sessiond health [--http ADDR|URL] [--ready]: exit 0 if the node answers /healthz (or /readyz) with 200, else 1\n\n")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintln(stderr, "sessiond health:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sessiond health: unexpected argument %q (the address goes after --http)\n", fs.Arg(0))
		return 2
	}
	target, err := healthURL(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond health:", err)
		return 2
	}
	if *ready {
		target = strings.TrimSuffix(target, "/healthz") + "/readyz"
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(target)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	_ = resp.Body.Close() // only the status matters
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy: status", resp.StatusCode)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// healthURL returns the /healthz URL of a node given as host:port (an unspecified host,
// as in :8080 or 0.0.0.0:8080, is this host) or as an http or https URL, which may have a
// path prefix (a proxy's).
func healthURL(addr string) (string, error) { return nodeURL(addr, "/healthz") }

// nodeURL returns the URL of path on a node given as healthURL takes it.
func nodeURL(addr, path string) (string, error) {
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("--http %q: want host:port or an http:// or https:// URL", addr)
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + path
		u.RawPath, u.RawQuery, u.Fragment = "", "", ""
		return u.String(), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--http %q: want host:port or an http:// URL", addr)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}
