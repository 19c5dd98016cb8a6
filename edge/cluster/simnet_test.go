package cluster

import (
	"context"
	"encoding"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// simnet is an in-memory network for the Replicator: a registry of endpoints (one per live
// node, by sync address) and a fault injector. Every request and reply goes through
// MarshalBinary and UnmarshalBinary, so the wire format is exercised exactly as over TLS.
//
// Faults are decided per link (from, to) by a math/rand source seeded from the scenario's
// seed and the link, so a schedule is replayable up to goroutine interleaving:
//   - partition: nodes in different groups cannot call each other (an immediate error);
//   - one-way cuts: calls from → to fail, the other direction works;
//   - drop: the request is lost, or the reply is lost after the handler ran;
//   - delay: the call waits a random time first (returning early if ctx ends);
//   - duplicate: the request is delivered twice;
//   - replay: a push is kept and delivered again later, after newer pushes (a stale,
//     reordered duplicate).
//
// A node's endpoint that is not registered (killed) fails every call to it. simnet is
// safe for concurrent use.
type simnet struct {
	seed       uint64
	maxMessage int // requests and replies beyond it fail, as the TLS transport's do

	mu     sync.Mutex
	eps    map[string]*simEndpoint // by address
	group  map[string]int          // partition side by address; absent means 0
	oneway map[simLink]bool        // calls from → to fail
	faults simFaults
	rngs   map[simLink]*rand.Rand
	stash  map[string][][]byte // by destination: pushes kept for replay
	stats  map[simLink]*simStats
	// refuse, when set, is asked about every request before delivery: an error fails the
	// call as a peer that cannot take the message would.
	refuse func(kind string, req []byte) error
}

// simFaults are the probabilities (0..1) of each fault per call.
type simFaults struct {
	Drop      float64       // request lost before the handler
	DropReply float64       // reply lost after the handler ran
	Dup       float64       // request delivered twice
	Delay     float64       // call delayed by up to MaxDelay
	MaxDelay  time.Duration // default 5ms
	Replay    float64       // a push is kept for a later replay; the same chance replays one
}

func (f simFaults) String() string {
	return fmt.Sprintf("drop=%.2f dropreply=%.2f dup=%.2f delay=%.2f/%s replay=%.2f",
		f.Drop, f.DropReply, f.Dup, f.Delay, f.MaxDelay, f.Replay)
}

type simLink struct{ from, to string }

type simEndpoint struct {
	addr string
	id   crdt.NodeID
	h    Handler
}

// simStats counts the traffic of one link.
type simStats struct {
	Calls map[string]int // by kind: push, digest, leaves
	Bytes int            // requests and replies
}

var (
	errSimUnreachable = errors.New("simnet: unreachable")
	errSimDropped     = errors.New("simnet: request lost")
	errSimReplyLost   = errors.New("simnet: reply lost")
)

const simMaxStash = 8

func newSimnet(seed int64) *simnet {
	return &simnet{
		seed: uint64(seed), maxMessage: MaxMessage, eps: make(map[string]*simEndpoint), group: make(map[string]int),
		oneway: make(map[simLink]bool), rngs: make(map[simLink]*rand.Rand),
		stash: make(map[string][][]byte), stats: make(map[simLink]*simStats),
	}
}

// register makes addr reachable, answered by h as node id.
func (n *simnet) register(addr string, id crdt.NodeID, h Handler) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.eps[addr] = &simEndpoint{addr: addr, id: id, h: h}
}

// unregister makes addr unreachable: every call to it fails, including calls in flight
// whose reply has not been delivered yet.
func (n *simnet) unregister(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.eps, addr)
	delete(n.stash, addr)
}

// setGroups partitions the network: groups[addr] is the side of addr (absent: 0).
func (n *simnet) setGroups(groups map[string]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = groups
}

// cutOneWay makes calls from → to fail.
func (n *simnet) cutOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.oneway[simLink{from, to}] = true
}

// talk reports whether a and b can exchange data: one of them can call the other.
func (n *simnet) talk(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.group[a] == n.group[b] && (!n.oneway[simLink{a, b}] || !n.oneway[simLink{b, a}])
}

// heal removes every partition and one-way cut (probabilistic faults stay).
func (n *simnet) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = make(map[string]int)
	n.oneway = make(map[simLink]bool)
}

func (n *simnet) setFaults(f simFaults) {
	if f.MaxDelay <= 0 {
		f.MaxDelay = 5 * time.Millisecond
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = f
}

// resetStats clears the traffic counters.
func (n *simnet) resetStats() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stats = make(map[simLink]*simStats)
}

