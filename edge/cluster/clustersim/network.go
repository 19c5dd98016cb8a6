package clustersim

import (
	"context"
	"encoding"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
)

// Network is an in-memory network for cluster.Replicator and cluster.Counters: a
// registry of endpoints (one per live node, by sync address) and a fault injector. Every request and reply goes through
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
// A node's endpoint that is not registered (killed) fails every call to it. Network is
// safe for concurrent use.
type Network struct {
	seed       uint64
	maxMessage int // requests and replies beyond it fail, as the TLS transport's do

	mu     sync.Mutex
	eps    map[string]*endpoint // by address
	group  map[string]int       // partition side by address; absent means 0
	oneway map[link]bool        // calls from → to fail
	faults Faults
	rngs   map[link]*rand.Rand
	stash  map[string][]stashed // by destination: pushes kept for replay
	stats  map[link]*LinkStats
	// refuse, when set, is asked about every request before delivery: an error fails the
	// call as a peer that cannot take the message would.
	refuse func(kind string, req []byte) error
	// stall, when set, is asked about every request before delivery: how long it waits
	// first (negative: until its caller gives up). See SetStall.
	stall func(from, to, kind string) time.Duration
}

// Faults are the probabilities (0..1) of each fault per call.
type Faults struct {
	Drop      float64       // request lost before the handler
	DropReply float64       // reply lost after the handler ran
	Dup       float64       // request delivered twice
	Delay     float64       // call delayed by up to MaxDelay
	MaxDelay  time.Duration // default 5ms
	Replay    float64       // a push is kept for a later replay; the same chance replays one
}

// String describes the faults on one line, for logs.
func (f Faults) String() string {
	return fmt.Sprintf("drop=%.2f dropreply=%.2f dup=%.2f delay=%.2f/%s replay=%.2f",
		f.Drop, f.DropReply, f.Dup, f.Delay, f.MaxDelay, f.Replay)
}

// stashed is a push kept for a replay, with the address that sent it: a replay comes
// from its sender, whoever's call it arrives beside.
type stashed struct {
	from string
	req  []byte
}

// link is the direction of a call: from one address to another.
type link struct{ from, to string }

// endpoint is a registered node: what answers calls to its address.
type endpoint struct {
	addr  string
	id    crdt.NodeID
	serve ServeFunc
}

// ServeFunc answers one encoded message of kind (push, digest, leaves, counters) from the
// node at address from with an encoded reply, as a node's sync server would.
type ServeFunc func(ctx context.Context, from, kind string, req []byte) ([]byte, error)

// LinkStats counts the traffic of one link.
type LinkStats struct {
	Calls    map[string]int // by kind: push, digest, leaves, counters
	Versions map[byte]int   // requests by protocol version (their first byte)
	Bytes    int            // requests and replies
}

var (
	errSimUnreachable = errors.New("clustersim: unreachable")
	errSimDropped     = errors.New("clustersim: request lost")
	errSimReplyLost   = errors.New("clustersim: reply lost")
)

// maxStash bounds the pushes kept for replay per destination.
const maxStash = 8

// NewNetwork returns a network with no endpoints and no faults, whose fault decisions
// are seeded by seed. Its message bound is cluster.MaxMessage.
func NewNetwork(seed int64) *Network {
	return &Network{
		seed: uint64(seed), maxMessage: cluster.MaxMessage, eps: make(map[string]*endpoint), group: make(map[string]int),
		oneway: make(map[link]bool), rngs: make(map[link]*rand.Rand),
		stash: make(map[string][]stashed), stats: make(map[link]*LinkStats),
	}
}

// Register makes addr reachable, answered by h as node id through cluster.ServeMessage,
// as a node's sync server answers, with h's guard when it has one (a
// *cluster.Replicator), naming callers by their address (a node's name): calls to addr that name another node ID fail, as a restarted
// process under a new identity would.
func (n *Network) Register(addr string, id crdt.NodeID, h cluster.Handler) {
	var g *cluster.Guard
	if gh, ok := h.(interface{ Guard() *cluster.Guard }); ok {
		g = gh.Guard()
	}
	n.RegisterFunc(addr, id, func(ctx context.Context, from, kind string, req []byte) ([]byte, error) {
		return cluster.ServeMessage(ctx, h, g, from, n.idOf(from), kind, req)
	})
}

// idOf returns the node ID registered at addr, the caller's ID as a node's requests
// carry it; 0 if none is.
func (n *Network) idOf(addr string) crdt.NodeID {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ep, ok := n.eps[addr]; ok {
		return ep.id
	}
	return 0
}

