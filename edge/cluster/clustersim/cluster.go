package clustersim

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// config is what New's options set.
type config struct {
	seed             int64
	antiEntropyEvery time.Duration // default 300ms
	maxSkew          time.Duration // default 1 minute
	faults           Faults
	manualPeers      bool                    // never call SetPeers: the test drives SyncWith itself
	pushBatch        int                     // changes per push; 0: the Replicator's default
	maxMessage       int                     // sync message bound; 0: cluster.MaxMessage
	replicas         int                     // holders of each partition per region; 0: every node
	debugLogs        bool                    // route every node's debug logs to t.Log, not only warnings
	protocols        []cluster.ProtocolRange // node i's, from the start; see SetProtocols
	offerTimeout     time.Duration           // handoff's bound on each call; 0: the Replicator's default
}

// An Option configures New.
type Option func(*config)

// WithSeed seeds the network's fault decisions (default 1).
func WithSeed(s int64) Option {
	return func(c *config) { c.seed = s }
}

// WithFaults sets the network's fault probabilities from the start (default none).
func WithFaults(f Faults) Option {
	return func(c *config) { c.faults = f }
}

// WithAntiEntropy sets every replicator's anti-entropy period (default 300ms).
func WithAntiEntropy(d time.Duration) Option {
	return func(c *config) { c.antiEntropyEvery = d }
}

// WithMaxSkew sets how far ahead of a node's clock a write may be stamped and still be
// applied, for storage and replicators (default 1 minute).
func WithMaxSkew(d time.Duration) Option {
	return func(c *config) { c.maxSkew = d }
}

// WithPushBatch sets how many changes a push carries at most (default: the
// Replicator's).
func WithPushBatch(n int) Option {
	return func(c *config) { c.pushBatch = n }
}

// WithMaxMessage lowers the sync message bound, of the transport and the replicators.
func WithMaxMessage(n int) Option {
	return func(c *config) { c.maxMessage = n }
}

// WithReplicas makes each region's nodes share the partitions, n holders each.
func WithReplicas(n int) Option {
	return func(c *config) { c.replicas = n }
}

// WithOfferTimeout sets every replicator's bound on each call of a handoff offer
// (cluster.Config.OfferTimeout; default: the Replicator's).
func WithOfferTimeout(d time.Duration) Option {
	return func(c *config) { c.offerTimeout = d }
}

// WithManualPeers never calls SetPeers: replicators know no peer, and the test drives
// Replicator.SyncWith itself.
func WithManualPeers() Option {
	return func(c *config) { c.manualPeers = true }
}

// WithProtocols makes node i speak the sync protocol versions ranges[i] from the start
// (nodes beyond the list: cluster.Supported()); see SetProtocols.
func WithProtocols(ranges ...cluster.ProtocolRange) Option {
	return func(c *config) { c.protocols = ranges }
}

// WithDebugLogs routes every node's debug logs to t.Log; by default only warnings and
// errors are logged.
func WithDebugLogs(on bool) Option {
	return func(c *config) { c.debugLogs = on }
}

// Cluster is n nodes in one process, each a storage.DB, a cluster.Replicator and the
// functions handlers, over a Network. Membership is the test's: every live node is
// given as peers the live nodes it can "see" — all of them, or after Partition only those
// on its side (serf's failure detection). Cut partitions the transport while membership
// still sees everyone.
//
// Its methods are safe for concurrent use, except those that add nodes (AddNode,
// JoinNode, StartJoining), which only the test goroutine may call: Nodes is read without
// a lock.
type Cluster struct {
	// Nodes are the cluster's nodes by index, live or not, in the order they were added.
	// The test must not change the slice.
	Nodes []*Node
	// Net is the network the nodes talk over.
	Net *Network
	// Model records every write acknowledged through a node's handlers or Store.
	Model *Model

	t      testing.TB
	cfg    config
	start  time.Time
	events events

	mu        sync.Mutex // topology; taken before any node's mu
	groups    map[int]int
	followNet bool         // membership sees the partition
	frozen    map[int]bool // nodes whose membership no longer changes (Freeze)
	faulty    []*Faulty    // faulty peers every honest node sees (AddFaulty)
}

