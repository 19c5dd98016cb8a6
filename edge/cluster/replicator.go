package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// Peer is another node the Replicator exchanges data with.
type Peer struct {
	ID     crdt.NodeID
	Name   string
	Region string
	Addr   string // the peer's sync address
	// Joining says the peer is catching up before it takes its share of the partitions:
	// placement leaves it out until it has (Config.Joining).
	Joining bool
	// Proto is the sync protocol version to speak with the peer: the highest both speak
	// (ProtocolRange.Common); 0: ProtocolVersion. Membership sets it.
	Proto uint8
}

// Transport carries sync requests to a peer's Handler. Implementations must be safe for
// concurrent use and must return once ctx ends.
type Transport interface {
	Push(ctx context.Context, to Peer, req PushRequest) (PushReply, error)
	Digest(ctx context.Context, to Peer, req DigestRequest) (DigestReply, error)
	Leaves(ctx context.Context, to Peer, req LeavesRequest) (LeavesReply, error)
}

// Handler answers sync requests; *Replicator implements it.
type Handler interface {
	HandlePush(ctx context.Context, req PushRequest) (PushReply, error)
	HandleDigest(ctx context.Context, req DigestRequest) (DigestReply, error)
	HandleLeaves(ctx context.Context, req LeavesRequest) (LeavesReply, error)
}

// Config configures a Replicator.
type Config struct {
	DB        Store
	Transport Transport
	// Name and Region are this node's, as its peers know it (Peer.Name, Peer.Region):
	// placement ranks members by name within their region.
	Name, Region string
	// Replicas is how many nodes of each region hold each partition; 0 (the default):
	// every node holds everything. See holding.go.
	Replicas int
	// Joining starts the node as joining (with Replicas): it holds no partition, and so
	// forwards every request, until it has pulled from its peers what it will hold;
	// CaughtUp is closed then, and Joined makes it take its share.
	Joining bool
	// AntiEntropyEvery is the mean period of anti-entropy with each peer (jittered ±25%);
	// default 10s.
	AntiEntropyEvery time.Duration
	PushBatch        int // changes per push; default 512
	// MaxMessage bounds one sync message in bytes: pushes, leaf requests and their
	// replies are split to stay within it. Default and ceiling MaxMessage, which the
	// transport enforces; tests lower it.
	MaxMessage int
	// MaxSkew is how far ahead of local time a remote timestamp may be (storage refuses
	// changes beyond it); a bookmark asking for more cannot be met yet. Default 1m.
	MaxSkew time.Duration
	// FetchTimeout bounds one pull that Await starts to fetch what a bookmark asks for;
	// default 2s.
	FetchTimeout time.Duration
	// OfferTimeout bounds each call that a handoff round makes to a peer (a leaves
	// request or a push of an offer; see handoff.go): a peer that does not answer in time
	// is offered nothing more in that round, and what it holds waits for a later one.
	// Default DefaultOfferTimeout (10s).
	OfferTimeout time.Duration
	// MoveRate bounds, in bytes per second, the stored state this node sends to its peers
	// by anti-entropy and handoff — the data that moves when placement changes, and
	// repairs — so that movement does not crowd out serving requests; pushes of new
	// writes are not bounded. 0: DefaultMoveRate; negative: unbounded.
	MoveRate int
	Now      func() time.Time // physical clock for lag figures; default time.Now
	Logger   *slog.Logger     // default: discard
	Metrics  *Metrics         // nil: none
	// Guard accounts the invalid replies of peers, which it names by Peer.Name, and
	// backs them off: this node does not call a peer while it is backed off. Give
	// the transport's server the same guard (TLSTransport.SetGuard, ServeMessage), so
	// that a peer's invalid requests back it off too. Nil: a guard of the replicator's
	// own, logging to Logger and counting in Metrics.
	Guard *Guard
	// OnRemoved, when set, is called once the first time a peer refuses this node's sync
	// request because this node was removed from the cluster for good (ErrRemoved): the
	// node must stop. It must not block.
	OnRemoved func()
}

// Replicator keeps this node's replica in step with its peers'. It runs one worker per
// live peer that pushes this node's new changes promptly (batched: one push in flight per
// peer, so under load each carries all that accumulated) and runs anti-entropy with that
// peer when it appears, after a notice that its digest differs, and periodically.
type Replicator struct {
	cfg  Config
	self crdt.NodeID
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers map[crdt.NodeID]*worker
	closed  bool
	view    atomic.Pointer[view]                 // written under mu
	peers   []Peer                               // as SetPeers last gave them; under mu
	down    []Peer                               // as SetMembership last gave them; under mu
	known   atomic.Pointer[map[crdt.NodeID]bool] // every ID peers and down named so far; written under mu
	joining bool                                 // see Config.Joining; under mu
	peersIn chan struct{}                        // closed by the first SetPeers that names a peer
	// replanned wakes the handoff loop after a placement change.
	replanned chan struct{}

	roundMu sync.Mutex // held by a handoff round
	// confirmedBefore is what earlier handoff rounds under the placement with fingerprint
	// confirmedUnder learnt: per stray key not yet dropped, the holders that confirmed
	// it as it is now. A key that waits for many holders (every region's, for a key with
	// a write of this node's own) gathers their confirmations over several rounds rather
	// than needing every one in the same round over a lossy network; a holder confirms
	// for as long as it holds the partition, so a new placement starts over. Under
	// roundMu.
	confirmedBefore map[string]confirmation
	confirmedUnder  uint64
	handoffMu       sync.Mutex
	handoffStatus   HandoffStatus

	caughtUp     chan struct{}
	caughtUpOnce sync.Once

	lagMu sync.Mutex
	lag   map[crdt.NodeID]time.Duration // last observed propagation delay from each origin

	have     haveState     // what this node holds of each origin's writes; see Await
	awaiting atomic.Int64  // Awaits past the fast path, now
	move     *rate.Limiter // Config.MoveRate; nil: unbounded
}

// worker is the goroutine that serves one peer.
type worker struct {
	peer    Peer
	cancel  context.CancelFunc
	wake    chan struct{} // a local commit happened
	sync    chan struct{} // run anti-entropy now
	replan  chan struct{} // the placement changed: start over with anti-entropy
	pending atomic.Int64  // local changes not yet pushed
	// pushed is the latest timestamp of this node's own writes that the worker has pushed
	// (or left to the first anti-entropy round); owned by the worker goroutine.
	pushed crdt.Timestamp
	// told is the latest Through the peer accepted from this worker; owned by the worker
	// goroutine.
	told crdt.Timestamp
	// synced says an anti-entropy round with the peer completed since the worker started
	// (or gave up pushing a stretch of the feed): only then may a push tell Through, as
	// the round covered what the pushes did not; owned by the worker goroutine.
	synced bool
	// era is the placement the worker's pushes and rounds have gone by since it last
	// started over; a new placement starts it over (the old one filtered out changes the
	// peer now holds). Owned by the worker goroutine.
	era *view
	// peerEra is the peer's era (haveState.era) as its reply to our latest completed
	// round gave it; a push reply naming another era makes the worker run a round before
	// it tells Through again. Owned by the worker goroutine.
	peerEra uint64
	// stale says a push reply named an era other than peerEra. Owned by the worker
	// goroutine.
	stale bool
	// drained is the feed position up to which the worker has pushed this node's writes
	// to the peer (or a round covered them); see Drain.
	drained atomic.Uint64
}