// RegisterFunc makes addr reachable as node id, answered by fn: a node that answers
// with bytes of its own making (a faulty peer), or any other server.
func (n *Network) RegisterFunc(addr string, id crdt.NodeID, fn ServeFunc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.eps[addr] = &endpoint{addr: addr, id: id, serve: fn}
}

// Unregister makes addr unreachable: every call to it fails, including calls in flight
// whose reply has not been delivered yet.
func (n *Network) Unregister(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.eps, addr)
	delete(n.stash, addr)
}

// SetGroups partitions the network: groups[addr] is the side of addr (absent: 0). The
// network keeps groups; the caller must not change it afterwards.
func (n *Network) SetGroups(groups map[string]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = groups
}

// CutOneWay makes calls from → to fail.
func (n *Network) CutOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.oneway[link{from, to}] = true
}

// Talk reports whether a and b can exchange data: one of them can call the other.
func (n *Network) Talk(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.group[a] == n.group[b] && (!n.oneway[link{a, b}] || !n.oneway[link{b, a}])
}

// Heal removes every partition and one-way cut (probabilistic faults stay).
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = make(map[string]int)
	n.oneway = make(map[link]bool)
}

// Whole reports whether the network is in one piece for addrs: no one-way cut anywhere,
// and every one of addrs on the same side.
func (n *Network) Whole(addrs ...string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.oneway) > 0 {
		return false
	}
	for _, a := range addrs {
		if n.group[a] != n.group[addrs[0]] {
			return false
		}
	}
	return true
}

// CanCall reports whether from can call to now: both registered, on the same side, and
// no one-way cut from → to. Probabilistic faults may still fail the call.
func (n *Network) CanCall(from, to string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, up := n.eps[from]
	_, up2 := n.eps[to]
	return up && up2 && n.group[from] == n.group[to] && !n.oneway[link{from, to}]
}

// MendOneWay removes the one-way cut from → to, if any; every other cut stays.
func (n *Network) MendOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.oneway, link{from, to})
}

// Faults returns the fault probabilities in force.
func (n *Network) Faults() Faults {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.faults
}

// SetFaults sets the fault probabilities of every later call. A zero MaxDelay is 5ms.
func (n *Network) SetFaults(f Faults) {
	if f.MaxDelay <= 0 {
		f.MaxDelay = 5 * time.Millisecond
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = f
}

// ResetStats clears the traffic counters.
func (n *Network) ResetStats() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stats = make(map[link]*LinkStats)
}

// LinkStats returns the traffic from → to (requests from `from` and their replies)
// since the network started or ResetStats. Calls count every attempt, failed ones too.
// The result is a copy.
func (n *Network) LinkStats(from, to string) LinkStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := LinkStats{Calls: map[string]int{}, Versions: map[byte]int{}}
	if s := n.stats[link{from, to}]; s != nil {
		maps.Copy(out.Calls, s.Calls)
		maps.Copy(out.Versions, s.Versions)
		out.Bytes = s.Bytes
	}
	return out
}

// reachableLocked reports whether from can call to now; n.mu is held.
func (n *Network) reachableLocked(from string, to cluster.Peer) (*endpoint, error) {
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
	if n.oneway[link{from, to.Addr}] {
		return nil, fmt.Errorf("%w: %s → %s is cut", errSimUnreachable, from, to.Addr)
	}
	return ep, nil
}

// callPlan is the fault decision for one call.
type callPlan struct {
	delay      time.Duration
	drop       bool
	dropReply  bool
	dup        bool
	stashIt    bool
	replay     *stashed
	ep         *endpoint
	statsEntry *LinkStats
}

func (n *Network) rngLocked(l link) *rand.Rand {
	r, ok := n.rngs[l]
	if !ok {
		h := fnv.New64a()
		h.Write([]byte(l.from + "\x00" + l.to))
		r = rand.New(rand.NewPCG(n.seed, h.Sum64()))
		n.rngs[l] = r
	}
	return r
}

func (n *Network) plan(from string, to cluster.Peer, kind string, req []byte) (callPlan, error) {
	size := len(req)
	n.mu.Lock()
	defer n.mu.Unlock()
	l := link{from, to.Addr}
	st := n.stats[l]
	if st == nil {
		st = &LinkStats{Calls: map[string]int{}, Versions: map[byte]int{}}
		n.stats[l] = st
	}
	st.Calls[kind]++
	if len(req) > 0 {
		st.Versions[req[0]]++
	}
	st.Bytes += size
	ep, err := n.reachableLocked(from, to)
	if err != nil {
		return callPlan{}, err
	}
	r, f := n.rngLocked(l), n.faults
	p := callPlan{ep: ep, statsEntry: st}
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
			st := s[i]
			p.replay = &st
			n.stash[to.Addr] = append(s[:i:i], s[i+1:]...)
		}
	}
	return p, nil
}

