package edge

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Node is one sessiond process: its replica in bbolt, its HTTP API and UI, and its place
// in the cluster. Create it with NewNode, then Start and Close it once each.
type Node struct {
	cfg Config
	log *slog.Logger

	db       *storage.DB
	app      *fiber.App
	conns    httpConns                               // app's open connections (conns.go)
	handler  atomic.Pointer[fasthttp.RequestHandler] // app's, once it exists: serves forwarded requests
	ln       net.Listener
	metrics  *metrics
	headers  responseHeaders
	tokens   *tokens
	signing  *signing      // the signing keys' ring and records (signing.go)
	keysKick chan struct{} // a signing key record changed (onCommit → signing.run)
	appsKick chan struct{} // an app's record changed (onCommit → endedSessionsLoop)
	removed  *removedNodes // nodes removed from the cluster for good (removed.go)
	broker   *broker
	users    *functions.Users
	sessions *functions.Sessions
	messages *functions.Messages
	apps     *functions.Apps
	kv       *functions.KV
	cluster  *functions.Cluster

	syncMetrics *cluster.Metrics // the replicator's, membership's and sync server's
	transport   *cluster.TLSTransport
	syncLn      net.Listener
	replicator  *cluster.Replicator
	membership  *cluster.Membership
	members     atomic.Pointer[cluster.Membership] // membership, for the sync server (memberID)

	counters   *cluster.Counters        // login and sign-up counts, cluster-wide (throttle.go)
	admin      *adminauth.Verifier      // admin routes' authentication (admin.go)
	backingUp  atomic.Bool              // a backup is being served (admin.go)
	backupConn atomic.Pointer[net.Conn] // its connection, while it is
	limits     *limiter

	requestContexts sync.Pool      // of *requestContext, reused by consistency
	awaiting        slots          // bookmark waits in progress, per client address (maxAwaitingPerAddress)
	exports         slots          // running exports, all under "" (maxExports)
	exportsPerUser  slots          // running exports per user (maxExportsPerUser)
	trusted         []netip.Prefix // cfg.TrustedProxies, parsed

	ready  atomic.Bool
	ctx    context.Context // ends when the node stops; request contexts derive from it
	cancel context.CancelFunc
	// relays ends when the node starts to stop, before it waits for its requests to end:
	// live streams relayed from another node (forward.go) end with it, as the node's own
	// streams do (broker.closeAll).
	relays     context.Context
	stopRelays context.CancelFunc
	wg         sync.WaitGroup // every goroutine Start starts

	closeOnce sync.Once
	closeErr  error
}

// NewNode returns a node for cfg after validating it. It opens nothing.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg.fillLimits()
	trusted, err := parseTrusted(cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, trusted: trusted, log: cfg.Logger.With("node", cfg.NodeName),
		keysKick: make(chan struct{}, 1), appsKick: make(chan struct{}, 1),
		removed:  newRemovedNodes(),
		awaiting: slots{limit: maxAwaitingPerAddress},
		exports:  slots{limit: maxExports}, exportsPerUser: slots{limit: maxExportsPerUser}}, nil
}