// linkStats returns the traffic from → to (requests from `from` and their replies).
func (n *simnet) linkStats(from, to string) simStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := simStats{Calls: map[string]int{}}
	if s := n.stats[simLink{from, to}]; s != nil {
		for k, v := range s.Calls {
			out.Calls[k] = v
		}
		out.Bytes = s.Bytes
	}
	return out
}

// reachableLocked reports whether from can call to now; n.mu is held.
func (n *simnet) reachableLocked(from string, to Peer) (*simEndpoint, error) {
	if _, ok := n.eps[from]; !ok {
		return nil, fmt.Errorf("%w: %s is down", errSimUnreachable, from)
	}
	ep, ok := n.eps[to.Addr]
	if !ok {
		return nil, fmt.Errorf("%w: %s is down", errSimUnreachable, to.Addr)
	}
	if ep.id != to.ID {
		return nil, fmt.Errorf("%w: %s is now node %s, not %s", errSimUnreachable, to.Addr, ep.id, to.ID)
	}
	if n.group[from] != n.group[to.Addr] {
		return nil, fmt.Errorf("%w: %s and %s are partitioned", errSimUnreachable, from, to.Addr)
	}
	if n.oneway[simLink{from, to.Addr}] {
		return nil, fmt.Errorf("%w: %s → %s is cut", errSimUnreachable, from, to.Addr)
	}
	return ep, nil
}

// simPlan is the fault decision for one call.
type simPlan struct {
	delay      time.Duration
	drop       bool
	dropReply  bool
	dup        bool
	stashIt    bool
	replay     []byte
	ep         *simEndpoint
	statsEntry *simStats
}

func (n *simnet) rngLocked(l simLink) *rand.Rand {
	r, ok := n.rngs[l]
	if !ok {
		h := fnv.New64a()
		h.Write([]byte(l.from + "\x00" + l.to))
		r = rand.New(rand.NewPCG(n.seed, h.Sum64()))
		n.rngs[l] = r
	}
	return r
}

func (n *simnet) plan(from string, to Peer, kind string, size int) (simPlan, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := simLink{from, to.Addr}
	st := n.stats[l]
	if st == nil {
		st = &simStats{Calls: map[string]int{}}
		n.stats[l] = st
	}
	st.Calls[kind]++
	st.Bytes += size
	ep, err := n.reachableLocked(from, to)
	if err != nil {
		return simPlan{}, err
	}
	r, f := n.rngLocked(l), n.faults
	p := simPlan{ep: ep, statsEntry: st}
	if r.Float64() < f.Delay {
		p.delay = time.Duration(r.Int64N(int64(f.MaxDelay)) + 1)
	}
	p.drop = r.Float64() < f.Drop
	p.dropReply = r.Float64() < f.DropReply
	p.dup = r.Float64() < f.Dup
	if kind == "push" {
		p.stashIt = r.Float64() < f.Replay
		if s := n.stash[to.Addr]; len(s) > 0 && r.Float64() < f.Replay {
			i := r.IntN(len(s))
			p.replay = s[i]
			n.stash[to.Addr] = append(s[:i:i], s[i+1:]...)
		}
	}
	return p, nil
}

func (n *simnet) keep(to string, req []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stash[to]
	if len(s) >= simMaxStash {
		s = s[1:]
	}
	n.stash[to] = append(s, req)
}

