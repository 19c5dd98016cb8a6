package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// Counters replicates rate-limit counters (crdt.Counter) to every live peer, so that
// limits hold cluster-wide rather than per node.
//
// Each node counts its own events and, every FlushEvery when something changed, sends the
// cells it changed since a peer last accepted them straight to that peer (no relaying:
// each node's cells go from it to every other) — but to a peer it has just met (one that
// joined, or restarted and lost what it knew) it first sends every other origin's cells
// it holds, each under its origin, so that the newcomer counts what happened before it
// came: a node that restarts, for one, learns again what its earlier run counted. Cells are absolute counts merged by
// maximum, so lost, repeated or reordered messages are harmless, and a peer that missed a
// flush gets the cells again on the next one.
//
// Overshoot bound. With the cluster connected, a node learns of another's events at most
// FlushEvery + one-way latency (+ one message's send time) after they happen, so a limit of
// L events per window admits at most L + Σ over the other nodes of (FlushEvery + latency) ×
// that node's event rate. During a partition each side counts only what it hears, so k
// sides admit at most k × L per window; the sides' counts merge when they meet again (cells
// of windows that ended in the meantime are no longer needed and are dropped). A node cut
// off from only some peers (no relaying) is as a side of its own for those peers' events.
//
// Counters is safe for concurrent use. Start starts its one goroutine; Close stops it.
type Counters struct {
	cfg CountersConfig

	mu      sync.Mutex
	sets    []*crdt.Counter
	version uint64                 // bumped by every local event
	own     map[ownCell]uint64     // cells this node counted → version of their last change
	peers   map[crdt.NodeID]*cPeer // live peers and what each accepted
	closed  bool
	wake    chan struct{}
	pruned  time.Time // last Prune: at most once a second, it walks every key

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// CountersConfig configures Counters.
type CountersConfig struct {
	// Self is the ID this node's counts are stamped with. Give each run of a node a fresh
	// one (not its data's node ID): the counts of an earlier run, which its peers keep
	// until their windows pass, then add to the new run's instead of hiding them (cells
	// merge by maximum, so a restarted node counting from zero under its old ID would
	// not be seen again until it exceeded what it had counted before).
	Self      crdt.NodeID
	Transport CounterTransport // nil: count locally only
	// Windows gives each counter set its window length; set i of Add and Estimate is
	// Windows[i]. At most MaxCounterSets.
	Windows    []time.Duration
	MaxKeys    int              // keys tracked per set; default crdt.DefaultCounterKeys
	FlushEvery time.Duration    // how often changes are sent; default 200ms
	Timeout    time.Duration    // bound on one send to one peer; default 2s
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger     // default: discard
}

// CounterTransport carries counter messages to a peer. Implementations must be safe for
// concurrent use and return once ctx ends.
type CounterTransport interface {
	Counters(ctx context.Context, to Peer, m CountersMessage) error
}

// CounterHandler answers counter messages; *Counters implements it.
type CounterHandler interface {
	HandleCounters(ctx context.Context, m CountersMessage) error
}

type ownCell struct {
	set    int
	key    string
	window int64
}

type cPeer struct {
	peer    Peer
	acked   uint64 // the peer holds every own cell changed at or before this version
	relayed bool   // the peer holds the other origins' cells we held when we met it
	failed  int    // consecutive failed sends, for logging
	busy    bool   // a send is in flight
}

// NewCounters returns counters for cfg; Start them to exchange with peers.
func NewCounters(cfg CountersConfig) (*Counters, error) {
	if len(cfg.Windows) == 0 || len(cfg.Windows) > MaxCounterSets {
		return nil, fmt.Errorf("counters: %d sets, want 1 to %d", len(cfg.Windows), MaxCounterSets)
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = 200 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Counters{
		cfg: cfg, own: make(map[ownCell]uint64), peers: make(map[crdt.NodeID]*cPeer),
		wake: make(chan struct{}, 1),
	}
	for i, w := range cfg.Windows {
		if w <= 0 {
			return nil, fmt.Errorf("counters: Windows[%d] is %s, want positive", i, w)
		}
		c.sets = append(c.sets, crdt.NewCounter(w, cfg.MaxKeys))
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Start starts the flush loop; call it once. It leaves when Close is called.
func (c *Counters) Start() {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.loop()
	}()
}

// Close stops the flush loop and waits for it (and any send in flight). Safe to call
// twice; events counted after Close stay local.
func (c *Counters) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// Add counts one event of this node on key in set. It panics if set is out of range (a
// programming error).
func (c *Counters) Add(set int, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cell := c.sets[set].Add(key, c.cfg.Self, c.cfg.Now())
	c.version++
	c.own[ownCell{set: set, key: cell.Key, window: cell.Window}] = c.version
}

// Estimate returns key's sliding-window count in set, over every node this one has heard
// from.
func (c *Counters) Estimate(set int, key string) crdt.Estimate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sets[set].Estimate(key, c.cfg.Now())
}

// SetPeers replaces the live peers (this node among them is ignored). A new peer is sent
// every cell this node holds of its own; a peer that leaves is forgotten.
func (c *Counters) SetPeers(peers []Peer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := make(map[crdt.NodeID]Peer, len(peers))
	for _, p := range peers {
		if p.ID != c.cfg.Self {
			want[p.ID] = p
		}
	}
	for id, p := range c.peers {
		if w, ok := want[id]; !ok || w != p.peer {
			delete(c.peers, id)
		}
	}
	for id, p := range want {
		if _, ok := c.peers[id]; !ok {
			c.peers[id] = &cPeer{peer: p}
		}
	}
	poke(c.wake)
}

// Peers returns how many live peers the counters are sent to.
func (c *Counters) Peers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.peers)
}