// events counts the faults a cluster went through.
type events struct {
	partitions, cuts, kills, wipes atomic.Int64
}

// Events counts what a cluster went through so far.
type Events struct {
	Partitions int64 // Partition and PartitionRegions with membership following
	Cuts       int64 // Cut and PartitionRegions with membership not following
	Kills      int64
	Wipes      int64
}

// Events returns the faults the cluster went through so far.
func (c *Cluster) Events() Events {
	return Events{Partitions: c.events.partitions.Load(), Cuts: c.events.cuts.Load(),
		Kills: c.events.kills.Load(), Wipes: c.events.wipes.Load()}
}

// Node is one node. Its clock is real time plus an offset the test sets (SetOffset).
type Node struct {
	Name   string // also its address on the Network
	Region string

	c      *Cluster
	path   string
	offset atomic.Int64 // ns
	// joining: the node starts as joining (Config.Joining) and tells its peers so, until
	// the test makes it join (MarkJoined).
	joining atomic.Bool
	// protocols is the range of sync protocol versions the node speaks (SetProtocols);
	// nil: cluster.Supported().
	protocols atomic.Pointer[cluster.ProtocolRange]

	mu       sync.RWMutex
	db       *storage.DB
	rep      *cluster.Replicator
	metrics  *cluster.Metrics
	rejected *countingCounter
	api      API
}

// API is a node's handlers over its replica, writing through a Store, so the model
// learns what they acknowledge. After a kill they stay usable and fail, as requests to a
// crashed process would.
type API struct {
	DB       *storage.DB
	Users    *functions.Users
	Sessions *functions.Sessions
	Messages *functions.Messages
}

// countingCounter is a prometheus counter whose total the test can read.
type countingCounter struct {
	prometheus.Counter
	n atomic.Int64
}

func (c *countingCounter) Add(v float64) { c.Counter.Add(v); c.n.Add(int64(v)) }
func (c *countingCounter) Inc()          { c.Counter.Inc(); c.n.Add(1) }

// New starts n nodes named n0…, spread over regions in turn, each with its
// own bbolt file in t.TempDir(), and connects them all. Cleanup closes them.
func New(t testing.TB, n int, regions []string, opts ...Option) *Cluster {
	t.Helper()
	cfg := config{seed: 1, antiEntropyEvery: 300 * time.Millisecond, maxSkew: time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	c := &Cluster{t: t, cfg: cfg, Net: NewNetwork(cfg.seed), Model: newModel(), start: time.Now(), groups: map[int]int{}}
	c.Net.SetFaults(cfg.faults)
	if cfg.maxMessage > 0 {
		c.Net.maxMessage = cfg.maxMessage
	}
	for i := range n {
		dir := t.TempDir()
		c.Nodes = append(c.Nodes, &Node{c: c, Name: fmt.Sprintf("n%d", i),
			Region: regions[i%len(regions)], path: filepath.Join(dir, "sessiond.db")})
		if i < len(cfg.protocols) {
			r := cfg.protocols[i]
			if !r.Valid() {
				t.Fatalf("WithProtocols: node %d: %s; this build speaks %s", i, r, cluster.Supported())
			}
			c.Nodes[i].protocols.Store(&r)
		}
	}
	t.Cleanup(c.close)
	for _, nd := range c.Nodes {
		if err := nd.start(); err != nil {
			t.Fatalf("start %s: %v", nd.Name, err)
		}
	}
	c.updatePeers()
	return c
}

// Logf logs through the cluster's test, stamped with the time since New.
func (c *Cluster) Logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("%7s "+format, append([]any{time.Since(c.start).Round(time.Millisecond)}, args...)...)
}