// Start opens the node's parts in dependency order — data directory and keys, bbolt, the
// cluster, the handlers, the HTTP listener — and undoes what it opened if a later step
// fails. It returns once the node serves. ctx bounds the start-up only: Start checks it
// between steps and, once it has ended, undoes what it opened and returns an error
// wrapping ctx.Err(); the node's life after Start is ended by Close.
func (n *Node) Start(ctx context.Context) (err error) {
	stopped := func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("start cancelled: %w", err)
		}
		return nil
	}
	if err := stopped(); err != nil {
		return err
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.relays, n.stopRelays = context.WithCancel(n.ctx)
	defer func() {
		if err != nil { // undo; the start's error is the one to return, the rest is logged
			if cerr := n.stopCluster(context.Background()); cerr != nil {
				n.log.Warn("undoing a failed start", slog.Any("err", cerr))
			}
			n.cancel()
			if n.db != nil {
				if cerr := n.db.Close(); cerr != nil {
					n.log.Warn("undoing a failed start", slog.Any("err", cerr))
				}
			}
		}
	}()
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	keys := n.cfg.ClusterKeys
	if len(keys) == 0 {
		if keys, err = loadOrCreateKey(n.cfg.DataDir); err != nil {
			return err
		}
	}
	n.broker = newBroker()
	commits := newCommitMetrics()
	n.db, err = storage.Open(filepath.Join(n.cfg.DataDir, storage.FileName), storage.Options{
		Timeout:  time.Second,
		Now:      n.cfg.Now,
		MaxSkew:  n.cfg.MaxSkew,
		Logger:   n.cfg.Logger.With("component", "storage", "node", n.cfg.NodeName),
		OnCommit: n.onCommit,
		OnBatch:  commits.observe,
	})
	if err != nil {
		return err
	}
	if err := stopped(); err != nil {
		return err
	}
	if err := n.removed.load(ctx, n.db); err != nil {
		return err
	}
	if n.removed.isSelfRemoved() {
		return fmt.Errorf("%w (node ID %s, data directory %s)", cluster.ErrRemoved, n.db.NodeID(), n.cfg.DataDir)
	}
	n.metrics = newMetrics(n.db, commits)
	if err := n.startCluster(keys); err != nil {
		return err
	}
	if err := stopped(); err != nil {
		return err
	}
	n.tokens = newTokens(keys, n.cfg.Now)
	if err := n.tokens.loadRetired(n.cfg.DataDir, keys); err != nil {
		return err
	}
	if err := n.startSigning(keys); err != nil {
		return err
	}
	n.admin = adminauth.NewVerifier(keys, n.cfg.NodeName, n.cfg.Now)
	n.limits = newLimiter(n.counters)
	n.limits.nodes = func() int { return 1 + n.replicator.Peers() }
	st := store{DB: n.db}
	if n.cfg.Replicas > 0 {
		st.remote = n.replicator
	}
	clock := n.db.Clock()
	passwords := functions.NewPasswordsWithLimits(functions.PasswordLimits{
		Workers: n.cfg.PasswordWorkers, Queue: n.cfg.PasswordQueue, MaxWait: n.cfg.PasswordWait, PerClient: n.cfg.PasswordPerClient,
		Observe: n.metrics.observeHash,
	})
	n.metrics.watchPasswords(passwords)
	n.users = &functions.Users{Store: st, Clock: clock, Passwords: passwords}
	n.sessions = &functions.Sessions{Store: st, Clock: clock, Passwords: passwords, TTL: n.cfg.SessionTTL, IdleTTL: n.cfg.IdleTTL, MaxSkew: n.cfg.MaxSkew,
		Subjects: n.db}
	n.messages = &functions.Messages{Store: st, Clock: clock}
	n.apps = &functions.Apps{Store: st, Clock: clock, MaxSkew: n.cfg.MaxSkew, Meter: usageMeter{n}}
	quota := &functions.Quota{Meter: usageMeter{n}, Own: appQuotas{n.db}}
	if n.cfg.AppQuotaMiB > 0 {
		quota.Bytes = int64(n.cfg.AppQuotaMiB) << 20
	}
	n.sessions.Quota = quota
	n.kv = &functions.KV{Store: st, Lister: kvLister{n.db}, Clock: clock, Quota: quota}
	n.cluster = &functions.Cluster{Membership: clusterView{n}}
	n.headers = newResponseHeaders(n.cfg.NodeName)
	n.app = n.newApp()
	h := n.app.Handler()
	n.handler.Store(&h) // forwarded requests may be served now

	n.ln, err = net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", n.cfg.HTTPAddr, err)
	}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		if err := n.app.Listener(countingListener{n.ln}); err != nil {
			n.log.Error("http server stopped", slog.Any("err", err))
		}
	}()
	go func() {
		defer n.wg.Done()
		n.sweepLoop()
	}()
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.becomeReady()
	}()
	go func() {
		defer n.wg.Done()
		n.signing.run(n.ctx)
	}()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.endedSessionsLoop()
	}()
	n.log.Info("node started", "http", n.ln.Addr().String(), "gossip", n.membership.Addr()+" (tcp, udp)",
		"sync", n.syncLn.Addr().String(), "region", n.cfg.Region, "id", n.db.NodeID().String())
	return nil
}

// HTTPAddr returns the address the API listens on (useful with ":0").
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

// AdminIdentity returns what admin requests to this node are signed for (package
// adminauth): its name and a value drawn at its start.
func (n *Node) AdminIdentity() string { return n.admin.Identity() }