// HandleCounters merges a peer's cells, counted by m.From (the sender, or an origin it
// relays to a node it has just met). Cells of this node's own ID (relayed back to it) and
// cells of windows more than one ahead of this node's clock (a skewed or hostile peer
// would otherwise push the current window out) are ignored.
func (c *Counters) HandleCounters(_ context.Context, m CountersMessage) error {
	if m.From == c.cfg.Self {
		return nil // our own cells: we hold them already
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	for _, cell := range m.Cells {
		if cell.Set >= len(c.sets) {
			continue // a set this node does not have (a newer peer): skip it
		}
		s := c.sets[cell.Set]
		if cell.Window > s.WindowOf(now)+1 {
			continue
		}
		s.Merge(crdt.CounterCell{Key: cell.Key, Window: cell.Window, Node: m.From, Count: cell.Count})
	}
	return nil
}

func (c *Counters) loop() {
	t := time.NewTicker(c.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.wake:
		}
		c.flush()
	}
}

// flush prunes expired windows and starts a send to each peer that has not accepted
// everything yet and has no send in flight, so a slow or unreachable peer delays no other.
func (c *Counters) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.cfg.Now(); now.Sub(c.pruned) >= time.Second || now.Before(c.pruned) {
		c.pruned = now
		for _, s := range c.sets {
			s.Prune(now)
		}
		for oc := range c.own {
			if oc.window < c.sets[oc.set].WindowOf(now)-1 {
				delete(c.own, oc)
			}
		}
	}
	if c.cfg.Transport == nil || c.closed {
		return
	}
	for _, p := range c.peers {
		if p.busy || p.relayed && p.acked >= c.version {
			continue
		}
		var relay []CountersMessage
		if !p.relayed {
			relay = c.relayLocked()
		}
		msgs, upto := c.messagesLocked(p.acked)
		if len(msgs) == 0 && len(relay) == 0 {
			p.acked, p.relayed = c.version, true
			continue
		}
		p.busy = true
		c.wg.Add(1) // under wg already: loop runs inside it, so Close waits for this too
		go func() {
			defer c.wg.Done()
			c.send(p, relay, msgs, upto)
		}()
	}
}