// call carries one request from → to and returns the encoded reply.
func (n *simnet) call(ctx context.Context, from string, to Peer, kind string, req []byte,
	deliver func(ctx context.Context, h Handler, req []byte) ([]byte, error)) ([]byte, error) {
	if len(req) > n.maxMessage {
		return nil, fmt.Errorf("sync %s to %s: message of %d bytes over the %d limit", kind, to.Name, len(req), n.maxMessage)
	}
	p, err := n.plan(from, to, kind, len(req))
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	refuse := n.refuse
	n.mu.Unlock()
	if refuse != nil {
		if err := refuse(kind, req); err != nil {
			return nil, fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
		}
	}
	if p.delay > 0 {
		timer := time.NewTimer(p.delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	ep, err := n.reachableLocked(from, to) // the link may have been cut while delayed
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if p.drop {
		return nil, errSimDropped
	}
	if p.replay != nil {
		_, _ = deliver(ctx, ep.h, p.replay) // a stale push arrives before this one
	}
	out, err := deliver(ctx, ep.h, req)
	if p.dup {
		out, err = deliver(ctx, ep.h, req)
	}
	if p.stashIt {
		n.keep(to.Addr, req)
	}
	if err != nil {
		return nil, fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
	}
	n.mu.Lock()
	_, err = n.reachableLocked(from, to)
	if err == nil && n.eps[to.Addr] != ep {
		err = fmt.Errorf("%w: %s restarted", errSimUnreachable, to.Addr)
	}
	p.statsEntry.Bytes += len(out)
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if p.dropReply {
		return nil, errSimReplyLost
	}
	if len(out) > n.maxMessage {
		return nil, fmt.Errorf("sync %s to %s: reply over %d bytes", kind, to.Name, n.maxMessage)
	}
	return out, nil
}

// setRefuse installs fn as the refuse hook (nil removes it).
func (n *simnet) setRefuse(fn func(kind string, req []byte) error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refuse = fn
}

// transport returns node from's client side of the network.
func (n *simnet) transport(from string) *simTransport { return &simTransport{net: n, from: from} }

// simTransport is one node's Transport over a simnet.
type simTransport struct {
	net  *simnet
	from string
}

var _ Transport = (*simTransport)(nil)

// decodeInto unmarshals b into a fresh *T.
func decodeInto[T any, P interface {
	*T
	encoding.BinaryUnmarshaler
}](b []byte) (T, error) {
	var v T
	err := P(&v).UnmarshalBinary(b)
	return v, err
}

func marshal(m encoding.BinaryMarshaler) []byte {
	b, err := m.MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err)) // the encoders never fail
	}
	return b
}

// Push implements Transport.
func (t *simTransport) Push(ctx context.Context, to Peer, req PushRequest) (PushReply, error) {
	out, err := t.net.call(ctx, t.from, to, "push", marshal(req), func(ctx context.Context, h Handler, b []byte) ([]byte, error) {
		r, err := decodeInto[PushRequest](b)
		if err != nil {
			return nil, err
		}
		rep, err := h.HandlePush(ctx, r)
		if err != nil {
			return nil, err
		}
		return marshal(rep), nil
	})
	if err != nil {
		return PushReply{}, err
	}
	return decodeInto[PushReply](out)
}

// Digest implements Transport.
func (t *simTransport) Digest(ctx context.Context, to Peer, req DigestRequest) (DigestReply, error) {
	out, err := t.net.call(ctx, t.from, to, "digest", marshal(req), func(ctx context.Context, h Handler, b []byte) ([]byte, error) {
		r, err := decodeInto[DigestRequest](b)
		if err != nil {
			return nil, err
		}
		rep, err := h.HandleDigest(ctx, r)
		if err != nil {
			return nil, err
		}
		return marshal(rep), nil
	})
	if err != nil {
		return DigestReply{}, err
	}
	return decodeInto[DigestReply](out)
}

// Leaves implements Transport.
func (t *simTransport) Leaves(ctx context.Context, to Peer, req LeavesRequest) (LeavesReply, error) {
	out, err := t.net.call(ctx, t.from, to, "leaves", marshal(req), func(ctx context.Context, h Handler, b []byte) ([]byte, error) {
		r, err := decodeInto[LeavesRequest](b)
		if err != nil {
			return nil, err
		}
		rep, err := h.HandleLeaves(ctx, r)
		if err != nil {
			return nil, err
		}
		return marshal(rep), nil
	})
	if err != nil {
		return LeavesReply{}, err
	}
	return decodeInto[LeavesReply](out)
}

// ---------------------------------------------------------------------------------------
// The simulated cluster: nodes on a simnet.

// clusterConfig configures newTestCluster.
type clusterConfig struct {
	seed             int64
	antiEntropyEvery time.Duration // default 300ms
	maxSkew          time.Duration // default 1 minute
	faults           simFaults
	manualPeers      bool // never call SetPeers: the test drives SyncWith itself
	pushBatch        int  // changes per push; 0: the Replicator's default
	maxMessage       int  // sync message bound; 0: MaxMessage
	replicas         int  // holders of each partition per region; 0: every node
}

type clusterOption func(*clusterConfig)

func withSeed(s int64) clusterOption {
	return func(c *clusterConfig) { c.seed = s }
}

func withFaults(f simFaults) clusterOption {
	return func(c *clusterConfig) { c.faults = f }
}