// close stops every node: all replicators first, so no node calls into a closing one.
func (c *Cluster) close() {
	for _, n := range c.Nodes {
		c.Net.Unregister(n.Name)
		if r := n.Rep(); r != nil {
			r.Close()
		}
	}
	for _, n := range c.Nodes {
		n.stop()
	}
}

// Now is the node's clock.
func (n *Node) Now() time.Time { return time.Now().Add(n.Offset()) }

// Offset returns how far the node's clock is ahead of real time (SetOffset).
func (n *Node) Offset() time.Duration { return time.Duration(n.offset.Load()) }

// Rejected returns how many changes the node's replicator has rejected so far, such as
// writes stamped too far ahead of its clock (Metrics.Rejected), since it last started.
func (n *Node) Rejected() int64 {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.rejected.n.Load()
}

// Metrics returns the replication metrics of the node's current run (nil before it
// first started).
func (n *Node) Metrics() *cluster.Metrics {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.metrics
}

// DB returns the node's replica, or nil while it is down.
func (n *Node) DB() *storage.DB {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.db
}

// Rep returns the node's replicator, or nil while it is down.
func (n *Node) Rep() *cluster.Replicator {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.rep
}

// API returns the node's handlers (failing ones while it is down).
func (n *Node) API() API {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.api
}

// Alive reports whether the node is up.
func (n *Node) Alive() bool { return n.DB() != nil }

// started reports whether the node ever ran (its API has a file, open or closed).
func (n *Node) started() bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.api.DB != nil
}

// Peer returns how other nodes address this one.
func (n *Node) Peer() cluster.Peer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return cluster.Peer{ID: n.api.DB.NodeID(), Name: n.Name, Region: n.Region, Addr: n.Name, Joining: n.joining.Load()}
}

// start opens the node's file (creating it, with a new node ID, if absent) and starts
// its replicator. n.mu must not be held.
func (n *Node) start() error {
	c := n.c
	level := slog.LevelWarn
	if c.cfg.debugLogs {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(tWriter{t: c.t, prefix: n.Name + ": "}, &slog.HandlerOptions{Level: level}))
	var holder atomic.Pointer[cluster.Replicator]
	db, err := storage.Open(n.path, storage.Options{
		Now: n.Now, MaxSkew: c.cfg.maxSkew, Logger: logger.With("component", "storage"),
		OnCommit: func([]storage.Change) {
			if r := holder.Load(); r != nil {
				r.Notify()
			}
		},
	})
	if err != nil {
		return err
	}
	m := cluster.NewMetrics()
	rejected := &countingCounter{Counter: m.Rejected}
	m.Rejected = rejected
	rep := cluster.NewReplicator(cluster.Config{
		DB: db, Transport: c.Net.Transport(n.Name), Name: n.Name, Region: n.Region, Replicas: c.cfg.replicas,
		Joining:          n.joining.Load(),
		AntiEntropyEvery: c.cfg.antiEntropyEvery,
		OfferTimeout:     c.cfg.offerTimeout,
		PushBatch:        c.cfg.pushBatch, MaxMessage: c.cfg.maxMessage, MaxSkew: c.cfg.maxSkew, Now: n.Now, Logger: logger.With("component", "replicator"), Metrics: m,
	})
	rep.Start()
	holder.Store(rep)
	st := Store{DB: db, Model: c.Model}
	clock := db.Clock()
	n.mu.Lock()
	n.db, n.rep, n.rejected, n.metrics = db, rep, rejected, m
	n.api = API{
		DB:       db,
		Users:    &functions.Users{Store: st, Clock: clock, Passwords: Passwords()},
		Sessions: &functions.Sessions{Store: st, Clock: clock, Passwords: Passwords(), TouchEvery: time.Millisecond},
		Messages: &functions.Messages{Store: st, Clock: clock},
	}
	n.mu.Unlock()
	c.Net.Register(n.Name, db.NodeID(), rep)
	return nil
}