// maxPushFailures is how many times in a row a worker tries to push the same changes
// before it leaves them to anti-entropy and pushes what follows: a change that cannot
// be sent is never retried forever in place, holding back every later one.
const maxPushFailures = 8

// DefaultMoveRate is Config.MoveRate's default: 64 MiB/s.
const DefaultMoveRate = 64 << 20

// NewReplicator returns a replicator; Start it.
func NewReplicator(cfg Config) *Replicator {
	if cfg.AntiEntropyEvery <= 0 {
		cfg.AntiEntropyEvery = 10 * time.Second
	}
	if cfg.PushBatch <= 0 {
		cfg.PushBatch = 512
	}
	if cfg.MaxMessage <= 0 || cfg.MaxMessage > MaxMessage {
		cfg.MaxMessage = MaxMessage
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = time.Minute
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 2 * time.Second
	}
	if cfg.OfferTimeout <= 0 {
		cfg.OfferTimeout = DefaultOfferTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MoveRate == 0 {
		cfg.MoveRate = DefaultMoveRate
	}
	if cfg.Guard == nil {
		cfg.Guard = NewGuard(cfg.Logger, cfg.Metrics)
	}
	if cfg.OnRemoved != nil {
		cfg.Transport = removedWatch{cfg.Transport, sync.OnceFunc(cfg.OnRemoved)}
	}
	r := &Replicator{
		cfg: cfg, self: cfg.DB.NodeID(), log: cfg.Logger,
		workers: make(map[crdt.NodeID]*worker), caughtUp: make(chan struct{}), replanned: make(chan struct{}, 1),
		joining: cfg.Joining && cfg.Replicas > 0, peersIn: make(chan struct{}),
		lag: make(map[crdt.NodeID]time.Duration),
	}
	if cfg.MoveRate > 0 {
		// A second's worth of burst, and at least one message of the budget.
		r.move = rate.NewLimiter(rate.Limit(cfg.MoveRate), max(cfg.MoveRate, r.budget()))
	}
	r.have.init()
	r.view.Store(newView(r.selfPeer(), nil, cfg.Replicas, r.joining))
	return r
}

// Guard returns the guard that accounts peers' invalid replies (Config.Guard).
func (r *Replicator) Guard() *Guard { return r.cfg.Guard }

// replyErr accounts err, a call to peer of kind that failed, against peer when the reply
// was invalid, and returns err.
func (r *Replicator) replyErr(peer Peer, kind string, err error) error {
	if errors.Is(err, ErrInvalidMessage) {
		r.cfg.Guard.Invalid(peer.Name, kind+"_reply", err)
	}
	return err
}

func (r *Replicator) selfPeer() Peer {
	return Peer{ID: r.self, Name: r.cfg.Name, Region: r.cfg.Region}
}

// Start readies the replicator; workers start as SetPeers names peers.
func (r *Replicator) Start() {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.handoff(r.ctx)
	}()
	if r.joining {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.bootstrap(r.ctx)
		}()
	}
}

// Close stops every worker and waits for them. Safe to call twice.
func (r *Replicator) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
}

// SetPeers makes the live peer set exactly peers (this node excluded): a worker starts for
// each new peer, beginning with anti-entropy, and stops for each peer gone. A peer whose
// address changed is restarted.
func (r *Replicator) SetPeers(peers []Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setPeersLocked(peers)
}

// SetMembership is SetPeers(live) that also tells the replicator the members membership
// knows but sees failed (down; not those that left): they may come back holding what
// they held, so a handoff round keeps the keys they would hold until they confirm them
// (HandoffRound). One call, so that a round never sees a member that changed from one to
// the other in neither list.
func (r *Replicator) SetMembership(live, down []Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = slices.Clone(down)
	r.setPeersLocked(live)
}

// member reports whether membership ever named id a peer, live or failed, since the
// replicator started: a member that has left since still counts (a node that stops drains
// its last writes to its peers after it left). A push's sender names its origin itself,
// so what this node learns from a push about an origin (Through) counts only for members:
// a peer inventing origins would otherwise push real ones' marks out of the bounded
// knowledge (crdt.Bookmark) and grow what is kept per origin.
func (r *Replicator) member(id crdt.NodeID) bool {
	known := r.known.Load()
	return known != nil && (*known)[id]
}

// noteMembersLocked adds the IDs of peers to those member reports. r.mu is held.
func (r *Replicator) noteMembersLocked(peers []Peer) {
	old := r.known.Load()
	var known map[crdt.NodeID]bool
	for _, p := range peers {
		if old != nil && (*old)[p.ID] || known != nil && known[p.ID] {
			continue
		}
		if known == nil { // copy on write: member reads without the lock
			known = make(map[crdt.NodeID]bool)
			if old != nil {
				maps.Copy(known, *old)
			}
		}
		known[p.ID] = true
	}
	if known != nil {
		r.known.Store(&known)
	}
}

func (r *Replicator) setPeersLocked(peers []Peer) {
	if r.closed {
		return
	}
	want := make(map[crdt.NodeID]Peer, len(peers))
	for _, p := range peers {
		if p.ID != r.self {
			want[p.ID] = p
		}
	}
	for id, w := range r.workers {
		p, ok := want[id]
		if p.Joining = w.peer.Joining; !ok || p != w.peer { // joining or not, the same peer to talk to
			w.cancel()
			delete(r.workers, id)
			r.have.gone(id, time.Now())
		}
	}
	r.peers = slices.Clone(peers)
	r.noteMembersLocked(slices.Concat(peers, r.down))
	if len(want) > 0 {
		select {
		case <-r.peersIn:
		default:
			close(r.peersIn)
		}
	}
	r.replanLocked()
	for id, p := range want {
		if _, ok := r.workers[id]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(r.ctx)
		w := &worker{peer: p, cancel: cancel, wake: make(chan struct{}, 1), sync: make(chan struct{}, 1), replan: make(chan struct{}, 1)}
		r.workers[id] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.run(ctx, w)
		}()
	}
}