// relayLocked returns the cells of every origin but this node, each origin's in messages
// From it, for a peer just met.
func (c *Counters) relayLocked() []CountersMessage {
	byOrigin := map[crdt.NodeID]*CountersMessage{}
	var out []CountersMessage
	for set, s := range c.sets {
		for _, cell := range s.Cells() {
			if cell.Node == c.cfg.Self || cell.Count == 0 || len(cell.Key) > MaxCounterKey {
				continue
			}
			m := byOrigin[cell.Node]
			if m == nil || len(m.Cells) >= MaxCounterCells {
				if m != nil {
					out = append(out, *m)
				}
				m = &CountersMessage{From: cell.Node}
				byOrigin[cell.Node] = m
			}
			m.Cells = append(m.Cells, CountersCell{Set: set, Key: cell.Key, Window: cell.Window, Count: cell.Count})
		}
	}
	for _, m := range byOrigin {
		out = append(out, *m)
	}
	return out
}

// send delivers relay, then msgs, to p in order, stopping at the first failure (the next
// flush resends from what p accepted).
func (c *Counters) send(p *cPeer, relay, msgs []CountersMessage, upto []uint64) {
	defer func() {
		c.mu.Lock()
		p.busy = false
		c.mu.Unlock()
	}()
	for _, m := range relay {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
		m.Version = p.peer.Proto
		err := c.cfg.Transport.Counters(ctx, p.peer, m)
		cancel()
		if err != nil {
			c.mu.Lock()
			p.failed++
			c.mu.Unlock()
			return
		}
	}
	if relay != nil {
		c.mu.Lock()
		p.relayed = true
		c.mu.Unlock()
	}
	for i, m := range msgs {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
		m.Version = p.peer.Proto
		err := c.cfg.Transport.Counters(ctx, p.peer, m)
		cancel()
		c.mu.Lock()
		if err != nil {
			p.failed++
			if p.failed == 1 || p.failed%100 == 0 {
				c.cfg.Logger.Debug("counters not sent", "peer", p.peer.Name, "failures", p.failed, slog.Any("err", err))
			}
			c.mu.Unlock()
			return
		}
		p.failed = 0
		p.acked = max(p.acked, upto[i])
		c.mu.Unlock()
	}
}

// messagesLocked returns this node's cells changed after version since, oldest change
// first, cut into messages of at most MaxCounterCells, and for each message the version it
// brings a peer to.
func (c *Counters) messagesLocked(since uint64) ([]CountersMessage, []uint64) {
	type changed struct {
		oc ownCell
		v  uint64
	}
	var ch []changed
	for oc, v := range c.own {
		if v > since {
			ch = append(ch, changed{oc, v})
		}
	}
	slices.SortFunc(ch, func(a, b changed) int { return cmp.Compare(a.v, b.v) })
	var msgs []CountersMessage
	var upto []uint64
	for len(ch) > 0 {
		n := min(len(ch), MaxCounterCells)
		m := CountersMessage{From: c.cfg.Self, Cells: make([]CountersCell, 0, n)}
		for _, x := range ch[:n] {
			count := c.sets[x.oc.set].Cell(x.oc.key, x.oc.window, c.cfg.Self)
			if count == 0 || len(x.oc.key) > MaxCounterKey {
				continue // pruned meanwhile, or a key too long to send
			}
			m.Cells = append(m.Cells, CountersCell{Set: x.oc.set, Key: x.oc.key, Window: x.oc.window, Count: count})
		}
		// Everything changed up to the last version in this chunk is in it, unless an
		// equal version follows in the next chunk (versions are unique, so it cannot).
		if len(m.Cells) > 0 {
			msgs = append(msgs, m)
			upto = append(upto, ch[n-1].v)
		}
		ch = ch[n:]
	}
	return msgs, upto
}

// kindCounters is the message kind of a CountersMessage (see the kinds in protocol.go).
const kindCounters = 5

// Wire limits of a CountersMessage.
const (
	MaxCounterSets  = 8    // sets per Counters
	MaxCounterCells = 4096 // cells per message
	MaxCounterKey   = 256  // bytes per key
	// MaxCountersMessage bounds an encoded message: 4096 cells of a 256-byte key and
	// varints fit in about 1.1 MB.
	MaxCountersMessage = 2 << 20
)