// stop takes the node down as a crash would: its endpoint disappears (calls in flight
// lose their replies), then the replicator and the file close. n.mu must not be held.
func (n *Node) stop() {
	n.c.Net.Unregister(n.Name)
	n.mu.Lock()
	rep, db := n.rep, n.db
	n.rep, n.db = nil, nil
	n.mu.Unlock()
	if rep != nil {
		rep.Close()
	}
	if db != nil {
		if err := db.Close(); err != nil {
			n.c.t.Errorf("close %s: %v", n.Name, err)
		}
	}
}

// tWriter routes a node's logs to t.Log.
type tWriter struct {
	t      testing.TB
	prefix string
}

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// viewLocked returns the peers node i's membership sees now, each with the protocol
// version the two speak (Peer.Proto); a peer that shares none with node i is left out, as
// membership leaves it out. c.mu is held.
func (c *Cluster) viewLocked(i int) []cluster.Peer {
	var out []cluster.Peer
	mine := c.Nodes[i].Protocols()
	for j, n := range c.Nodes {
		if j == i || !n.Alive() || (c.followNet && c.groups[i] != c.groups[j]) {
			continue
		}
		p := n.Peer()
		var ok bool
		if p.Proto, ok = mine.Common(n.Protocols()); !ok {
			continue
		}
		out = append(out, p)
	}
	for _, f := range c.faulty {
		out = append(out, f.Peer())
	}
	return out
}

// downLocked returns the peers node i's membership sees failed: those down, and, when
// membership follows the network, those across a partition. c.mu is held.
func (c *Cluster) downLocked(i int) []cluster.Peer {
	var out []cluster.Peer
	mine := c.Nodes[i].Protocols()
	for j, n := range c.Nodes {
		if j == i || n.Alive() && !(c.followNet && c.groups[i] != c.groups[j]) {
			continue
		}
		if _, ok := mine.Common(n.Protocols()); ok && n.started() {
			out = append(out, n.Peer()) // a node down keeps the ID it last ran with
		}
	}
	return out
}