func withAntiEntropy(d time.Duration) clusterOption {
	return func(c *clusterConfig) { c.antiEntropyEvery = d }
}

func withMaxSkew(d time.Duration) clusterOption {
	return func(c *clusterConfig) { c.maxSkew = d }
}

func withPushBatch(n int) clusterOption {
	return func(c *clusterConfig) { c.pushBatch = n }
}

// withMaxMessage lowers the sync message bound, of the transport and the replicators.
func withMaxMessage(n int) clusterOption {
	return func(c *clusterConfig) { c.maxMessage = n }
}

// withReplicas makes each region's nodes share the partitions, n holders each.
func withReplicas(n int) clusterOption {
	return func(c *clusterConfig) { c.replicas = n }
}

func withManualPeers() clusterOption {
	return func(c *clusterConfig) { c.manualPeers = true }
}

// testCluster is n nodes in one process. Membership is the test's: every live node is
// given as peers the live nodes it can "see" — all of them, or after Partition only those
// on its side (serf's failure detection). Cut partitions the transport while membership
// still sees everyone.
type testCluster struct {
	t     testing.TB
	cfg   clusterConfig
	net   *simnet
	model *model
	nodes []*testNode
	start time.Time

	mu        sync.Mutex // topology; taken before any node's mu
	groups    map[int]int
	followNet bool         // membership sees the partition
	frozen    map[int]bool // nodes whose membership no longer changes (Freeze)
}

// testNode is one node. Its clock is real time plus an offset the schedule changes.
type testNode struct {
	c      *testCluster
	name   string
	region string
	path   string
	offset atomic.Int64 // ns
	// joining: the node starts as joining (Config.Joining) and tells its peers so, until
	// the test makes it join (Join).
	joining atomic.Bool

	mu       sync.RWMutex
	db       *storage.DB
	rep      *Replicator
	rejected *countingCounter
	api      nodeAPI
}

// nodeAPI is a node's handlers over its replica db. After a kill they stay usable and
// fail, as requests to a crashed process would.
type nodeAPI struct {
	db       *storage.DB
	users    *functions.Users
	sessions *functions.Sessions
	messages *functions.Messages
}

// countingCounter is a prometheus counter whose total the test can read.
type countingCounter struct {
	prometheus.Counter
	n atomic.Int64
}

func (c *countingCounter) Add(v float64) { c.Counter.Add(v); c.n.Add(int64(v)) }
func (c *countingCounter) Inc()          { c.Counter.Inc(); c.n.Add(1) }

// newTestCluster starts n nodes named n0…, spread over regions in turn, each with its
// own bbolt file in t.TempDir(), and connects them all. Cleanup closes them.
func newTestCluster(t testing.TB, n int, regions []string, opts ...clusterOption) *testCluster {
	t.Helper()
	cfg := clusterConfig{seed: 1, antiEntropyEvery: 300 * time.Millisecond, maxSkew: time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	c := &testCluster{t: t, cfg: cfg, net: newSimnet(cfg.seed), model: newModel(), start: time.Now(), groups: map[int]int{}}
	c.net.setFaults(cfg.faults)
	if cfg.maxMessage > 0 {
		c.net.maxMessage = cfg.maxMessage
	}
	for i := range n {
		dir := t.TempDir()
		c.nodes = append(c.nodes, &testNode{c: c, name: fmt.Sprintf("n%d", i),
			region: regions[i%len(regions)], path: filepath.Join(dir, "sessiond.db")})
	}
	t.Cleanup(c.close)
	for _, nd := range c.nodes {
		if err := nd.start(); err != nil {
			t.Fatalf("start %s: %v", nd.name, err)
		}
	}
	c.updatePeers()
	return c
}

func (c *testCluster) logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("%7s "+format, append([]any{time.Since(c.start).Round(time.Millisecond)}, args...)...)
}

// close stops every node: all replicators first, so no node calls into a closing one.
func (c *testCluster) close() {
	for _, n := range c.nodes {
		c.net.unregister(n.name)
		if r := n.Rep(); r != nil {
			r.Close()
		}
	}
	for _, n := range c.nodes {
		n.stop()
	}
}

// Now is the node's clock.
func (n *testNode) Now() time.Time { return time.Now().Add(time.Duration(n.offset.Load())) }

// DB returns the node's replica, or nil while it is down.
func (n *testNode) DB() *storage.DB {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.db
}

// Rep returns the node's replicator, or nil while it is down.
func (n *testNode) Rep() *Replicator {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.rep
}