// replanLocked recomputes the placement from the peers and this node's joining state; if
// it changed, what we know we hold of the partitions we gain starts empty, and every
// worker starts over (its pushes so far went by the old placement). r.mu is held.
func (r *Replicator) replanLocked() {
	v, old := newView(r.selfPeer(), r.peers, r.cfg.Replicas, r.joining), r.view.Load()
	if v.fingerprint == old.fingerprint {
		return
	}
	was, now := old.held(r.self), v.held(r.self)
	var gained []int
	for p := range crdt.Partitions {
		if now.has(p) && !was.has(p) {
			gained = append(gained, p)
		}
	}
	r.view.Store(v)
	r.have.replan(v.fingerprint, gained, now)
	for _, w := range r.workers {
		poke(w.replan)
	}
	poke(r.replanned)
}

// Joined makes a joining node (Config.Joining) take its share of the partitions. Call it
// once CaughtUp is closed (or the wait for it timed out). Safe to call more than once.
func (r *Replicator) Joined() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.joining && !r.closed {
		r.joining = false
		r.replanLocked()
	}
}

// bootstrap catches a joining node up: once it knows its peers, it pulls from each of
// them, its own region's first, the partitions it will hold once it has joined, and then
// closes CaughtUp. A peer that fails is tried again after the others while it is a live
// peer, until ctx ends.
func (r *Replicator) bootstrap(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-r.peersIn:
	}
	done := map[crdt.NodeID]bool{}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		r.mu.Lock()
		will := newView(r.selfPeer(), r.peers, r.cfg.Replicas, false).held(r.self)
		var todo []Peer
		for _, p := range r.peers {
			if !done[p.ID] {
				todo = append(todo, p)
			}
		}
		r.mu.Unlock()
		if len(todo) == 0 {
			r.log.Info("caught up: pulled what this node will hold", "peers", len(done))
			r.caughtUpOnce.Do(func() { close(r.caughtUp) })
			return
		}
		slices.SortStableFunc(todo, func(a, b Peer) int {
			return cmpBool(a.Region != r.cfg.Region, b.Region != r.cfg.Region)
		})
		failed := false
		for _, p := range todo {
			if _, err := r.syncIn(ctx, p, true, will); err != nil {
				r.log.Debug("catching up from peer failed", "peer", p.Name, slog.Any("err", err))
				failed = true
				continue
			}
			done[p.ID] = true
		}
		if failed {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// Peers returns how many live peers the replicator serves now.
func (r *Replicator) Peers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.workers)
}

// Notify tells the workers that local changes were committed. It never blocks; the
// storage commit hook calls it.
func (r *Replicator) Notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		poke(w.wake)
	}
}