// sweepLoop removes sessions past their absolute expiry, and key-value and subjects'
// records past their keep time, until the node stops.
func (n *Node) sweepLoop() {
	t := time.NewTicker(n.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if k, err := n.db.Sweep(n.ctx, n.cfg.Now()); err != nil {
				n.log.Warn("expiry sweep failed", slog.Any("err", err))
			} else if k > 0 {
				n.log.Debug("expired records removed", "count", k)
			}
		}
	}
}

// Close stops the node in reverse order: not ready, live streams ended, in-flight requests
// finished (bounded by ctx and ShutdownTimeout), background goroutines stopped, bbolt
// closed last. It is safe to call more than once, keeps going after an error and returns
// the first.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		n.ready.Store(false)
		ctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		// Leave first: the other nodes stop forwarding here and take over what this node
		// held at once, while it finishes its requests.
		if n.membership != nil {
			if err := n.membership.Close(ctx); err != nil { // stopCluster's Close does nothing more
				errs = append(errs, fmt.Errorf("leave cluster: %w", err))
			}
		}
		if n.broker != nil {
			n.broker.closeAll()
		}
		if n.stopRelays != nil {
			n.stopRelays()
		}
		if n.app != nil {
			// Connections waiting for a request close now, and those fasthttp picks up
			// while it stops (conns.go).
			stopped := make(chan struct{})
			var closer sync.WaitGroup
			closer.Go(func() { n.conns.closeWaitingUntil(stopped, 20*time.Millisecond, requestGrace) })
			if err := n.app.ShutdownWithContext(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shut down http: %w", err))
			}
			close(stopped)
			closer.Wait()
		}
		if n.replicator != nil && !n.removed.isSelfRemoved() { // a removed node's peers refuse it
			// What this node acknowledged last reaches its peers before it goes.
			dctx, dcancel := context.WithTimeout(ctx, drainTimeout)
			if err := n.replicator.Drain(dctx); err != nil {
				n.log.Warn("stopping before every peer had this node's last writes; anti-entropy brings them once it is back", slog.Any("err", err))
			}
			dcancel()
		}
		if err := n.stopCluster(ctx); err != nil {
			errs = append(errs, err)
		}
		if n.cancel != nil {
			n.cancel()
		}
		n.cutBackup()
		n.wg.Wait()
		if n.db != nil {
			if err := n.db.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close storage: %w", err))
			}
		}
		if len(errs) > 0 {
			n.closeErr = errs[0]
		}
		n.log.Info("node stopped")
	})
	return n.closeErr
}

// runID returns a random ID for this run of the node (cluster.CountersConfig.Self).
func runID() crdt.NodeID {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return crdt.NodeID(binary.BigEndian.Uint64(b[:]) | 1)
}

// requestGrace is how long a stopping node waits for the rest of a request that had
// begun to arrive (conns.go).
const requestGrace = 2 * time.Second

// drainTimeout bounds how long a stopping node waits for its last writes to reach its
// peers (cluster.Replicator.Drain); a peer that cannot be reached does not hold it up
// longer.
const drainTimeout = 3 * time.Second

// onCommit is storage's commit hook: it wakes the live streams and the replicator. It
// must not block.
func (n *Node) onCommit(changes []storage.Change) {
	n.broker.publish(changes)
	signingKeysChanged(changes, n.keysKick)
	appsChanged(changes, n.appsKick)
	n.removed.changed(changes)
	if n.replicator != nil {
		n.replicator.Notify()
	}
}

// becomeReady marks the node ready: at once for a node that joins nobody, else once it
// has caught up with a peer by anti-entropy, or CatchUpTimeout passed (no peer reachable:
// the node serves what it has rather than nothing).
func (n *Node) becomeReady() {
	if len(n.cfg.Join) > 0 {
		t := time.NewTimer(n.cfg.CatchUpTimeout)
		defer t.Stop()
		select {
		case <-n.ctx.Done():
			return
		case <-n.replicator.CaughtUp():
			n.log.Info("caught up with the cluster")
		case <-t.C:
			n.log.Warn("no peer reachable to catch up from; serving local state", "waited", n.cfg.CatchUpTimeout)
		}
	}
	if n.joining() {
		// Caught up: take this node's share of the partitions, here and in the cluster.
		n.replicator.Joined()
		if err := n.membership.Joined(); err != nil {
			n.log.Warn("could not tell the cluster this node joined; it will hold nothing until it can", slog.Any("err", err))
		}
	}
	n.ready.Store(true)
	n.signing.poke() // it may create the cluster's first signing key now
}

