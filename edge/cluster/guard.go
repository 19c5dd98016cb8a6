package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"golang.org/x/time/rate"
)

// ErrInvalidMessage is matched (errors.Is) by every error that says a peer's message or
// reply was invalid: bytes a decoder refused (truncated, out-of-range, oversized, of an
// unknown version or kind), or a decoded value the replicator cannot use (a reply naming
// keys it was not asked about). A peer holds the cluster key, but its bytes are input
// like a client's: a bug, a corrupted stream or a compromised node must cost an error,
// never a panic, and are counted and backed off (Guard).
var ErrInvalidMessage = errors.New("invalid sync message")

// ErrRemoved refuses the sync and forwarded requests of a node removed from the cluster
// for good (Guard.SetRemoved); a caller's transport returns it for such a refusal of a
// sync request, so that the removed node learns it (Config.OnRemoved).
var ErrRemoved = errors.New("this node was removed from the cluster for good (sessiond members remove): it must not rejoin with its data; wipe its data directory, which gives it a new node ID")

// invalid returns err wrapped in ErrInvalidMessage (nil for nil).
func invalid(err error) error {
	if err == nil || errors.Is(err, ErrInvalidMessage) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrInvalidMessage, err)
}

// errBackedOff is returned for a message from a peer that is backed off.
var errBackedOff = errors.New("sync peer backed off after invalid messages")

// Guard keeps account of the peers that send invalid messages or replies: it counts
// each (Metrics.InvalidMessages, by kind), logs them at most once per LogEvery per
// peer (with how many went unlogged), and backs the peer off: for a while after each
// invalid message, doubling with every further one up to MaxBackoff, messages from it
// are refused unread and this node does not call it. A peer that sends only valid
// messages for a backoff period is forgiven. Peers are named by the caller (a sync
// address, or a remote IP for the TLS server). Guard is safe for concurrent use; a nil
// *Guard accounts nothing and backs nobody off.
type Guard struct {
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	mu    sync.Mutex
	peers map[string]*faultyPeer

	removed    func(crdt.NodeID) bool                // see SetRemoved; nil: nobody
	idOf       func(name string) (crdt.NodeID, bool) // see SetRemoved; nil: callers without an ID pass
	removedLog *rate.Limiter                         // its log lines: a returning node calls several times before it stops
}

// Guard's bounds.
const (
	guardLogEvery   = 10 * time.Second
	guardMinBackoff = 100 * time.Millisecond
	guardMaxBackoff = 30 * time.Second
	guardMaxPeers   = 4096 // peers tracked at once; the longest forgiven go first
)

type faultyPeer struct {
	count      int       // invalid messages since tracked
	strikes    int       // invalid messages in a row without forgiveness
	until      time.Time // backed off until
	logged     time.Time // last log line
	suppressed int       // invalid messages not logged since
}

// NewGuard returns a guard that logs to logger (nil: nowhere) and counts in metrics
// (nil: nothing).
func NewGuard(logger *slog.Logger, metrics *Metrics) *Guard {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Guard{log: logger, metrics: metrics, now: time.Now, peers: make(map[string]*faultyPeer),
		removedLog: rate.NewLimiter(rate.Every(guardLogEvery), 1)}
}

// SetRemoved makes ServeMessage refuse, with ErrRemoved, every message from a caller
// whose node ID removed reports: a node removed from the cluster for good
// (crdt.RemovedPrefix). A caller that sends no ID (a build from before IDs were sent)
// is known by the ID that idOf gives for the name it sends (membership's view of the
// member of that name), if idOf is not nil. Both must be safe for concurrent use. Call
// it before serving.
func (g *Guard) SetRemoved(removed func(crdt.NodeID) bool, idOf func(name string) (crdt.NodeID, bool)) {
	g.removed, g.idOf = removed, idOf
}

// refuseRemoved reports whether id, the node ID of peer (0: unknown, then the ID of the
// member named peer, if any), names a removed node, whose requests are refused; it counts
// each refusal and logs some (one per guardLogEvery).
func (g *Guard) refuseRemoved(peer string, id crdt.NodeID) bool {
	if g == nil || g.removed == nil {
		return false
	}
	if id == 0 && g.idOf != nil {
		id, _ = g.idOf(peer)
	}
	if id == 0 || !g.removed(id) {
		return false
	}
	if g.metrics != nil {
		g.metrics.RemovedRefused.Inc()
	}
	if g.removedLog.Allow() {
		g.log.Warn("refused a request of a node removed from the cluster for good", "peer", peer, "id", id.String())
	}
	return true
}

// Invalid records an invalid message of kind (push, digest, leaves, counters; a reply:
// push_reply, digest_reply, leaves_reply) from peer, and returns how long peer is now
// backed off.
func (g *Guard) Invalid(peer, kind string, err error) time.Duration {
	if g == nil {
		return guardMinBackoff
	}
	if g.metrics != nil {
		g.metrics.InvalidMessages.WithLabelValues(kind).Inc()
	}
	now := g.now()
	g.mu.Lock()
	p := g.peers[peer]
	if p == nil {
		g.pruneLocked(now)
		p = &faultyPeer{}
		g.peers[peer] = p
	} else if now.After(p.until.Add(backoffFor(p.strikes))) {
		p.strikes = 0 // valid (or silent) for as long as it was last backed off: forgiven
	}
	p.strikes++
	p.count++
	d := backoffFor(p.strikes)
	p.until = now.Add(d)
	logIt := now.Sub(p.logged) >= guardLogEvery
	suppressed := p.suppressed
	if logIt {
		p.logged, p.suppressed = now, 0
	} else {
		p.suppressed++
	}
	g.mu.Unlock()
	if logIt {
		g.log.Warn("invalid sync message from peer; backing it off", "peer", peer, "kind", kind,
			slog.Any("err", err), "backoff", d, "unlogged_since_last", suppressed)
	}
	return d
}

// backoffFor returns the backoff after strikes invalid messages in a row.
func backoffFor(strikes int) time.Duration {
	d := guardMinBackoff
	for i := 1; i < strikes && d < guardMaxBackoff; i++ {
		d *= 2
	}
	return min(d, guardMaxBackoff)
}

// Admit returns errBackedOff while peer is backed off, and nil otherwise.
func (g *Guard) Admit(peer string) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.peers[peer]; p != nil && g.now().Before(p.until) {
		return errBackedOff
	}
	return nil
}

// Count returns how many invalid messages were counted against peer since the guard
// began tracking it (it forgets a peer forgiven long ago only when it tracks too many).
func (g *Guard) Count(peer string) int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.peers[peer]; p != nil {
		return p.count
	}
	return 0
}

// Backoff returns how much longer peer is backed off (0: not).
func (g *Guard) Backoff(peer string) time.Duration {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.peers[peer]; p != nil {
		return max(p.until.Sub(g.now()), 0)
	}
	return 0
}

// pruneLocked makes room for a new peer: entries forgiven by now go, and if the map is
// still full, the one backed off the shortest. g.mu is held.
func (g *Guard) pruneLocked(now time.Time) {
	if len(g.peers) < guardMaxPeers {
		return
	}
	var oldest string
	var oldestUntil time.Time
	for name, p := range g.peers {
		if now.After(p.until.Add(backoffFor(p.strikes))) {
			delete(g.peers, name)
			continue
		}
		if oldest == "" || p.until.Before(oldestUntil) {
			oldest, oldestUntil = name, p.until
		}
	}
	if len(g.peers) >= guardMaxPeers {
		delete(g.peers, oldest)
	}
}
