package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
)

// Config configures a Node. Start with DefaultConfig: its zero value is not usable.
type Config struct {
	NodeName   string // unique within the cluster; default: host name
	Region     string // region tag; default "local"
	DataDir    string // bbolt file and node identity; default ./data
	HTTPAddr   string // API and UI listen address; default 127.0.0.1:8080 (":0" in tests)
	GossipAddr string // serf bind address; default 127.0.0.1:7946
	// SyncAddr is the node-to-node data channel's listen address (mutual TLS); default the
	// gossip host with the gossip port + syncPortOffset (127.0.0.1:8046 beside the default
	// gossip address), so that nodes given consecutive gossip ports do not collide.
	SyncAddr string
	// FastGossip shortens failure detection and reconnection to about a second, for
	// loopback clusters and tests; the default suits real networks.
	FastGossip bool
	// SyncProtocolMax, when not 0, is the newest sync protocol version this node speaks
	// and announces (at least cluster.MinProtocolVersion, at most
	// cluster.ProtocolVersion): a node of this release pinned to speak as the previous
	// one, for upgrade tests. 0: cluster.ProtocolVersion.
	SyncProtocolMax uint8
	// Advertise is the address other nodes reach this one at, for gossip and sync: an IP
	// address, a host name, an interface name (eth0), a network in CIDR notation (this
	// host's one address in it, 10.0.1.0/24) or a go-sockaddr template
	// ({{ GetInterfaceIP "eth0" }}). Empty: the gossip bind address when it names one;
	// when gossip binds every interface, the local address this host reaches its Join
	// targets from (the network the cluster is on), else its only private address. The
	// node logs what it advertises and why. GossipAddr's and SyncAddr's hosts take the
	// same forms.
	Advertise string
	Join      []string // members to join; empty: a cluster of one
	// Replicas is how many nodes of each region hold each key (placement by rendezvous
	// hashing over the region's live members); 0, the default: every node holds
	// everything. A node asked for a key it does not hold forwards the request to one that
	// does (forward.go). Every node of a cluster must be given the same value.
	Replicas int
	// MoveRate bounds, in MiB per second, the stored data this node sends to its peers by
	// anti-entropy and handoff (what moves after a membership change, and repairs), so
	// that movement does not crowd out requests; new writes' pushes are not bounded.
	// 0: the default, 64; negative: unbounded.
	MoveRate int

	// ClusterKeys are the cluster's shared secrets, 32 bytes each. The first signs and
	// encrypts; the others are still accepted (rotation). Empty: a single node generates one
	// and keeps it in DataDir; a node with Join must be given one.
	ClusterKeys [][]byte

	SessionTTL      time.Duration // absolute session lifetime; default 24h
	IdleTTL         time.Duration // idle session lifetime; default 2h
	MaxSkew         time.Duration // remote timestamps further ahead are rejected; default 1m
	SweepEvery      time.Duration // how often expired sessions, key-value records and subjects' records are removed; default 1m
	LoginPerAccount int           // failed logins per account per minute, all addresses; default 100
	// SignInsPerAccount is sign-ins that succeed per account per minute, cluster-wide: each
	// makes a session that stays stored until it expires. Default 60.
	SignInsPerAccount int
	LoginPerAddress   int      // failed logins per client address per minute; default 60
	CORSOrigins       []string // origins allowed to call the API from a browser; default none
	// PasswordWorkers is how many argon2id hashes (logins and sign-ups) run at once; each
	// takes one core for tens of milliseconds. 0: max(1, GOMAXPROCS/2), so that hashing
	// gets at most half the CPUs and reads and writes keep the rest. See
	// functions/hashing.go.
	PasswordWorkers int
	// PasswordQueue is how many logins and sign-ups may wait for a hashing worker, logins
	// ahead; beyond it a request gets 503 unavailable with Retry-After at once (a login
	// takes a waiting sign-up's place first). 0: 32 per worker, about what a worker
	// hashes in PasswordWait at the default cost.
	PasswordQueue int
	// PasswordWait bounds how long a login or sign-up waits for a hashing worker; past it,
	// 503 unavailable with Retry-After. Default 1s.
	PasswordWait time.Duration
	// PasswordPerClient is how many logins and sign-ups of one client address may wait
	// for or hold a hashing worker at once; beyond it, 503 unavailable with Retry-After at
	// once, so that one address cannot fill the queue. 0: a quarter of PasswordWorkers and
	// PasswordQueue together, at least 1.
	PasswordPerClient int
	// LoginPerAccountAddress is failed logins per account per minute from one client
	// address; it must stay below LoginPerAccount so that one address cannot lock an
	// account. 0: min(10, LoginPerAccount-1). A login with a valid device token is held
	// to this limit and LoginPerAddress only. See throttle.go.
	LoginPerAccountAddress int
	// SignupsPerAddress is registrations per client address per 10 minutes; 0: 10.
	SignupsPerAddress int
	// MessagesPerUser is messages one user may send per minute, cluster-wide; 0: 120.
	MessagesPerUser int
	// UnknownNamesPerUser is how many times a minute one user may name a user that does
	// not exist (a message to, or the conversation with, an unknown name), cluster-wide;
	// 0: 30.
	UnknownNamesPerUser int
	// ServiceFailuresPerAddress is how many requests to the service routes with an API key
	// that does not authenticate one client address may make per minute, cluster-wide;
	// beyond it, such requests get 429 (keys that authenticate still work). 0: 60.
	ServiceFailuresPerAddress int
	// ServiceRequestsPerApp is how many requests one app may make to the service routes
	// per minute, cluster-wide; beyond it, 429. 0: 600000 (10000 a second).
	ServiceRequestsPerApp int
	// AppQuotaMiB bounds, in MiB, what one app stores, cluster-wide as each node
	// estimates it (functions.Quota): its key-value records and its subjects' records
	// and sessions. 0: 1024; negative: no bound; at most functions.MaxAppQuotaMiB.
	AppQuotaMiB int
	// CounterFlush is how often a node sends its login and sign-up counts to its peers;
	// it bounds how far a limit overshoots cluster-wide. 0: 200ms.
	CounterFlush time.Duration
	// TrustedProxies are the addresses of load balancers whose X-Forwarded-For names the
	// client (for login throttling); default none.
	TrustedProxies []string
	// OmitSessionAddress leaves the client's address out of the sessions it signs in;
	// default false: each session records it, for its owner to recognise it.
	OmitSessionAddress bool
	ShutdownTimeout    time.Duration // bound on a graceful Close; default 10s
	// AccessLogSample is the fraction (0 to 1) of requests answered with a status below
	// 400 that get an access log line; every request answered 400 or above gets one.
	// Default 0.01.
	AccessLogSample float64
	// CatchUpTimeout bounds how long a node started with Join waits to complete
	// anti-entropy with a peer before /readyz reports ready anyway; default 30s.
	CatchUpTimeout   time.Duration
	AntiEntropyEvery time.Duration // mean period of anti-entropy with each peer; default 10s
	// BookmarkWait is how long a request whose bookmark this node does not yet hold waits
	// for replication to bring it before fetching it from another node; default 300ms.
	BookmarkWait time.Duration
	// BookmarkTimeout bounds the whole wait and fetch; past it the request gets 503
	// behind. Default 2s.
	BookmarkTimeout time.Duration

	// Version names this build in the headers of the backups the node serves; default
	// "dev".
	Version string

	Logger *slog.Logger     // default: discard
	Now    func() time.Time // physical clock; default time.Now (tests inject skew here)
}