func (n *Network) keep(from, to string, req []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stash[to]
	if len(s) >= maxStash {
		s = s[1:]
	}
	n.stash[to] = append(s, stashed{from: from, req: req})
}

// Send carries the encoded message req of kind (push, digest, leaves, counters) from →
// to, with the faults of that link, and returns the encoded reply: what a node that
// makes its own bytes (a faulty peer) sends.
func (n *Network) Send(ctx context.Context, from string, to cluster.Peer, kind string, req []byte) ([]byte, error) {
	return n.call(ctx, from, to, kind, req)
}

// call carries one request from → to and returns the encoded reply.
func (n *Network) call(ctx context.Context, from string, to cluster.Peer, kind string, req []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // a caller that gave up sends nothing (nor counts in LinkStats)
	}
	if len(req) > n.maxMessage {
		return nil, fmt.Errorf("sync %s to %s: message of %d bytes over the %d limit", kind, to.Name, len(req), n.maxMessage)
	}
	p, err := n.plan(from, to, kind, req)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	refuse, stall := n.refuse, n.stall
	n.mu.Unlock()
	if refuse != nil {
		if err := refuse(kind, req); err != nil {
			return nil, fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
		}
	}
	if stall != nil {
		if d := stall(from, to.Addr, kind); d != 0 {
			var wait <-chan time.Time // nil: never
			if d > 0 {
				timer := time.NewTimer(d)
				defer timer.Stop()
				wait = timer.C
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("sync %s to %s: stalled: %w", kind, to.Name, ctx.Err())
			case <-wait:
			}
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
		_, _ = ep.serve(ctx, p.replay.from, kind, p.replay.req) // a stale push arrives before this one
	}
	out, err := ep.serve(ctx, from, kind, req)
	if p.dup {
		out, err = ep.serve(ctx, from, kind, req)
	}
	if p.stashIt {
		n.keep(from, to.Addr, req)
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

// SetRefuse installs fn as the refuse hook (nil removes it): fn is asked about every
// request (its kind and encoding) after the link's faults are drawn and before
// delivery, and an error it returns fails the call, as a peer that cannot take the
// message would. fn must be safe for concurrent use.
func (n *Network) SetRefuse(fn func(kind string, req []byte) error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refuse = fn
}

// SetStall installs fn as the stall hook (nil removes it): fn is asked about every
// request from → to of kind, after the link's faults are drawn and before delivery, how
// long the call waits before it is delivered — a peer that is very slow to answer — or,
// negative, that it is never delivered: a peer that takes the request and never answers.
// A stalled call ends with its caller's context, failing with the context's error. fn
// must be safe for concurrent use.
func (n *Network) SetStall(fn func(from, to, kind string) time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stall = fn
}

// Transport returns node from's client side of the network.
func (n *Network) Transport(from string) *Transport { return &Transport{net: n, from: from} }

// Transport is one node's client side of a Network: a cluster.Transport and a
// cluster.CounterTransport. It is safe for concurrent use.
type Transport struct {
	net  *Network
	from string
}

var _ cluster.Transport = (*Transport)(nil)

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

// Push implements cluster.Transport.
func (t *Transport) Push(ctx context.Context, to cluster.Peer, req cluster.PushRequest) (cluster.PushReply, error) {
	out, err := t.net.call(ctx, t.from, to, "push", marshal(req))
	if err != nil {
		return cluster.PushReply{}, err
	}
	return decodeInto[cluster.PushReply](out)
}

// Digest implements cluster.Transport.
func (t *Transport) Digest(ctx context.Context, to cluster.Peer, req cluster.DigestRequest) (cluster.DigestReply, error) {
	out, err := t.net.call(ctx, t.from, to, "digest", marshal(req))
	if err != nil {
		return cluster.DigestReply{}, err
	}
	return decodeInto[cluster.DigestReply](out)
}

// Leaves implements cluster.Transport.
func (t *Transport) Leaves(ctx context.Context, to cluster.Peer, req cluster.LeavesRequest) (cluster.LeavesReply, error) {
	out, err := t.net.call(ctx, t.from, to, "leaves", marshal(req))
	if err != nil {
		return cluster.LeavesReply{}, err
	}
	return decodeInto[cluster.LeavesReply](out)
}

// Counters implements cluster.CounterTransport, so counter exchange meets the same
// partitions, drops, duplicates and delays as sync traffic. The destination's handler
// must be a cluster.CounterHandler (cluster.WithCounters).
func (t *Transport) Counters(ctx context.Context, to cluster.Peer, m cluster.CountersMessage) error {
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = t.net.call(ctx, t.from, to, "counters", b)
	return err
}

var _ cluster.CounterTransport = (*Transport)(nil)