// updatePeers tells every live node's replicator the peers it sees, live and failed.
func (c *Cluster) updatePeers() {
	if c.cfg.manualPeers {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.Nodes {
		if r := n.Rep(); r != nil && !c.frozen[i] {
			r.SetMembership(c.viewLocked(i), c.downLocked(i))
		}
	}
}

// SetProtocols makes node i speak the sync protocol versions r from now on, as a node
// upgraded (or pinned to an older release's version) would announce; a rolling upgrade
// kills a node, sets its range and restarts it. r must lie within cluster.Supported().
func (c *Cluster) SetProtocols(i int, r cluster.ProtocolRange) {
	c.t.Helper()
	if !r.Valid() {
		c.t.Fatalf("SetProtocols(%d, %s): this build speaks %s", i, r, cluster.Supported())
	}
	c.Nodes[i].protocols.Store(&r)
	c.Logf("%s speaks sync protocol %s", c.Nodes[i].Name, r)
	c.updatePeers()
}

// Protocols returns the sync protocol versions the node speaks (SetProtocols).
func (n *Node) Protocols() cluster.ProtocolRange {
	if r := n.protocols.Load(); r != nil {
		return *r
	}
	return cluster.Supported()
}

// Freeze keeps node i's membership as it is now, whatever happens later: a node that
// misses gossip, and so goes by an old placement.
func (c *Cluster) Freeze(i int) {
	c.mu.Lock()
	if c.frozen == nil {
		c.frozen = map[int]bool{}
	}
	c.frozen[i] = true
	c.mu.Unlock()
	c.Logf("freeze the membership of %s", c.Nodes[i].Name)
}

// Partition splits the network into groups (node indexes; unlisted nodes form one more
// group) and membership follows: each node sees only the peers on its side.
func (c *Cluster) Partition(groups ...[]int) { c.partition(true, groups) }

// Cut splits the network like Partition, but membership still sees every peer, so
// replicators keep trying and every call across the cut fails.
func (c *Cluster) Cut(groups ...[]int) { c.partition(false, groups) }

// PartitionRegions partitions by region: each listed set of regions is one side.
func (c *Cluster) PartitionRegions(follow bool, regions ...[]string) {
	var groups [][]int
	for _, rs := range regions {
		var g []int
		for i, n := range c.Nodes {
			if slices.Contains(rs, n.Region) {
				g = append(g, i)
			}
		}
		groups = append(groups, g)
	}
	c.partition(follow, groups)
}

func (c *Cluster) partition(follow bool, groups [][]int) {
	c.mu.Lock()
	c.groups, c.followNet = map[int]int{}, follow
	for i := range c.Nodes {
		c.groups[i] = len(groups) + 1
	}
	byAddr := map[string]int{}
	for g, members := range groups {
		for _, i := range members {
			c.groups[i] = g + 1
		}
	}
	for i, n := range c.Nodes {
		byAddr[n.Name] = c.groups[i]
	}
	c.mu.Unlock()
	c.Net.SetGroups(byAddr)
	c.Logf("partition %v (membership follows: %v)", groups, follow)
	if follow {
		c.events.partitions.Add(1)
	} else {
		c.events.cuts.Add(1)
	}
	c.updatePeers()
}

// CutOneWay makes node from's calls to node to fail; to's calls to from still work.
func (c *Cluster) CutOneWay(from, to int) {
	c.Net.CutOneWay(c.Nodes[from].Name, c.Nodes[to].Name)
	c.Logf("cut %s → %s", c.Nodes[from].Name, c.Nodes[to].Name)
}

// Heal removes every partition and cut.
func (c *Cluster) Heal() {
	c.mu.Lock()
	c.groups, c.followNet = map[int]int{}, false
	c.mu.Unlock()
	c.Net.Heal()
	c.Logf("heal")
	c.updatePeers()
}

// Kill crashes node i: endpoint down, replicator and file closed.
func (c *Cluster) Kill(i int) {
	c.Nodes[i].stop()
	c.Logf("kill %s", c.Nodes[i].Name)
	c.events.kills.Add(1)
	c.updatePeers()
}

// Restart reopens node i's file with a new replicator.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if err := c.Nodes[i].start(); err != nil {
		c.t.Fatalf("restart %s: %v", c.Nodes[i].Name, err)
	}
	c.Logf("restart %s", c.Nodes[i].Name)
	c.updatePeers()
}

// Wipe kills node i, deletes its file and starts it afresh: a new node ID, no data.
func (c *Cluster) Wipe(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	n.stop()
	if err := os.Remove(n.path); err != nil {
		c.t.Fatalf("wipe %s: %v", n.Name, err)
	}
	if err := n.start(); err != nil {
		c.t.Fatalf("wipe %s: restart: %v", n.Name, err)
	}
	c.Logf("wipe %s (now %s)", n.Name, n.DB().NodeID())
	c.events.wipes.Add(1)
	c.updatePeers()
}

// SetOffset sets node i's clock to real time + d.
func (c *Cluster) SetOffset(i int, d time.Duration) {
	c.Nodes[i].offset.Store(int64(d))
	c.Logf("clock of %s at %+v", c.Nodes[i].Name, d)
}

// Notices delivers a round of gossip notices: every live node announces its digest root
// to the peers that see it.
func (c *Cluster) Notices() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.Nodes {
		db := n.DB()
		if db == nil || c.cfg.manualPeers {
			continue
		}
		d := db.Digest()
		for _, p := range c.viewLocked(i) {
			for _, m := range c.Nodes {
				if m.Name == p.Addr {
					if r := m.Rep(); r != nil {
						r.Notice(db.NodeID(), d.Root())
					}
				}
			}
		}
	}
}

// Alive returns the indexes of the live nodes, in order.
func (c *Cluster) Alive() []int {
	var out []int
	for i, n := range c.Nodes {
		if n.Alive() {
			out = append(out, i)
		}
	}
	return out
}