// API returns the node's handlers (failing ones while it is down).
func (n *testNode) API() nodeAPI {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.api
}

func (n *testNode) alive() bool { return n.DB() != nil }

// Peer returns how other nodes address this one.
func (n *testNode) Peer() Peer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return Peer{ID: n.api.db.NodeID(), Name: n.name, Region: n.region, Addr: n.name, Joining: n.joining.Load()}
}

// start opens the node's file (creating it, with a new node ID, if absent) and starts
// its replicator. n.mu must not be held.
func (n *testNode) start() error {
	c := n.c
	level := slog.LevelWarn
	if *flagSimLog {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(tWriter{t: c.t, prefix: n.name + ": "}, &slog.HandlerOptions{Level: level}))
	var holder atomic.Pointer[Replicator]
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
	m := NewMetrics()
	rejected := &countingCounter{Counter: m.Rejected}
	m.Rejected = rejected
	rep := NewReplicator(Config{
		DB: db, Transport: c.net.transport(n.name), Name: n.name, Region: n.region, Replicas: c.cfg.replicas,
		Joining:          n.joining.Load(),
		AntiEntropyEvery: c.cfg.antiEntropyEvery,
		PushBatch:        c.cfg.pushBatch, MaxMessage: c.cfg.maxMessage, MaxSkew: c.cfg.maxSkew, Now: n.Now, Logger: logger.With("component", "replicator"), Metrics: m,
	})
	rep.Start()
	holder.Store(rep)
	st := simStore{DB: db, model: c.model}
	clock := db.Clock()
	n.mu.Lock()
	n.db, n.rep, n.rejected = db, rep, rejected
	n.api = nodeAPI{
		db:       db,
		users:    &functions.Users{Store: st, Clock: clock, Passwords: simPasswords()},
		sessions: &functions.Sessions{Store: st, Clock: clock, Passwords: simPasswords(), TouchEvery: time.Millisecond},
		messages: &functions.Messages{Store: st, Clock: clock},
	}
	n.mu.Unlock()
	c.net.register(n.name, db.NodeID(), rep)
	return nil
}