// joining reports whether this node starts by catching up before it takes its share of
// the partitions: with placement, when it joins others.
func (n *Node) joining() bool { return n.cfg.Replicas > 0 && len(n.cfg.Join) > 0 }

// StorageFailed returns a channel that is closed when the node's storage fails (a full
// disk, an I/O error: storage.ErrFailed): it then refuses every write, /healthz and
// /readyz answer 503, and the process should Close the node and exit, so that its peers
// and load balancers route around it; started again once the cause is mended, it
// recovers every acknowledged write from its write-ahead log.
func (n *Node) StorageFailed() <-chan struct{} { return n.db.Failed() }

func (n *Node) storageFailed() bool {
	select {
	case <-n.db.Failed():
		return true
	default:
		return false
	}
}

// Ready reports whether /readyz says ready.
func (n *Node) Ready() bool { return n.ready.Load() }

// startCluster starts the sync transport, the replicator and serf membership, in that
// order, so that a peer that learns of us can reach our sync channel.
func (n *Node) startCluster(keys [][]byte) error {
	syncAddr, err := n.cfg.syncAddr()
	if err != nil {
		return err
	}
	cm := cluster.NewMetrics()
	n.metrics.reg.MustRegister(cm.Collectors()...)
	n.syncMetrics = cm
	var seeds, gossipKeys [][]byte
	for _, k := range keys {
		seeds = append(seeds, deriveKey(k, purposeSync))
		gossipKeys = append(gossipKeys, deriveKey(k, purposeGossip))
	}
	if n.transport, err = cluster.NewTLSTransport(seeds, cm); err != nil {
		return err
	}
	n.replicator = cluster.NewReplicator(cluster.Config{
		DB: n.db, Transport: n.transport, Name: n.cfg.NodeName, Region: n.cfg.Region, Replicas: n.cfg.Replicas,
		Joining:          n.joining(),
		AntiEntropyEvery: n.cfg.AntiEntropyEvery, Now: n.cfg.Now,
		MaxSkew: n.cfg.MaxSkew, FetchTimeout: n.cfg.BookmarkTimeout, MoveRate: max(n.cfg.MoveRate, -1) << 20,
		Logger: n.cfg.Logger.With("component", "replicator", "node", n.cfg.NodeName), Metrics: cm,
		OnRemoved: n.removed.refused,
	})
	n.removed.setPersist(n.persistRemoved) // before any peer can refuse this node
	n.replicator.Guard().SetRemoved(n.removed.has, n.memberID)
	n.transport.SetGuard(n.replicator.Guard(), n.cfg.NodeName, n.db.NodeID()) // one account of each faulty peer, both ways
	n.replicator.Start()
	if n.counters, err = cluster.NewCounters(cluster.CountersConfig{
		Self: runID(), Transport: n.transport, Windows: counterWindows(), FlushEvery: n.cfg.CounterFlush,
		Now: n.cfg.Now, Logger: n.cfg.Logger.With("component", "counters", "node", n.cfg.NodeName),
	}); err != nil {
		return err
	}
	n.counters.Start()
	if syncAddr, err = cluster.ResolveBindAddr(n.ctx, syncAddr); err != nil {
		return fmt.Errorf("sync address: %w", err)
	}
	if n.syncLn, err = net.Listen("tcp", syncAddr); err != nil {
		return fmt.Errorf("listen for sync on %s: %w", syncAddr, err)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.transport.HandleForward(n.serveForwarded)
		if err := n.transport.Serve(n.syncLn, cluster.WithCounters(n.replicator, n.counters)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("sync server stopped", slog.Any("err", err))
		}
	}()
	n.membership, err = cluster.StartMembership(cluster.MembershipConfig{
		NodeName: n.cfg.NodeName, Region: n.cfg.Region, ID: n.db.NodeID(),
		BindAddr: n.cfg.GossipAddr, Advertise: n.cfg.Advertise, SyncAddr: n.syncLn.Addr().String(), Replicas: n.cfg.Replicas,
		Joining:    n.joining(),
		GossipKeys: gossipKeys, Join: n.cfg.Join, Fast: n.cfg.FastGossip, Protocol: n.syncProtocols(),
		Snapshot: filepath.Join(n.cfg.DataDir, "serf.snapshot"),
		Root:     func() uint64 { d := n.db.Digest(); return d.Root() },
		Removed:  n.removed.has,
		OnPeers: func(p, down []cluster.Peer) {
			n.replicator.SetMembership(p, down)
			n.counters.SetPeers(p)
			n.transport.SetPeers(p)
		},
		OnNotice: n.replicator.Notice,
		Logger:   n.cfg.Logger.With("component", "membership", "node", n.cfg.NodeName),
		Metrics:  cm,
	})
	if err != nil {
		return err
	}
	n.removed.setOnAdd(n.membership.Refresh)
	n.members.Store(n.membership)
	return nil
}