// Dead returns the indexes of the nodes that are down, in order.
func (c *Cluster) Dead() []int {
	var out []int
	for i, n := range c.Nodes {
		if !n.Alive() {
			out = append(out, i)
		}
	}
	return out
}

// Group returns node i's side of the latest partition: nodes on the same side have the
// same group. With no partition, every node is in group 0.
func (c *Cluster) Group(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.groups[i]
}

// RestartAllAndHeal brings every node back and heals the network.
func (c *Cluster) RestartAllAndHeal() {
	for _, i := range c.Dead() {
		c.Restart(i)
	}
	c.Heal()
}

// WaitSameRoot waits until nodes i and j hold the same state (the same digest root),
// failing t after within.
func (c *Cluster) WaitSameRoot(t testing.TB, i, j int, within time.Duration) {
	t.Helper()
	WaitFor(t, within, func() (bool, string) {
		a, b := c.Nodes[i].DB(), c.Nodes[j].DB()
		if a == nil || b == nil {
			return false, "node down"
		}
		da, db := a.Digest(), b.Digest()
		return da.Root() == db.Root(), fmt.Sprintf("%s root %x, %s root %x", c.Nodes[i].Name, da.Root(), c.Nodes[j].Name, db.Root())
	})
}

// AddNode starts a new node in region and adds it to every live node's peers. It
// returns the node's index. Only the test goroutine may call it.
func (c *Cluster) AddNode(region string) int { return c.addNode(region, false) }

// JoinNode starts a new node in region as a joining node (Config.Joining): it holds
// nothing until it has caught up, then takes its share. It fails the test if the node
// holds a partition while joining or does not catch up within 30s, and returns the
// node's index. Only the test goroutine may call it.
func (c *Cluster) JoinNode(region string) int {
	c.t.Helper()
	i := c.StartJoining(region)
	n := c.Nodes[i]
	tab := c.Table()
	if s := tab.Share(n.Peer().ID); s != 0 {
		c.t.Errorf("%s holds %d partitions while joining", n.Name, s)
	}
	select {
	case <-n.Rep().CaughtUp():
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not catch up within 30s", n.Name)
	}
	c.MarkJoined(i)
	c.Logf("%s joined", n.Name)
	return i
}

// StartJoining starts a new node in region as a joining node (Config.Joining), for a
// test that waits for it in its own way before MarkJoined. It returns the node's index.
// Only the test goroutine may call it.
func (c *Cluster) StartJoining(region string) int { return c.addNode(region, true) }

// MarkJoined ends node i's joining (Replicator.Joined): it takes its share, and its
// peers learn so.
func (c *Cluster) MarkJoined(i int) {
	n := c.Nodes[i]
	n.Rep().Joined()
	n.joining.Store(false)
	c.updatePeers()
}

func (c *Cluster) addNode(region string, joining bool) int {
	c.t.Helper()
	n := &Node{c: c, Name: fmt.Sprintf("n%d", len(c.Nodes)), Region: region,
		path: filepath.Join(c.t.TempDir(), "sessiond.db")}
	n.joining.Store(joining)
	c.mu.Lock()
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	if err := n.start(); err != nil {
		c.t.Fatalf("start %s: %v", n.Name, err)
	}
	c.Logf("add %s in %s", n.Name, region)
	c.updatePeers()
	return len(c.Nodes) - 1
}

// AliveNodes returns the live nodes.
func (c *Cluster) AliveNodes() []*Node {
	var out []*Node
	for _, i := range c.Alive() {
		out = append(out, c.Nodes[i])
	}
	return out
}

// Passwords returns the one cheap hasher of every simulated node, for a test that builds
// handlers of its own over a node's Store: the simulation tests replication, not
// argon2's cost. (NewPasswords hashes its dummy at full cost once.)
func Passwords() *functions.Passwords { return passwords() }

var passwords = sync.OnceValue(func() *functions.Passwords {
	p := functions.NewPasswords(16)
	p.Time, p.Memory = 1, 8
	return p
})