// CountersMessage carries cells counted by From (and only From's own).
type CountersMessage struct {
	Version uint8 // see PushRequest.Version
	From    crdt.NodeID
	Cells   []CountersCell
}

// CountersCell is From's count of Key in Window of counter set Set.
type CountersCell struct {
	Set    int
	Key    string
	Window int64
	Count  uint64
}

// MarshalBinary encodes a CountersMessage: header, From, then per cell its set, key,
// window (zig-zag varint) and count. It fails on a message beyond the wire limits.
func (m CountersMessage) MarshalBinary() ([]byte, error) {
	if len(m.Cells) > MaxCounterCells {
		return nil, fmt.Errorf("counters message: %d cells over the %d limit", len(m.Cells), MaxCounterCells)
	}
	v, err := wireVersion(m.Version)
	if err != nil {
		return nil, err
	}
	w := header(kindCounters, v).u64(uint64(m.From)).uvarint(uint64(len(m.Cells)))
	for _, cell := range m.Cells {
		if cell.Set < 0 || cell.Set >= MaxCounterSets || len(cell.Key) > MaxCounterKey {
			return nil, fmt.Errorf("counters message: cell of set %d, key of %d bytes, beyond the limits", cell.Set, len(cell.Key))
		}
		w = w.uvarint(uint64(cell.Set)).bytes([]byte(cell.Key)).uvarint(zigzag(cell.Window)).uvarint(cell.Count)
	}
	return w, nil
}

// UnmarshalBinary decodes a CountersMessage, refusing anything beyond the wire limits,
// cells of count 0 and trailing bytes.
func (m *CountersMessage) UnmarshalBinary(b []byte) error {
	if len(b) > MaxCountersMessage {
		return fmt.Errorf("counters message of %d bytes over the %d limit", len(b), MaxCountersMessage)
	}
	r := reader{b: b}
	r.header(kindCounters)
	m.Version = r.version
	m.From = crdt.NodeID(r.u64())
	n := r.count(4, MaxCounterCells) // set, key length, window and count: a byte each at least
	m.Cells = make([]CountersCell, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		set := r.uvarint()
		key := r.bytes()
		window := unzigzag(r.uvarint())
		count := r.uvarint()
		switch {
		case r.err != nil:
		case set >= MaxCounterSets:
			r.err = fmt.Errorf("counters message: set %d out of range", set)
		case len(key) > MaxCounterKey:
			r.err = fmt.Errorf("counters message: key of %d bytes over the %d limit", len(key), MaxCounterKey)
		case count == 0:
			r.err = errors.New("counters message: cell of count 0")
		default:
			m.Cells = append(m.Cells, CountersCell{Set: int(set), Key: string(key), Window: window, Count: count})
		}
	}
	return r.end()
}

// zigzag maps signed to unsigned so that small magnitudes encode short (protobuf's
// sint64); the conversions reinterpret bits on purpose and lose nothing.
func zigzag(v int64) uint64 {
	return uint64(v<<1) ^ uint64(v>>63) // #nosec G115 -- bit reinterpretation, see above
}

func unzigzag(u uint64) int64 {
	return int64(u>>1) ^ -int64(u&1) // #nosec G115 -- u>>1 fits in 63 bits
}

// Counters implements CounterTransport.
func (t *TLSTransport) Counters(ctx context.Context, to Peer, m CountersMessage) error {
	return t.call(ctx, to, "counters", m, nil)
}

// WithCounters returns a Handler that answers sync requests with h and counter messages
// with c, for TLSTransport.Serve.
func WithCounters(h Handler, c CounterHandler) Handler {
	return countersHandler{Handler: h, c: c}
}

type countersHandler struct {
	Handler
	c CounterHandler
}

func (h countersHandler) HandleCounters(ctx context.Context, m CountersMessage) error {
	return h.c.HandleCounters(ctx, m)
}