// stop takes the node down as a crash would: its endpoint disappears (calls in flight
// lose their replies), then the replicator and the file close. n.mu must not be held.
func (n *testNode) stop() {
	n.c.net.unregister(n.name)
	n.mu.Lock()
	rep, db := n.rep, n.db
	n.rep, n.db = nil, nil
	n.mu.Unlock()
	if rep != nil {
		rep.Close()
	}
	if db != nil {
		if err := db.Close(); err != nil {
			n.c.t.Errorf("close %s: %v", n.name, err)
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

// view returns the peers node i's membership sees now; c.mu is held.
func (c *testCluster) viewLocked(i int) []Peer {
	var out []Peer
	for j, n := range c.nodes {
		if j == i || !n.alive() || (c.followNet && c.groups[i] != c.groups[j]) {
			continue
		}
		out = append(out, n.Peer())
	}
	return out
}

// updatePeers tells every live node's replicator the peers it sees.
func (c *testCluster) updatePeers() {
	if c.cfg.manualPeers {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if r := n.Rep(); r != nil && !c.frozen[i] {
			r.SetPeers(c.viewLocked(i))
		}
	}
}

// Freeze keeps node i's membership as it is now, whatever happens later: a node that
// misses gossip, and so goes by an old placement.
func (c *testCluster) Freeze(i int) {
	c.mu.Lock()
	if c.frozen == nil {
		c.frozen = map[int]bool{}
	}
	c.frozen[i] = true
	c.mu.Unlock()
	c.logf("freeze the membership of %s", c.nodes[i].name)
}

// Partition splits the network into groups (node indexes; unlisted nodes form one more
// group) and membership follows: each node sees only the peers on its side.
func (c *testCluster) Partition(groups ...[]int) { c.partition(true, groups) }

// Cut splits the network like Partition, but membership still sees every peer, so
// replicators keep trying and every call across the cut fails.
func (c *testCluster) Cut(groups ...[]int) { c.partition(false, groups) }

// PartitionRegions partitions by region: each listed set of regions is one side.
func (c *testCluster) PartitionRegions(follow bool, regions ...[]string) {
	var groups [][]int
	for _, rs := range regions {
		var g []int
		for i, n := range c.nodes {
			if slices.Contains(rs, n.region) {
				g = append(g, i)
			}
		}
		groups = append(groups, g)
	}
	c.partition(follow, groups)
}

func (c *testCluster) partition(follow bool, groups [][]int) {
	c.mu.Lock()
	c.groups, c.followNet = map[int]int{}, follow
	for i := range c.nodes {
		c.groups[i] = len(groups) + 1
	}
	byAddr := map[string]int{}
	for g, members := range groups {
		for _, i := range members {
			c.groups[i] = g + 1
		}
	}
	for i, n := range c.nodes {
		byAddr[n.name] = c.groups[i]
	}
	c.mu.Unlock()
	c.net.setGroups(byAddr)
	c.logf("partition %v (membership follows: %v)", groups, follow)
	if follow {
		simTotals.partitions.Add(1)
	} else {
		simTotals.cuts.Add(1)
	}
	c.updatePeers()
}

// CutOneWay makes node from's calls to node to fail; to's calls to from still work.
func (c *testCluster) CutOneWay(from, to int) {
	c.net.cutOneWay(c.nodes[from].name, c.nodes[to].name)
	c.logf("cut %s → %s", c.nodes[from].name, c.nodes[to].name)
}

// Heal removes every partition and cut.
func (c *testCluster) Heal() {
	c.mu.Lock()
	c.groups, c.followNet = map[int]int{}, false
	c.mu.Unlock()
	c.net.heal()
	c.logf("heal")
	c.updatePeers()
}

// Kill crashes node i: endpoint down, replicator and file closed.
func (c *testCluster) Kill(i int) {
	c.nodes[i].stop()
	c.logf("kill %s", c.nodes[i].name)
	simTotals.kills.Add(1)
	c.updatePeers()
}

// Restart reopens node i's file with a new replicator.
func (c *testCluster) Restart(i int) {
	c.t.Helper()
	if err := c.nodes[i].start(); err != nil {
		c.t.Fatalf("restart %s: %v", c.nodes[i].name, err)
	}
	c.logf("restart %s", c.nodes[i].name)
	c.updatePeers()
}

// Wipe kills node i, deletes its file and starts it afresh: a new node ID, no data.
func (c *testCluster) Wipe(i int) {
	c.t.Helper()
	n := c.nodes[i]
	n.stop()
	if err := os.Remove(n.path); err != nil {
		c.t.Fatalf("wipe %s: %v", n.name, err)
	}
	if err := n.start(); err != nil {
		c.t.Fatalf("wipe %s: restart: %v", n.name, err)
	}
	c.logf("wipe %s (now %s)", n.name, n.DB().NodeID())
	simTotals.wipes.Add(1)
	c.updatePeers()
}

// SetOffset sets node i's clock to real time + d.
func (c *testCluster) SetOffset(i int, d time.Duration) {
	c.nodes[i].offset.Store(int64(d))
	c.logf("clock of %s at %+v", c.nodes[i].name, d)
}

// Notices delivers a round of gossip notices: every live node announces its digest root
// to the peers that see it.
func (c *testCluster) Notices() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		db := n.DB()
		if db == nil || c.cfg.manualPeers {
			continue
		}
		d := db.Digest()
		for _, p := range c.viewLocked(i) {
			for _, m := range c.nodes {
				if m.name == p.Addr {
					if r := m.Rep(); r != nil {
						r.Notice(db.NodeID(), d.Root())
					}
				}
			}
		}
	}
}

func (c *testCluster) alive() []int {
	var out []int
	for i, n := range c.nodes {
		if n.alive() {
			out = append(out, i)
		}
	}
	return out
}

func (c *testCluster) dead() []int {
	var out []int
	for i, n := range c.nodes {
		if !n.alive() {
			out = append(out, i)
		}
	}
	return out
}

func (c *testCluster) group(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.groups[i]
}

// RestartAllAndHeal brings every node back and heals the network.
func (c *testCluster) RestartAllAndHeal() {
	for _, i := range c.dead() {
		c.Restart(i)
	}
	c.Heal()
}

// waitSameRoot waits until nodes i and j hold the same state.
func (c *testCluster) waitSameRoot(t testing.TB, i, j int, within time.Duration) {
	t.Helper()
	waitFor(t, within, func() (bool, string) {
		a, b := c.nodes[i].DB(), c.nodes[j].DB()
		if a == nil || b == nil {
			return false, "node down"
		}
		da, db := a.Digest(), b.Digest()
		return da.Root() == db.Root(), fmt.Sprintf("%s root %x, %s root %x", c.nodes[i].name, da.Root(), c.nodes[j].name, db.Root())
	})
}