// Drain waits until every worker has pushed to its peer the writes committed here before
// the call, or ctx ends; a node that stops calls it before Close, so that what it
// acknowledged last is on its peers while it is down. It returns ctx's error if some
// peer was not reached.
func (r *Replicator) Drain(ctx context.Context) error {
	target := r.cfg.DB.FeedSeq()
	r.Notify()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		r.mu.Lock()
		done := true
		for _, w := range r.workers {
			done = done && w.drained.Load() >= target
		}
		r.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Notice handles a peer's announcement of its digest root: if it differs from ours, the
// worker for that peer runs anti-entropy soon.
func (r *Replicator) Notice(from crdt.NodeID, root uint64) {
	if r.view.Load().sharded() {
		return // roots of nodes that hold different partitions always differ
	}
	d := r.cfg.DB.Digest()
	if d.Root() == root {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.workers[from]; ok {
		poke(w.sync)
	}
}

// CaughtUp is closed once this node has completed anti-entropy with at least one peer (a
// joining node with placement: once it has pulled from every peer what it will hold): a
// restarted node holds everything its peers held when it came back.
func (r *Replicator) CaughtUp() <-chan struct{} { return r.caughtUp }

// PeerStatus is the replication state of one peer as seen from here.
type PeerStatus struct {
	Lag     time.Duration // last observed delay of its changes reaching us; -1 unknown
	Pending int64         // our local changes not yet pushed to it (approximate)
}

// Status returns the replication state of every peer known now.
func (r *Replicator) Status() map[crdt.NodeID]PeerStatus {
	r.mu.Lock()
	out := make(map[crdt.NodeID]PeerStatus, len(r.workers))
	for id, w := range r.workers {
		out[id] = PeerStatus{Lag: -1, Pending: w.pending.Load()}
	}
	r.mu.Unlock()
	r.lagMu.Lock()
	defer r.lagMu.Unlock()
	for id, l := range r.lag {
		if s, ok := out[id]; ok {
			s.Lag = l
			out[id] = s
		}
	}
	return out
}

func (r *Replicator) jitter() time.Duration {
	d := r.cfg.AntiEntropyEvery
	return d*3/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// run serves one peer until ctx ends. Anti-entropy and pushes fail and back off
// independently: a round that keeps failing (a peer that refuses it, a reply it cannot
// send) never holds back the pushes of new writes, and pushes that keep failing are
// given up to anti-entropy after maxPushFailures tries.
func (r *Replicator) run(ctx context.Context, w *worker) {
	log := r.log.With("peer", w.peer.Name)
	var cursor uint64
	restart := func() {
		// Every write of ours stamped at or before the commit mark is in the feed before
		// the cursor, which the next anti-entropy round covers; later ones come after it.
		w.era = r.view.Load()
		w.pushed = r.cfg.DB.Committed()
		cursor = r.cfg.DB.FeedSeq()
		w.synced = false
		w.told = crdt.Timestamp{} // what we told went by the old placement, which may not count now
	}
	restart()
	needSync, pushRetry := true, false
	var syncBackoff, pushBackoff time.Duration
	var syncAfter, pushAfter time.Time // no attempt before
	pushFailures := 0
	timer := time.NewTimer(r.jitter())
	defer timer.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	key := w.peer.Name
	for {
		if d := r.cfg.Guard.Backoff(key); d > 0 {
			// The peer sent something invalid: call it again only once its backoff ends.
			until := time.Now().Add(d)
			if needSync && syncAfter.Before(until) {
				syncAfter = until
			}
			if !pushRetry || pushAfter.Before(until) {
				pushRetry, pushAfter = true, until
			}
		}
		if needSync && !time.Now().Before(syncAfter) {
			if res, err := r.sync(ctx, w.peer, false); err == nil {
				needSync, syncBackoff = false, 0
				if res.complete {
					w.synced, w.peerEra = res.placement == w.era.fingerprint, res.era
				}
			} else {
				if ctx.Err() != nil {
					return
				}
				syncBackoff = min(max(2*syncBackoff, 50*time.Millisecond), 5*time.Second)
				syncAfter = time.Now().Add(syncBackoff)
				log.Debug("anti-entropy with peer failed", slog.Any("err", err), "retry_in", syncBackoff)
			}
		}
		if r.view.Load().fingerprint != w.era.fingerprint {
			restart() // the replan signal may not have reached this loop yet
			needSync, pushRetry, pushFailures = true, false, 0
		}
		if !pushRetry || !time.Now().Before(pushAfter) {
			var err error
			cursor, err = r.pushFrom(ctx, w, cursor)
			if w.stale {
				// The peer is in another era than our latest round with it: what we told
				// it may not hold any more. A round makes our pushes count again.
				w.stale, w.synced, w.told, needSync = false, false, crdt.Timestamp{}, true
			}
			if err == nil {
				pushRetry, pushFailures, pushBackoff = false, 0, 0
				if !needSync {
					w.drained.Store(cursor)
				}
			} else {
				if ctx.Err() != nil {
					return
				}
				if pushFailures++; pushFailures >= maxPushFailures {
					log.Warn("push to peer keeps failing; leaving these changes to anti-entropy", slog.Any("err", err))
					restart()
					needSync, pushFailures = true, 0
				}
				pushBackoff = min(max(2*pushBackoff, 50*time.Millisecond), 5*time.Second)
				pushRetry, pushAfter = true, time.Now().Add(pushBackoff)
				log.Debug("push to peer failed", slog.Any("err", err), "retry_in", pushBackoff)
			}
		}
		// Wait for work: a commit, a notice, the periodic round, or a retry falling due.
		var retryC <-chan time.Time
		if needSync || pushRetry {
			due := pushAfter
			if needSync && (!pushRetry || syncAfter.Before(pushAfter)) {
				due = syncAfter
			}
			retry.Reset(max(time.Until(due), 0))
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			return
		case <-retryC:
		case <-w.wake: // pushed at the top unless a failed push is backing off
		case <-w.sync:
			needSync = true
		case <-w.replan:
			restart()
			needSync, pushRetry, pushFailures = true, false, 0
		case <-timer.C:
			needSync = true
			timer.Reset(r.jitter())
		}
		retry.Stop()
	}
}

// pushFrom pushes this node's own changes after cursor (see ownSince) to the worker's peer,
// in pushes bounded by count and bytes, and returns the new cursor. Changes that
// originated elsewhere are not relayed: their origin pushes them, and anti-entropy
// repairs whatever a push missed.
//
// The peer is also told a mark (PushRequest.Through) up to which it now holds every write
// of ours: the commit mark read before a pass over the feed, since every write stamped at or
// before it was in the feed the pass read (and pushes since the worker's first
// anti-entropy round carried the earlier ones). A pass tells it only when something pushed
// is not yet covered by a mark told before; when a pass pushed writes newer than its own
// mark (they committed while it read), a second pass with a fresh mark covers them.
func (r *Replicator) pushFrom(ctx context.Context, w *worker, cursor uint64) (uint64, error) {
	for range 2 {
		var err error
		if cursor, err = r.pushPass(ctx, w, cursor, r.cfg.DB.Committed()); err != nil {
			return cursor, err
		}
		if !w.told.Less(w.pushed) {
			break
		}
	}
	return cursor, nil
}

// pushPass is one pass of pushFrom over the feed, from cursor to its end.
//
// Every batch of the pass judges by the same since, the worker's mark when the pass began
// (w.pushed moves only once the pass is done): a write of ours that a remote write to the
// same record overtook moves to the end of the feed, behind newer writes of ours that an
// earlier batch of the pass pushed, and must still count as unpushed when the pass reaches
// it, or a mark that covers it would be told without it.
func (r *Replicator) pushPass(ctx context.Context, w *worker, cursor uint64, mark crdt.Timestamp) (uint64, error) {
	since, newest := w.pushed, w.pushed
	v := w.era
	for {
		changes, next, err := r.cfg.DB.ChangesSince(ctx, cursor, r.cfg.PushBatch)
		if err != nil {
			return cursor, err
		}
		// The feed shows only published commits (storage), so a remote change that
		// overtook a write of ours is noted already (storage.DB.Overtaken).
		own := changes[:0:0]
		for _, c := range changes {
			ts, ok := r.ownSince(c, since)
			if !ok && c.Conv == "" {
				// A write of ours that a remote one replaced here before we pushed it: relay
				// the record, which carries the replacing write, so that Through holds.
				if ot, found := r.cfg.DB.Overtaken(c.Key); found && since.Less(ot) {
					ts, ok = ot, true
				}
			}
			if ok {
				newest = maxTS(newest, ts)
				if v.holds(w.peer.ID, c.Key) {
					own = append(own, c)
				}
			}
		}
		last := len(changes) < r.cfg.PushBatch
		tell := last && w.synced && w.told.Less(newest)
		if len(own) > 0 {
			w.pending.Store(int64(len(own)))
			sent := 0
			for batch := range pushBatches(own, r.cfg.PushBatch, r.budget()) { // new writes: not bounded by MoveRate
				req := PushRequest{From: r.self, Changes: batch, Placement: v.fingerprint}
				if sent += len(batch); tell && sent == len(own) {
					req.Through, req.Held, req.Era = mark, v.heldWords(w.peer.ID), w.peerEra
				}
				if err := r.push(ctx, w, req); err != nil {
					return cursor, err
				}
			}
		} else if tell {
			if err := r.push(ctx, w, PushRequest{From: r.self, Through: mark, Placement: v.fingerprint, Held: v.heldWords(w.peer.ID), Era: w.peerEra}); err != nil {
				return cursor, err
			}
		}
		if tell {
			w.told = maxTS(w.told, mark)
		}
		w.pending.Store(0)
		cursor = next
		if last {
			w.pushed = newest
			return cursor, nil
		}
	}
}

// push sends req to the worker's peer and notes a reply from another era (w.stale).
func (r *Replicator) push(ctx context.Context, w *worker, req PushRequest) error {
	req.Version = w.peer.Proto
	rep, err := r.cfg.Transport.Push(ctx, w.peer, req)
	if err == nil && rep.Era != w.peerEra {
		w.stale = true
	}
	return r.replyErr(w.peer, "push", err)
}

// ownSince reports whether the change carries a write of this node's that is its to push:
// a log entry it appended, a record whose latest version it wrote, or a record holding a
// field it wrote after since (the worker's last push) that a newer remote version of
// another field overtook before the push. It also returns the latest timestamp of this
// node's writes in the change.
func (r *Replicator) ownSince(c storage.Change, since crdt.Timestamp) (crdt.Timestamp, bool) {
	if c.Conv != "" {
		return c.Entry.ID.TS, c.Entry.ID.Origin() == r.self
	}
	var newest crdt.Timestamp
	for _, name := range c.Map.Names() {
		if f, _ := c.Map.Field(name); f.TS.Node == r.self {
			newest = maxTS(newest, f.TS)
		}
	}
	return newest, c.Map.Version().Node == r.self || since.Less(newest)
}

// revokes reports whether the latest write to record m, stamped ts, revoked sessions: a
// session's revoked flag, a user's sign-out everywhere or erasure.
func revokes(m *crdt.Map, ts crdt.Timestamp) bool {
	for _, name := range [...]string{crdt.FieldRevoked, crdt.FieldSessionsUntil, crdt.FieldDeleted} {
		if f, ok := m.Field(name); ok && f.TS == ts {
			return true
		}
	}
	return false
}

func maxTS(a, b crdt.Timestamp) crdt.Timestamp {
	if a.Less(b) {
		return b
	}
	return a
}

// budget bounds the encoded changes of one push, and the pairs of one leaf request and
// the changes of its reply: a quarter of the message bound, which leaves room for the
// rest of the message and for one record (at most storage.MaxRecord) past the budget. A
// batch of PushBatch large records would exceed MaxMessage, and the transport would
// refuse the same batch on every retry.
func (r *Replicator) budget() int { return r.cfg.MaxMessage / 4 }

// moving waits until n more bytes of stored state may be sent (Config.MoveRate), or ctx
// ends.
func (r *Replicator) moving(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	if m := r.cfg.Metrics; m != nil {
		m.Moved.Add(float64(n))
	}
	if r.move == nil {
		return nil
	}
	res := r.move.ReserveN(time.Now(), min(n, r.move.Burst()))
	d := res.Delay()
	if d == 0 {
		return nil
	}
	if m := r.cfg.Metrics; m != nil {
		m.MoveWait.Add(d.Seconds())
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		res.Cancel()
		return ctx.Err()
	}
}

// pushBatches splits changes into runs of at most n changes and maxBytes encoded bytes
// (a single larger change goes alone), each with its encoded size.
func pushBatches(changes []storage.Change, n, maxBytes int) iter.Seq2[[]storage.Change, int] {
	return func(yield func([]storage.Change, int) bool) {
		start, size := 0, 0
		for i, c := range changes {
			s := len(c.AppendBinary(nil))
			if i > start && (i-start == n || size+s > maxBytes) {
				if !yield(changes[start:i], size) {
					return
				}
				start, size = i, 0
			}
			size += s
		}
		if start < len(changes) {
			yield(changes[start:], size)
		}
	}
}

// HandlePush applies a peer's changes and answers with this node's era.
func (r *Replicator) HandlePush(ctx context.Context, req PushRequest) (PushReply, error) {
	var res storage.ApplyResult
	if len(req.Changes) > 0 {
		var err error
		if res, err = r.cfg.DB.ApplyRemote(ctx, req.Changes); err != nil {
			return PushReply{}, err
		}
		r.count(res)
	}
	if res.Rejected > 0 || res.TooLarge > 0 {
		r.have.distrust(req.From, res.Refused)
	}
	if !req.Through.IsZero() && req.Through.Node == req.From && req.From != r.self && r.member(req.From) {
		r.have.pushed(r.clamp(req.Through), req.Placement, req.Held, req.Era)
	}
	now := r.cfg.Now()
	var newest time.Duration = -1
	for _, c := range req.Changes {
		ts := c.Entry.ID.TS
		if c.Conv == "" {
			ts = c.Map.Version()
		}
		if ts.Node != req.From {
			continue
		}
		d := max(now.Sub(ts.Time()), 0)
		if r.cfg.Metrics != nil {
			r.cfg.Metrics.Propagation.Observe(d.Seconds())
			if c.Conv == "" && revokes(&c.Map, ts) {
				r.cfg.Metrics.Revocation.Observe(d.Seconds())
			}
		}
		newest = d
	}
	if newest >= 0 {
		r.lagMu.Lock()
		r.lag[req.From] = newest
		r.lagMu.Unlock()
	}
	// Read last: a sender whose Through this push did not count, because we changed era
	// meanwhile, learns so from this reply.
	return PushReply{Version: req.Version, Era: r.have.currentEra()}, nil
}

func (r *Replicator) count(res storage.ApplyResult) {
	m := r.cfg.Metrics
	if m == nil {
		return
	}
	m.Applied.WithLabelValues("applied").Add(float64(res.Applied))
	m.Applied.WithLabelValues("unchanged").Add(float64(res.Unchanged))
	m.Applied.WithLabelValues("dropped").Add(float64(res.Dropped))
	m.Applied.WithLabelValues("rejected").Add(float64(res.Rejected))
	m.Applied.WithLabelValues("too_large").Add(float64(res.TooLarge))
	m.Rejected.Add(float64(res.Rejected))
}

// HandleDigest returns our leaf hashes for every branch whose hash differs from the
// requester's.
func (r *Replicator) HandleDigest(ctx context.Context, req DigestRequest) (DigestReply, error) {
	if len(req.Branches) != crdt.DigestBranches {
		return DigestReply{}, errors.New("digest request: wrong number of branches")
	}
	// What we hold is read before the digest: the requester, once it has what the digest
	// leads it to, holds at least that.
	rep := DigestReply{Version: req.Version, Era: r.have.currentEra()}
	rep.Have, rep.HaveMask = r.haveOf(req.Mask)
	d := r.cfg.DB.Digest()
	d.Restrict(req.Mask)
	for b, h := range req.Branches {
		if d.Branch(b) != h {
			rep.Branches = append(rep.Branches, BranchLeaves{Branch: b, Leaves: d.LeavesOf(b)})
		}
	}
	return rep, nil
}

// HandleLeaves compares the requester's keys with ours leaf by leaf (within each leaf's
// key range): it returns our state of every key it lacks or holds differently, and asks
// for every key we lack or hold differently. The changes it returns are bounded by the
// budget; past it, the reply is marked Truncated and the requester's next round goes on.
func (r *Replicator) HandleLeaves(ctx context.Context, req LeavesRequest) (LeavesReply, error) {
	rep := LeavesReply{Version: req.Version}
	size := 0
	for _, lp := range req.Leaves {
		mine, err := r.cfg.DB.LeafPairs(ctx, lp.Leaf)
		if err != nil {
			return LeavesReply{}, err
		}
		theirs := make(map[string]uint64, len(lp.Pairs))
		for _, p := range lp.Pairs {
			if lp.covers(p.Key) {
				theirs[p.Key] = p.Hash
			}
		}
		var give []string
		for _, p := range mine {
			if !lp.covers(p.Key) {
				continue
			}
			h, ok := theirs[p.Key]
			switch {
			case !ok && lp.Only:
			case !ok:
				give = append(give, p.Key)
			case h != p.Hash: // both hold it, differently: merge both ways
				give = append(give, p.Key)
				rep.Want = append(rep.Want, p.Key)
			}
			delete(theirs, p.Key)
		}
		var erased map[string][]string
		if lp.Only { // a handoff offer (in a full round the peer gets our markers anyway)
			var err error
			if erased, err = r.erasedConvs(ctx, mine, theirs); err != nil {
				return LeavesReply{}, err
			}
		}
		for k := range theirs { // they hold it, we lack it
			rep.Want = append(rep.Want, k)
		}
		for _, keys := range erased {
			for _, k := range keys {
				if !slices.Contains(give, k) {
					give = append(give, k)
				}
			}
		}
		for keys := range slices.Chunk(give, 64) {
			if rep.Truncated {
				break
			}
			changes, err := r.cfg.DB.Changes(ctx, keys)
			if err != nil {
				return LeavesReply{}, err
			}
			for _, c := range changes {
				n := len(c.AppendBinary(nil))
				if size > 0 && size+n > r.budget() {
					rep.Truncated = true
					break
				}
				size += n
				rep.Changes = append(rep.Changes, c)
			}
		}
	}
	if err := r.moving(ctx, size); err != nil {
		return LeavesReply{}, err
	}
	return rep, nil
}

// leavesPerRequest bounds the leaves compared in one LeavesRequest (besides the budget).
const leavesPerRequest = 256

// erasedConvs returns, for the conversations of the log entries in theirs (keys of one
// leaf offered Only, by a node handing them off, that we lack) in which mine (our keys
// of that leaf) holds erasure markers, the keys of those markers. Messages of such a
// conversation would be discarded here (a participant is erased), and an offerer that
// never learnt of the erasure (it holds neither participant) would offer them again
// every handoff round, for good: the caller sends it the markers too, which purge its
// copies (checkLeavesReply accepts them), and still wants what was offered — a marker
// of the offerer's own would be stored here, and nothing is confirmed that is not held.
// A conversation that holds a marker holds nothing else (storage), so one entry read
// per conversation tells.

func (r *Replicator) erasedConvs(ctx context.Context, mine []storage.KeyHash, theirs map[string]uint64) (map[string][]string, error) {
	asked := map[string]bool{}
	for k := range theirs {
		if conv, _, ok := storage.ParseLogKey(k); ok {
			asked[conv] = true
		}
	}
	if len(asked) == 0 {
		return nil, nil
	}
	ours := map[string][]string{}
	for _, p := range mine {
		if conv, _, ok := storage.ParseLogKey(p.Key); ok && asked[conv] {
			ours[conv] = append(ours[conv], p.Key)
		}
	}
	out := map[string][]string{}
	for conv, keys := range ours {
		changes, err := r.cfg.DB.Changes(ctx, keys[:1])
		if err != nil {
			return nil, err
		}
		if len(changes) == 1 && crdt.IsErasureMarker(changes[0].Entry.Data) {
			out[conv] = keys
		}
	}
	return out, nil
}

// leafRequests yields the LeavesRequests that compare leaves: whole leaves while they fit
// in the budget, and a leaf too large for one request in parts by key range.
func (r *Replicator) leafRequests(ctx context.Context, leaves []int) iter.Seq2[LeavesRequest, error] {
	return leafRequests(leaves, r.budget(), func(leaf int) ([]storage.KeyHash, error) {
		return r.cfg.DB.LeafPairs(ctx, leaf)
	})
}

// leafRequests yields requests for leaves, each at most budget bytes of leaves and pairs
// (and never more than leavesPerRequest leaves), reading each leaf's pairs, sorted by key,
// with pairsOf.
func leafRequests(leaves []int, budget int, pairsOf func(leaf int) ([]storage.KeyHash, error)) iter.Seq2[LeavesRequest, error] {
	return func(yield func(LeavesRequest, error) bool) {
		const (
			header   = 16                          // kind, version, list length
			perLeaf  = 3*binary.MaxVarintLen64 + 8 // leaf, count, range lengths
			pairSize = binary.MaxVarintLen64 + 8
		)
		var req LeavesRequest
		size := header
		flush := func() bool {
			if len(req.Leaves) == 0 {
				return true
			}
			ok := yield(req, nil)
			req, size = LeavesRequest{}, header
			return ok
		}
		for _, l := range leaves {
			pairs, err := pairsOf(l)
			if err != nil {
				yield(LeavesRequest{}, err)
				return
			}
			longest := 0 // the range's ends are keys of the leaf
			for _, p := range pairs {
				longest = max(longest, len(p.Key))
			}
			from := ""
			for {
				if len(req.Leaves) == leavesPerRequest && !flush() {
					return
				}
				room, n := budget-size-perLeaf-len(from)-longest, 0
				for n < len(pairs) && room >= pairSize+len(pairs[n].Key) {
					room -= pairSize + len(pairs[n].Key)
					n++
				}
				if n == 0 && len(pairs) > 0 {
					if len(req.Leaves) > 0 { // the rest of this request is too small
						if !flush() {
							return
						}
						continue
					}
					n, room = 1, room-pairSize-len(pairs[0].Key) // a pair larger than the budget goes alone
				}
				if n == len(pairs) {
					req.Leaves = append(req.Leaves, LeafPairs{Leaf: l, Pairs: pairs, From: from})
					size = budget - room
					break
				}
				to := pairs[n].Key
				req.Leaves = append(req.Leaves, LeafPairs{Leaf: l, Pairs: pairs[:n], From: from, To: to})
				if !flush() {
					return
				}
				pairs, from = pairs[n:], to
			}
		}
		flush()
	}
}

// SyncWith runs one anti-entropy round with peer: compare branch hashes, then leaf hashes
// of the branches that differ, then the keys of the leaves that differ; apply what the
// peer has that we lack, and push what it lacks. Replicas in sync exchange one branch
// list and an empty reply.
//
// A round that completes (no truncated reply) leaves this node holding everything the
// peer held when it answered, but in the partitions of changes it refused, so what the
// peer reported it held (its Have) is added to ours for the others.
func (r *Replicator) SyncWith(ctx context.Context, peer Peer) error {
	_, err := r.sync(ctx, peer, false)
	return err
}

// syncResult is how a sync ended.
type syncResult struct {
	complete  bool          // a round completed; the rest is about it
	have      crdt.Bookmark // what the peer held
	placement uint64        // the fingerprint of the placement it ran under, or an older one
	era       uint64        // the peer's era
}

// sync runs rounds with peer until one completes (or maxRounds did not suffice); pull
// leaves out pushing what the peer lacks.
func (r *Replicator) sync(ctx context.Context, peer Peer, pull bool) (syncResult, error) {
	return r.syncIn(ctx, peer, pull, nil)
}

// syncIn is sync; a pull compares the partitions in only (nil: those this node holds).
func (r *Replicator) syncIn(ctx context.Context, peer Peer, pull bool, only *partitionSet) (syncResult, error) {
	for range maxRounds {
		fp := r.view.Load().fingerprint // the placement syncRound reads, or an older one
		res, again, err := r.syncRound(ctx, peer, pull, only)
		if err != nil || !again {
			res.placement = fp
			return res, err
		}
	}
	return syncResult{}, nil
}

// maxRounds bounds the rounds of one SyncWith when replies are truncated; the periodic
// anti-entropy carries on from there.
const maxRounds = 64

// syncRound runs one round and reports whether a truncated reply left work for another.
// A round that completes — nothing truncated — returns what the peer held (its reply's
// Have), which this node now holds too but in the partitions of the peer's changes it
// refused, and adds it to ours.
func (r *Replicator) syncRound(ctx context.Context, peer Peer, pull bool, only *partitionSet) (res syncResult, again bool, err error) {
	epoch, era := r.have.roundStarts()
	v := r.view.Load()
	d := r.cfg.DB.Digest()
	req := DigestRequest{}
	// What the round teaches about what we hold, once it completes (see completed): when
	// it compares every partition we hold, we hold every write of the peer's own that it
	// held (ownOK); when the peer also holds every partition we hold, under the same
	// placement, everything its Have says (allOK). A pull compares all we hold: it serves
	// a bookmark (Await), and the peer sends what it has of them, held or not.
	scope := roundScope{all: true}
	mask := v.syncMask(r.self, peer.ID, &d)
	if pull && mask != nil {
		mask = v.held(r.self)
		if only != nil {
			mask = only
		}
	}
	mine := v.held(r.self)
	if mask != nil {
		req.Mask = mask.words()
		d.Restrict(req.Mask)
		compared := *mask // what we learn about: partitions we hold, not leftovers
		for i := range compared {
			compared[i] &= mine[i]
		}
		scope = roundScope{compared: &compared, full: &partitionSet{}, one: pull && only != nil && only.count() == 1, peerHeld: v.held(peer.ID)}
	}
	req.Branches, req.Version = d.Branches(), peer.Proto
	rep, err := r.cfg.Transport.Digest(ctx, peer, req)
	if err != nil {
		r.cfg.Metrics.round("error")
		return syncResult{}, false, r.replyErr(peer, "digest", err)
	}
	rep.Have = r.clampBookmark(rep.Have)
	if rep.HaveMask != nil || scope.compared != nil {
		// What the peer's Have is about, as the peer says (its placement may differ from
		// ours): the partitions it holds and knows of, of those compared.
		if scope.compared == nil {
			scope.compared = mine
		}
		about := *scope.compared
		if rep.HaveMask != nil {
			for i := range about {
				if i < len(rep.HaveMask) {
					about[i] &= rep.HaveMask[i]
				}
			}
		}
		scope.full = &about
		scope.all = about.coversAll(mine)
	}
	var leaves []int
	for _, bl := range rep.Branches {
		if bl.Branch < 0 || bl.Branch >= crdt.DigestBranches || len(bl.Leaves) != crdt.DigestBranches {
			// The decoders refuse these; a Transport that does not decode must too.
			return syncResult{}, false, r.replyErr(peer, "digest", invalid(errors.New("digest reply: branch out of range")))
		}
		for j, h := range bl.Leaves {
			leaf := bl.Branch*crdt.DigestBranches + j
			if d.Leaf(leaf) != h && !(pull && h == 0) { // a pull needs nothing from an empty leaf
				leaves = append(leaves, leaf)
			}
		}
	}
	if len(leaves) == 0 {
		r.cfg.Metrics.round("in_sync")
		return r.completed(ctx, peer, epoch, era, rep, scope, v.fingerprint)
	}
	var refused []string
	for req, err := range r.leafRequests(ctx, leaves) {
		var truncated bool
		for i := range req.Leaves {
			// Offer only our keys of a partition we do not hold (a pull wants theirs).
			req.Leaves[i].Only = !pull && v.sharded() && !mine.has(req.Leaves[i].Leaf)
		}
		var keys []string
		if err == nil {
			truncated, keys, err = r.syncLeaves(ctx, peer, req, pull)
		}
		if err != nil {
			r.cfg.Metrics.round("error")
			return syncResult{}, false, err
		}
		again = again || truncated
		refused = append(refused, keys...)
	}
	r.cfg.Metrics.round("repaired")
	if again {
		return syncResult{}, true, nil
	}
	if len(refused) > 0 {
		// The round completed but for changes we refused (clock skew, size): it teaches
		// nothing about their partitions, which the periodic round tries again.
		var parts partitionSet
		parts.addHomes(refused)
		scope.refused = &parts
	}
	return r.completed(ctx, peer, epoch, era, rep, scope, v.fingerprint)
}

// completed records a round with peer, begun at epoch in era, that completed with the
// peer's digest reply rep: this node now holds what the peer held (rep.Have) in the
// partitions scope says (see haveState.synced). The round compared the peer's state
// with what this node's file holds, which storage publishes to readers before the file
// shows it.
func (r *Replicator) completed(ctx context.Context, peer Peer, epoch, era uint64, rep DigestReply, scope roundScope, placement uint64) (syncResult, bool, error) {
	r.have.synced(peer.ID, epoch, era, rep.Have, r.self, placement, scope)
	r.noteCaughtUp()
	return syncResult{complete: true, have: rep.Have, era: rep.Era}, false, nil
}

// noteCaughtUp records a completed round: the first catches this node up, unless it is
// joining with placement (bootstrap decides then).
func (r *Replicator) noteCaughtUp() {
	if r.cfg.Joining && r.cfg.Replicas > 0 {
		return
	}
	r.caughtUpOnce.Do(func() { close(r.caughtUp) })
}

// syncLeaves exchanges the keys of one request's leaves with peer. It reports whether the
// reply was truncated and the keys of the peer's changes this node refused (clock skew,
// size).
func (r *Replicator) syncLeaves(ctx context.Context, peer Peer, req LeavesRequest, pull bool) (truncated bool, refused []string, err error) {
	req.Version = peer.Proto
	rep, err := r.cfg.Transport.Leaves(ctx, peer, req)
	if err == nil {
		err = checkLeavesReply(req, rep)
	}
	if err != nil {
		return false, nil, r.replyErr(peer, "leaves", err)
	}
	if len(rep.Changes) > 0 {
		res, err := r.cfg.DB.ApplyRemote(ctx, rep.Changes)
		if err != nil {
			return false, nil, err
		}
		r.count(res)
		refused = res.Refused
	}
	if len(rep.Want) == 0 || pull {
		return rep.Truncated, refused, nil
	}
	changes, err := r.cfg.DB.Changes(ctx, rep.Want)
	if err != nil {
		return false, nil, err
	}
	return rep.Truncated, refused, r.pushEach(ctx, peer, changes, 0)
}

// pushEach pushes changes to peer in batches. A batch that fails is pushed again one
// change at a time, so a change the peer cannot take does not hold back the others; it
// returns the first error. Each push is bounded by timeout (0: only by ctx), and one
// that times out is marked errOfferTimeout and not pushed again change by change;
// waiting for the move rate is not bounded.
func (r *Replicator) pushEach(ctx context.Context, peer Peer, changes []storage.Change, timeout time.Duration) error {
	push := func(batch []storage.Change) error {
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			cctx, cancel = context.WithTimeout(ctx, timeout)
		}
		defer cancel()
		_, err := r.cfg.Transport.Push(cctx, peer, PushRequest{Version: peer.Proto, From: r.self, Changes: batch})
		return timedOut(ctx, cctx, err)
	}
	var first error
	for batch, size := range pushBatches(changes, r.cfg.PushBatch, r.budget()) {
		if err := r.moving(ctx, size); err != nil {
			return err
		}
		err := push(batch)
		if err == nil {
			continue
		}
		if errors.Is(r.replyErr(peer, "push", err), ErrInvalidMessage) {
			return err // a faulty peer: no point pushing it each change alone
		}
		if ctx.Err() != nil {
			return err
		}
		if first == nil {
			first = err
		}
		if len(batch) == 1 || errors.Is(err, errOfferTimeout) {
			continue // a peer that timed out would only time out once per change
		}
		for i := range batch {
			_ = push(batch[i : i+1])
		}
	}
	return first
}

// clamp returns ts, or, if it is later than any write this node could hold (beyond
// MaxSkew ahead of its clock: storage refuses such writes), the latest it could hold. A
// peer's Through or Have that claims more is from a far-skewed or faulty peer; what it
// says of earlier writes still holds.
func (r *Replicator) clamp(ts crdt.Timestamp) crdt.Timestamp {
	limit := r.cfg.Now().Add(r.cfg.MaxSkew).UnixNano()
	if ts.Wall <= limit {
		return ts
	}
	return crdt.Timestamp{Wall: limit, Node: ts.Node}
}

// clampBookmark returns b with every mark clamped (see clamp).
func (r *Replicator) clampBookmark(b crdt.Bookmark) crdt.Bookmark {
	for _, ts := range b.Marks() {
		if r.clamp(ts) != ts {
			var out crdt.Bookmark
			for _, ts := range b.Marks() {
				out.Add(r.clamp(ts))
			}
			return out
		}
	}
	return b
}

// markerOfOffered reports whether c is an erasure marker of a conversation of which req
// offered an entry in a leaf compared Only, in that leaf: what a holder that erased the
// conversation answers beside wanting the entry (erasedConvs). A peer could push
// such a marker anyway; it only purges messages of that conversation.
func markerOfOffered(req LeavesRequest, c storage.Change) bool {
	if c.Conv == "" || !crdt.IsErasureMarker(c.Entry.Data) {
		return false
	}
	homes := crdt.KeyHomes(c.Key)
	for _, lp := range req.Leaves {
		// Not bounded by the leaf's key range: a leaf offered in parts gets the markers,
		// wherever they lie in it, with each part that offers one of the conversation's
		// entries.
		if !lp.Only || !homes.Contains(lp.Leaf) {
			continue
		}
		for _, p := range lp.Pairs {
			if conv, _, ok := storage.ParseLogKey(p.Key); ok && conv == c.Conv {
				return true
			}
		}
	}
	return false
}

// checkLeavesReply returns an error wrapping ErrInvalidMessage unless rep is a reply
// HandleLeaves could give to req: not cut short (Truncated) without a change, and every
// key of it one req asked about: each change and each wanted key lies
// in one of req's leaves (one of the key's homes), within that leaf's key range, and is
// one of the keys offered where the leaf was compared Only (or a change is an erasure
// marker of a conversation offered there: markerOfOffered). A reply that names other
// keys would make this node send records nobody asked for, or merge ones it did not
// compare.
func checkLeavesReply(req LeavesRequest, rep LeavesReply) error {
	var offered map[string]bool // the keys of the Only leaves, built once needed
	asked := func(key string) bool {
		homes := crdt.KeyHomes(key)
		for i := range req.Leaves {
			lp := &req.Leaves[i]
			if !homes.Contains(lp.Leaf) || !lp.covers(key) {
				continue
			}
			if !lp.Only {
				return true
			}
			if offered == nil {
				offered = make(map[string]bool)
				for _, lp := range req.Leaves {
					if lp.Only {
						for _, p := range lp.Pairs {
							offered[p.Key] = true
						}
					}
				}
			}
			if offered[key] {
				return true
			}
		}
		return false
	}
	if rep.Truncated && len(rep.Changes) == 0 {
		// HandleLeaves cuts a reply only after a change: an empty cut one would only
		// make this node ask again, round after round.
		return invalid(errors.New("leaves reply: truncated with no change"))
	}
	for _, c := range rep.Changes {
		if !asked(c.Key) && !markerOfOffered(req, c) {
			return invalid(fmt.Errorf("leaves reply: change of %q, which was not compared", c.Key))
		}
	}
	for _, k := range rep.Want {
		if !asked(k) {
			return invalid(fmt.Errorf("leaves reply: wants %q, which was not compared", k))
		}
	}
	return nil
}

// poke sends on a wake-up channel (capacity 1, so wake-ups coalesce) without blocking.
func poke(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// removedWatch is a Transport that calls removed when a peer refuses a request with
// ErrRemoved (Config.OnRemoved).
type removedWatch struct {
	Transport
	removed func()
}

func (w removedWatch) check(err error) {
	if errors.Is(err, ErrRemoved) {
		w.removed()
	}
}

func (w removedWatch) Push(ctx context.Context, to Peer, req PushRequest) (PushReply, error) {
	rep, err := w.Transport.Push(ctx, to, req)
	w.check(err)
	return rep, err
}

func (w removedWatch) Digest(ctx context.Context, to Peer, req DigestRequest) (DigestReply, error) {
	rep, err := w.Transport.Digest(ctx, to, req)
	w.check(err)
	return rep, err
}

func (w removedWatch) Leaves(ctx context.Context, to Peer, req LeavesRequest) (LeavesReply, error) {
	rep, err := w.Transport.Leaves(ctx, to, req)
	w.check(err)
	return rep, err
}