// memberID returns the node ID of the member called name in membership's view, for the
// sync server (cluster.Guard.SetRemoved); none before membership starts.
func (n *Node) memberID(name string) (crdt.NodeID, bool) {
	if m := n.members.Load(); m != nil {
		return m.IDOf(name)
	}
	return 0, false
}

// persistRemoved writes this node's own removal record (removedNodes.refused), bounded
// by removalWriteTimeout; a failure is logged, and the node stops all the same.
func (n *Node) persistRemoved() {
	ctx, cancel := context.WithTimeout(context.Background(), removalWriteTimeout)
	defer cancel()
	self := cluster.Member{Name: n.cfg.NodeName, ID: n.db.NodeID()}
	if err := n.recordRemoved(ctx, self); err != nil {
		n.log.Error("could not record that this node was removed; it stops all the same", slog.Any("err", err))
	}
}

// removalWriteTimeout bounds persistRemoved's write.
const removalWriteTimeout = 5 * time.Second

// stopCluster leaves the cluster (bounded by ctx), then stops the replicator and the sync
// server. It keeps going after an error and returns the first.
func (n *Node) stopCluster(ctx context.Context) error {
	var first error
	if n.membership != nil {
		// Bounded by serf's leave timeouts (cluster.Membership.Close), not by ctx.
		if err := n.membership.Close(ctx); err != nil {
			first = fmt.Errorf("leave cluster: %w", err)
		}
		n.membership = nil
	}
	if n.replicator != nil {
		n.replicator.Close()
	}
	if n.counters != nil {
		n.counters.Close()
	}
	if n.transport != nil {
		if err := n.transport.Shutdown(ctx); err != nil && first == nil {
			first = fmt.Errorf("stop sync server: %w", err)
		}
		n.transport = nil
	}
	return first
}

// clusterView shows the cluster to functions: serf's members with replication lag.
type clusterView struct{ n *Node }

func (v clusterView) Self() functions.Member {
	return functions.Member{
		Name: v.n.cfg.NodeName, ID: v.n.db.NodeID().String(), Region: v.n.cfg.Region,
		Status: "alive", Addr: v.n.membership.Advertised(),
	}
}

// Placement implements functions.Membership.
func (v clusterView) Placement() *functions.Placement {
	if v.n.cfg.Replicas == 0 {
		return nil
	}
	share, ideal, _ := v.n.replicator.Share(v.n.db.NodeID(), v.n.cfg.Region)
	h := v.n.replicator.Handoff()
	return &functions.Placement{Replicas: v.n.cfg.Replicas, Partitions: crdt.Partitions, Holds: share, Ideal: math.Round(ideal*10) / 10,
		Moving: functions.Moving{Partitions: h.Partitions, Keys: h.Keys, Dropped: h.Dropped}}
}

func (v clusterView) Members() []functions.Member {
	status := v.n.replicator.Status()
	var out []functions.Member
	for _, m := range v.n.membership.Members() {
		fm := functions.Member{Name: m.Name, ID: m.ID.String(), Region: m.Region, Status: m.Status, Addr: m.Addr}
		if v.n.cfg.Replicas > 0 {
			if share, _, ok := v.n.replicator.Share(m.ID, m.Region); ok {
				fm.Partitions = &share
			}
		}
		if m.ID != v.n.db.NodeID() {
			lag := int64(-1)
			if st, ok := status[m.ID]; ok && st.Lag >= 0 {
				lag = st.Lag.Milliseconds()
			}
			fm.LagMS = &lag
		}
		out = append(out, fm)
	}
	return out
}