// DefaultConfig returns a new Config with every default filled in.
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "sessiond"
	}
	return Config{
		NodeName:          host,
		Region:            "local",
		DataDir:           "./data",
		HTTPAddr:          "127.0.0.1:8080",
		GossipAddr:        "127.0.0.1:7946",
		SessionTTL:        24 * time.Hour,
		IdleTTL:           2 * time.Hour,
		MaxSkew:           time.Minute,
		SweepEvery:        time.Minute,
		MoveRate:          64, // cluster.DefaultMoveRate
		LoginPerAccount:   100,
		SignInsPerAccount: 60,
		LoginPerAddress:   60,
		ShutdownTimeout:   10 * time.Second,
		AccessLogSample:   0.01,
		CatchUpTimeout:    30 * time.Second,
		AntiEntropyEvery:  10 * time.Second,
		BookmarkWait:      300 * time.Millisecond,
		BookmarkTimeout:   2 * time.Second,
		PasswordWait:      time.Second,
	}
}

// Validate reports the first unusable setting, naming its field.
func (c Config) Validate() error {
	switch {
	case c.NodeName == "":
		return errors.New("config: NodeName is required")
	case len(c.NodeName) > 64:
		return errors.New("config: NodeName must be at most 64 bytes")
	case c.Region == "":
		return errors.New("config: Region is required")
	case c.DataDir == "":
		return errors.New("config: DataDir is required")
	case c.SessionTTL <= 0 || c.IdleTTL <= 0:
		return errors.New("config: SessionTTL and IdleTTL must be positive")
	case c.MaxSkew <= 0:
		return errors.New("config: MaxSkew must be positive")
	case c.SyncProtocolMax != 0 && !(cluster.ProtocolRange{Min: cluster.MinProtocolVersion, Max: c.SyncProtocolMax}).Valid():
		return fmt.Errorf("config: SyncProtocolMax %d: this build speaks %s", c.SyncProtocolMax, cluster.Supported())
	case c.Replicas < 0:
		return errors.New("config: Replicas must not be negative")
	case c.SweepEvery <= 0:
		return errors.New("config: SweepEvery must be positive")
	case c.AppQuotaMiB > functions.MaxAppQuotaMiB:
		return fmt.Errorf("config: AppQuotaMiB %d is over %d (1 PiB); negative: no bound", c.AppQuotaMiB, functions.MaxAppQuotaMiB)
	case c.BookmarkWait < 0 || c.BookmarkTimeout <= 0:
		return errors.New("config: BookmarkWait must not be negative and BookmarkTimeout must be positive")
	case c.LoginPerAccount <= 0 || c.LoginPerAddress <= 0 || c.SignInsPerAccount <= 0:
		return errors.New("config: LoginPerAccount, LoginPerAddress and SignInsPerAccount must be positive")
	case c.LoginPerAccountAddress < 0 || c.SignupsPerAddress < 0 || c.CounterFlush < 0:
		return errors.New("config: LoginPerAccountAddress, SignupsPerAddress and CounterFlush must not be negative")
	case c.PasswordWorkers < 0 || c.PasswordQueue < 0 || c.PasswordPerClient < 0:
		return errors.New("config: PasswordWorkers, PasswordQueue and PasswordPerClient must not be negative")
	case c.PasswordWait <= 0:
		return errors.New("config: PasswordWait must be positive")
	case c.MessagesPerUser < 0 || c.UnknownNamesPerUser < 0:
		return errors.New("config: MessagesPerUser and UnknownNamesPerUser must not be negative")
	case c.ServiceFailuresPerAddress < 0 || c.ServiceRequestsPerApp < 0:
		return errors.New("config: ServiceFailuresPerAddress and ServiceRequestsPerApp must not be negative")
	case c.LoginPerAccountAddress > 0 && c.LoginPerAccountAddress >= c.LoginPerAccount:
		return fmt.Errorf("config: LoginPerAccountAddress (%d) must be below LoginPerAccount (%d), or one address could lock an account", c.LoginPerAccountAddress, c.LoginPerAccount)
	case !(c.AccessLogSample >= 0 && c.AccessLogSample <= 1): // NaN too
		return fmt.Errorf("config: AccessLogSample is %v, want a fraction from 0 to 1", c.AccessLogSample)
	case len(c.Join) > 0 && len(c.ClusterKeys) == 0:
		return errors.New("config: joining a cluster needs its key: set --cluster-key-file or SESSIOND_CLUSTER_KEY (create one with `sessiond keygen`)")
	}
	for _, o := range c.CORSOrigins {
		if err := validOrigin(o); err != nil {
			return fmt.Errorf("config: CORSOrigins: %w", err)
		}
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("config: HTTPAddr %q: %w", c.HTTPAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
		return fmt.Errorf("config: GossipAddr %q: %w", c.GossipAddr, err)
	}
	if _, err := c.syncAddr(); err != nil {
		return err
	}
	for i, k := range c.ClusterKeys {
		if len(k) != 32 {
			return fmt.Errorf("config: ClusterKeys[%d] is %d bytes, want 32", i, len(k))
		}
	}
	return nil
}

// syncPortOffset is how far the default sync port lies above the gossip port. It was 1,
// which is the next node's gossip port when nodes on one host count their gossip ports up
// (the README's recipe did): that node then failed with "address already in use".
const syncPortOffset = 100

// syncAddr returns SyncAddr, or the gossip host with the gossip port + syncPortOffset.
func (c Config) syncAddr() (string, error) {
	if c.SyncAddr != "" {
		if _, _, err := net.SplitHostPort(c.SyncAddr); err != nil {
			return "", fmt.Errorf("config: SyncAddr %q: %w", c.SyncAddr, err)
		}
		return c.SyncAddr, nil
	}
	host, port, err := net.SplitHostPort(c.GossipAddr)
	if err != nil {
		return "", fmt.Errorf("config: GossipAddr %q: %w", c.GossipAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p == 0 || p+syncPortOffset > 65535 {
		return "", fmt.Errorf("config: SyncAddr must be set when GossipAddr's port (%q) is not a fixed number at most %d", port, 65535-syncPortOffset)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+syncPortOffset)), nil
}

// fillLimits sets the abuse and password-hashing limits left at 0 to their defaults.
func (c *Config) fillLimits() {
	if c.LoginPerAccountAddress == 0 {
		c.LoginPerAccountAddress = max(1, min(10, c.LoginPerAccount-1))
	}
	if c.SignupsPerAddress == 0 {
		c.SignupsPerAddress = 10
	}
	if c.MessagesPerUser == 0 {
		c.MessagesPerUser = 120
	}
	if c.UnknownNamesPerUser == 0 {
		c.UnknownNamesPerUser = 30
	}
	if c.ServiceFailuresPerAddress == 0 {
		c.ServiceFailuresPerAddress = 60
	}
	if c.ServiceRequestsPerApp == 0 {
		c.ServiceRequestsPerApp = 600_000
	}
	if c.AppQuotaMiB == 0 {
		c.AppQuotaMiB = 1024
	}
	if c.CounterFlush == 0 {
		c.CounterFlush = 200 * time.Millisecond
	}
	if c.PasswordWorkers == 0 {
		c.PasswordWorkers = functions.DefaultPasswordWorkers()
	}
	if c.PasswordQueue == 0 {
		c.PasswordQueue = 32 * c.PasswordWorkers
	}
}

// validOrigin checks a browser origin allowed by CORS: scheme://host[:port] of http or
// https, and at most a trailing "/" (no "*" anywhere: the API takes bearer tokens, and an
// operator names each site that may call it).
func validOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || strings.ContainsAny(o, ", \t*") || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" ||
		u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return fmt.Errorf("%q is not an origin: want scheme://host[:port], such as https://app.example", o)
	}
	return nil
}
