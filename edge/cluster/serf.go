package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/sessiond/sessiond/crdt"
)

// Serf tags every node carries.
const (
	tagRegion = "region"
	tagID     = "id"
	tagSync   = "sync"
	// tagProto is the newest sync protocol version the member speaks, tagProtoMin the
	// oldest (absent: tagProto's; releases before negotiation announce only tagProto and
	// speak only it). See ProtocolVersion.
	tagProto    = "proto"
	tagProtoMin = "proto_min"
	// tagReplicas is the member's --replicas: every member must have the same, or their
	// placements differ (still correct, but each forwards by its own, and keys move
	// about). A mismatch is logged.
	tagReplicas = "replicas"
	// tagJoining is "1" while a node with placement catches up before it takes its share
	// of the partitions (Peer.Joining); absent once it has.
	tagJoining = "joining"
	// tagTokens names the session token algorithm the member verifies besides HS256,
	// which every release verifies: "eddsa" from the release that added signing keys.
	// A node issues EdDSA tokens only while every member says it verifies them (edge).
	tagTokens = "tokens"
)

// noticeEvent is the serf user event a node sends periodically: its node ID and digest
// root, 16 bytes — well within serf's 512-byte default. It carries no data: a receiver whose
// root differs runs anti-entropy with the sender.
const noticeEvent = "digest"

// Member is a cluster member as this node sees it.
type Member struct {
	Name     string
	ID       crdt.NodeID
	Region   string
	Status   string // alive, suspect, failed, left or removed (MembershipConfig.Removed)
	Addr     string // gossip address
	SyncAddr string
	Joining  bool  // catching up: it holds no partitions yet
	Proto    uint8 // the sync protocol version to speak with it (0: none known; not alive)
	EdDSA    bool  // it verifies EdDSA session tokens (tagTokens); older releases do not
}

// MembershipConfig configures serf membership.
type MembershipConfig struct {
	NodeName string
	Region   string
	ID       crdt.NodeID
	// BindAddr is host:port for gossip (TCP and UDP). The host may be empty or 0.0.0.0
	// (every interface), or name one address in any form Advertise takes.
	BindAddr string
	// Advertise is the address other nodes reach this one at: an IP address, a host name,
	// an interface name (eth0), a network in CIDR notation (this host's one address in
	// it) or a go-sockaddr template such as {{ GetInterfaceIP "eth0" }}. Empty: BindAddr's
	// host when it names one address; with every interface bound, the local address this
	// host reaches its Join targets from (chooseAdvertise). StartMembership logs what it
	// advertises and why.
	Advertise string
	// SyncAddr is host:port of this node's sync transport as it is bound. Peers are told
	// the advertised address with its port when Advertise is set or its host is empty or
	// unspecified, else SyncAddr as it is.
	SyncAddr   string
	Replicas   int      // this node's placement (Config.Replicas), told to the others
	Joining    bool     // start as joining (tagJoining) until Joined is called
	GossipKeys [][]byte // 32 bytes each; the first is primary
	// Join lists the members to join, host:port (port default 7946). Each host is resolved
	// to all its addresses (a Swarm tasks.NAME, a Kubernetes headless Service), and every
	// one is joined. While no other member is alive the node resolves and joins again,
	// backing off up to 30 s, so that members that were all rescheduled at new addresses
	// find each other again.
	Join []string
	// LookupHost resolves a host name to all its addresses (Join targets, a host name
	// given as Advertise); default LookupHost, the system's resolver.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// Protocol is the range of sync protocol versions this node announces and speaks
	// (zero: Supported()); it must lie within Supported(). Pinning Max to the previous
	// release's version makes a node speak as that release would (upgrade tests).
	Protocol ProtocolRange
	// Snapshot is the file where serf keeps its Lamport clocks and the members it knew
	// (empty: none). With it, a node that restarts rejoins with clocks ahead of its own
	// earlier leave: without, its join could rank below that leave, which peers then
	// kept applying, and some of them went on listing it as left.
	Snapshot string
	// Fast shortens failure detection and reconnection (loopback clusters and tests).
	Fast        bool
	NoticeEvery time.Duration           // default 5s
	Root        func() uint64           // this node's digest root, for notices
	OnPeers     func(live, down []Peer) // the live and the failed (not left) peers; called one call at a time, in order
	OnNotice    func(from crdt.NodeID, root uint64)
	// Removed reports whether a node ID was removed from the cluster for good
	// (crdt.RemovedPrefix): such a member is listed as removed, whatever serf says of
	// it, and is never a peer, live or down. Nil: none is. Safe for concurrent use.
	Removed func(crdt.NodeID) bool
	Logger  *slog.Logger
	Metrics *Metrics
}

// Membership is this node's serf agent. Create it with StartMembership and stop it with
// Close.
type Membership struct {
	cfg    MembershipConfig
	serf   *serf.Serf
	ring   *memberlist.Keyring // gossip's keys; see SetKeys
	events chan serf.Event
	// refresh asks noticeLoop to publish at once (Refresh).
	refresh chan struct{}
	log     *slog.Logger

	// leaveDelay is serf's LeavePropagateDelay; Close sets it to 0 when no other member
	// is alive to be told. Serf reads it only in Leave, which Close calls once.
	leaveDelay *time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the event, notice and join loops

	addr       string         // Addr, fixed at start
	advertised netip.AddrPort // Advertised, fixed at start
	sys        addrSystem
	closeOnce  sync.Once
	closeErr   error
	publishMu  sync.Mutex // one publish at a time

	mu      sync.Mutex
	joined  bool
	warned  map[string]string // member name → the reason last logged for ignoring it
	leaving leaveWatch        // members serf calls leaving while memberlist sees them live
}

// Leave bounds: serf's Leave waits up to BroadcastTimeout for its leave message to go out,
// as long again for memberlist's, then LeavePropagateDelay. Serf's defaults (5 s, 5 s,
// 1 s) kept a node stopping alongside its peers, or after them, waiting 11 s.
const (
	leaveBroadcastTimeout = time.Second
	leavePropagateDelay   = 500 * time.Millisecond
)

// StartMembership creates the serf agent and starts its event, join and notice
// goroutines.
func StartMembership(cfg MembershipConfig) (*Membership, error) {
	if cfg.NoticeEvery <= 0 {
		cfg.NoticeEvery = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.LookupHost == nil {
		cfg.LookupHost = LookupHost
	}
	sys := hostSystem(cfg.LookupHost)
	if cfg.Protocol == (ProtocolRange{}) {
		cfg.Protocol = Supported()
	}
	if !cfg.Protocol.Valid() {
		return nil, fmt.Errorf("sync protocol range %s: this build speaks %s", cfg.Protocol, Supported())
	}
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip port %q: %w", portStr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*advertiseWait)
	defer cancel()
	if _, perr := netip.ParseAddr(host); perr != nil && host != "" {
		a, _, err := sys.resolveHostSpec(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("gossip bind address: %w", err)
		}
		host = a.String()
	}
	adv, why, err := sys.advertise(ctx, cfg.Advertise, host, cfg.Join)
	if err != nil {
		return nil, err
	}
	ml := memberlist.DefaultLANConfig()
	ml.BindAddr, ml.BindPort = host, port
	ml.AdvertiseAddr, ml.AdvertisePort = adv.String(), port
	cfg.SyncAddr = advertisedSync(cfg.SyncAddr, cfg.Advertise != "", adv)
	if len(cfg.GossipKeys) == 0 {
		return nil, errors.New("gossip: no key (gossip is always encrypted)")
	}
	ring, err := memberlist.NewKeyring(cfg.GossipKeys, cfg.GossipKeys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	ml.Keyring = ring
	ml.GossipVerifyIncoming, ml.GossipVerifyOutgoing = true, true
	logger := log.New(&levelWriter{log: cfg.Logger}, "", 0)
	ml.Logger = logger
	// A member that comes back under its name at another address (a Swarm task or a pod
	// rescheduled after a crash gets a new IP) is refused while its old address is
	// remembered; memberlist forgets a dead member only after GossipToTheDeadTime (30 s).
	// Let its name be reclaimed once it has been dead a while: names are per replica, so
	// the newcomer is that replica.
	ml.DeadNodeReclaimTime = deadNodeReclaim
	if cfg.Fast {
		ml.DeadNodeReclaimTime = deadNodeReclaim / 5
		ml.ProbeInterval = 500 * time.Millisecond
		ml.ProbeTimeout = 250 * time.Millisecond
		ml.SuspicionMult = 2
		ml.GossipInterval = 100 * time.Millisecond
		ml.PushPullInterval = 5 * time.Second
	}

	sc := serf.DefaultConfig()
	sc.NodeName = cfg.NodeName
	sc.Tags = map[string]string{
		tagRegion: cfg.Region, tagID: cfg.ID.String(), tagSync: cfg.SyncAddr,
		tagProto: strconv.Itoa(int(cfg.Protocol.Max)), tagProtoMin: strconv.Itoa(int(cfg.Protocol.Min)),
		tagReplicas: strconv.Itoa(cfg.Replicas), tagTokens: "eddsa",
	}
	if cfg.Joining {
		sc.Tags[tagJoining] = "1"
	}
	sc.MemberlistConfig = ml
	sc.Logger = logger
	sc.BroadcastTimeout, sc.LeavePropagateDelay = leaveBroadcastTimeout, leavePropagateDelay
	sc.RejoinAfterLeave = true
	sc.SnapshotPath = cfg.Snapshot
	sc.ReconnectInterval = 5 * time.Second
	sc.ReconnectTimeout = 72 * time.Hour
	// No name-conflict votes. A replica that comes back under its name at a new address
	// while others still see its old address alive (killed, or its leave lost) would be
	// voted out, the others vouching for the address they know, and serf would shut
	// itself down for good in the newcomer: a running node outside the cluster. Without
	// the vote, memberlist keeps the known address until it is found dead, then takes the
	// new one (DeadNodeReclaimTime). Two live processes under one name are an operator's
	// mistake that memberlist logs as a conflicting address.
	sc.EnableNameConflictResolution = false
	if cfg.Fast {
		sc.ReconnectInterval = time.Second
		sc.ReapInterval = 5 * time.Second
		sc.BroadcastTimeout, sc.LeavePropagateDelay = leaveBroadcastTimeout/2, leavePropagateDelay/2
	}
	events := make(chan serf.Event, 256)
	sc.EventCh = events
	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("start serf on %s: %w", cfg.BindAddr, err)
	}
	m := &Membership{cfg: cfg, serf: s, ring: ring, events: events, refresh: make(chan struct{}, 1), log: cfg.Logger, leaveDelay: &sc.LeavePropagateDelay, warned: map[string]string{}, sys: sys}
	m.leaving.since = map[string]time.Time{}
	gossipPort := int(s.Memberlist().LocalNode().Port) // read once: SetTags rewrites the local node
	m.addr = net.JoinHostPort(host, strconv.Itoa(gossipPort))
	m.advertised = netip.AddrPortFrom(adv, uint16(gossipPort)) // #nosec G115 -- a port
	m.log.Info("advertising", "gossip", m.advertised.String(), "sync", cfg.SyncAddr, "why", why)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.eventLoop() }()
	go func() { defer m.wg.Done(); m.noticeLoop() }()
	if len(cfg.Join) > 0 {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.joinLoop() }()
	}
	m.publish()
	return m, nil
}

// advertisedSync returns the sync address peers are told: bound with its host replaced by
// the advertised address when one was configured or the host is unspecified.
func advertisedSync(bound string, configured bool, adv netip.Addr) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if a, err := netip.ParseAddr(host); configured || host == "" || (err == nil && a.IsUnspecified()) {
		return net.JoinHostPort(adv.String(), port)
	}
	return bound
}

// deadNodeReclaim is how long a member must have been dead before another address may
// take its name (memberlist's DeadNodeReclaimTime; a fifth of it with Fast).
const deadNodeReclaim = 5 * time.Second

// Bounds of joinLoop's backoff while this node is alone, and how often it checks whether
// it is (aloneCheckFast with Fast).
const (
	joinBackoffMin = 500 * time.Millisecond
	joinBackoffMax = 30 * time.Second
	aloneCheck     = 5 * time.Second
	aloneCheckFast = time.Second
)

// joinLoop keeps this node from staying alone: whenever no other member is alive (at
// start, or after every member it knew failed or left), it resolves the join targets
// again and joins every address they give, backing off from joinBackoffMin to
// joinBackoffMax while that finds nobody. Members rescheduled all at once start with
// addresses their names did not give before; each finds the others on a later round.
func (m *Membership) joinLoop() {
	check := aloneCheck
	if m.cfg.Fast {
		check = aloneCheckFast
	}
	backoff := joinBackoffMin
	var lastTargets string
	alone := true
	for {
		wait := check
		if m.othersAlive() {
			backoff, alone = joinBackoffMin, false
		} else {
			if !alone {
				m.log.Warn("no other member alive; resolving the join targets again", "join", m.cfg.Join)
				alone = true
			}
			targets := m.joinTargets()
			var n int
			var err error
			if len(targets) > 0 {
				n, err = m.serf.Join(targets, true)
			}
			if m.othersAlive() {
				m.log.Info("joined cluster", "contacted", n, "of", len(targets), "addresses", strings.Join(targets, ","))
				m.mu.Lock()
				m.joined = true
				m.mu.Unlock()
				backoff, alone = joinBackoffMin, false
			} else {
				// Loud when what the targets resolve to changes, quiet while it stays the same.
				lvl := slog.LevelDebug
				if t := strings.Join(targets, ","); t != lastTargets || backoff == joinBackoffMin {
					lvl, lastTargets = slog.LevelWarn, t
				}
				m.log.Log(m.ctx, lvl, "join failed; retrying", "join", m.cfg.Join,
					"addresses", strings.Join(targets, ","), slog.Any("err", err), "retry_in", backoff)
				wait = backoff
				backoff = min(2*backoff, joinBackoffMax)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// joinTargets resolves the join targets to every address they stand for, as host:port,
// leaving out this node's own gossip address.
func (m *Membership) joinTargets() []string {
	var out []string
	for _, t := range m.cfg.Join {
		for _, ap := range m.sys.resolveTarget(m.ctx, t) {
			if ap == m.advertised {
				continue
			}
			if s := ap.String(); !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// eventLoop owns the serf event channel. It does no slow work inline: membership changes
// recompute the peer list, notices are handed on.
func (m *Membership) eventLoop() {
	for {
		select {
		case <-m.ctx.Done():
			return
		case e := <-m.events:
			switch e := e.(type) {
			case serf.MemberEvent:
				m.publish()
			case serf.UserEvent:
				if e.Name == noticeEvent && len(e.Payload) == 16 && m.cfg.OnNotice != nil {
					from := crdt.NodeID(binary.BigEndian.Uint64(e.Payload))
					if from != m.cfg.ID {
						m.cfg.OnNotice(from, binary.BigEndian.Uint64(e.Payload[8:]))
					}
				}
			}
		}
	}
}

// publish hands the current live and failed peers to OnPeers and updates the members
// gauge. Its callers (start, eventLoop, noticeLoop) run in different goroutines: one
// publish at a time, each reading the members and handing them on under publishMu, so
// that OnPeers is called in order and its latest call never carries a snapshot older
// than an earlier one's (a member removed, or one that joined, must not come back or go
// missing until the next publish).
func (m *Membership) publish() {
	m.publishMu.Lock()
	defer m.publishMu.Unlock()
	members := m.Members()
	var peers, down []Peer
	counts := map[string]int{"alive": 0, "suspect": 0, "failed": 0, "left": 0, "removed": 0}
	for _, mem := range members {
		counts[mem.Status]++
		if mem.ID == m.cfg.ID || mem.SyncAddr == "" {
			continue
		}
		p := Peer{ID: mem.ID, Name: mem.Name, Region: mem.Region, Addr: mem.SyncAddr, Joining: mem.Joining, Proto: mem.Proto}
		switch mem.Status {
		case "alive", "suspect":
			peers = append(peers, p)
		case "failed":
			down = append(down, p)
		}
	}
	if m.cfg.Metrics != nil {
		for st, n := range counts {
			m.cfg.Metrics.MembersGauge.WithLabelValues(st).Set(float64(n))
		}
	}
	if m.cfg.OnPeers != nil {
		m.cfg.OnPeers(peers, down)
	}
}

// IDOf returns the node ID that the member called name gossips, and whether serf knows
// such a member (any status). Safe for concurrent use.
func (m *Membership) IDOf(name string) (crdt.NodeID, bool) {
	for _, sm := range m.serf.Members() {
		if sm.Name == name {
			id, err := crdt.ParseNodeID(sm.Tags[tagID])
			return id, err == nil
		}
	}
	return 0, false
}

// Refresh makes membership hand its peers on again soon (OnPeers), for a change that
// serf does not report, such as a node recorded removed (MembershipConfig.Removed). It
// does not block.
func (m *Membership) Refresh() {
	select {
	case m.refresh <- struct{}{}:
	default:
	}
}

// noticeLoop periodically announces this node's digest root, and refreshes the peer list
// (serf reports suspicion without an event), and at once when asked (Refresh).
func (m *Membership) noticeLoop() {
	t := time.NewTicker(m.cfg.NoticeEvery)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.refresh:
			m.publish()
		case <-t.C:
			if m.cfg.Root != nil && m.serf.NumNodes() > 1 {
				p := binary.BigEndian.AppendUint64(nil, uint64(m.cfg.ID))
				p = binary.BigEndian.AppendUint64(p, m.cfg.Root())
				if err := m.serf.UserEvent(noticeEvent, p, false); err != nil {
					m.log.Debug("notice not sent", slog.Any("err", err))
				}
			}
			m.publish()
		}
	}
}

// Joined tells the cluster this node has caught up and takes its share of the
// partitions (it drops the joining tag). Safe to call more than once.
func (m *Membership) Joined() error {
	tags := maps.Clone(m.serf.LocalMember().Tags)
	if _, ok := tags[tagJoining]; !ok {
		return nil
	}
	delete(tags, tagJoining)
	// SetTags reports a broadcast slower than BroadcastTimeout; the tags are set all the
	// same and gossip carries them.
	if err := m.serf.SetTags(tags); err != nil && !strings.Contains(err.Error(), "timeout") {
		return fmt.Errorf("tell the cluster this node joined: %w", err)
	}
	return nil
}

// SetKeys replaces gossip's keys at once, in this node only: keys (32 bytes each) are
// installed, the first becomes the one gossip encrypts with, and every key not in keys is
// removed; members are not dropped. To rotate without a partition, add a key on every
// node before any node sends with it, and remove the old one only once every node sends
// with the new (docs/OPERATIONS.md, "Rotating the cluster key"). It fails on a key of the wrong size, leaving the
// keys as they were.
func (m *Membership) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("gossip: no key (gossip is always encrypted)")
	}
	for i, k := range keys {
		if len(k) != 32 {
			return fmt.Errorf("gossip key %d: %d bytes, want 32", i, len(k))
		}
	}
	for _, k := range keys {
		if err := m.ring.AddKey(k); err != nil {
			return fmt.Errorf("gossip keyring: %w", err)
		}
	}
	if err := m.ring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	for _, old := range m.ring.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := m.ring.RemoveKey(old); err != nil {
				return fmt.Errorf("gossip keyring: %w", err)
			}
		}
	}
	return nil
}

// Addr returns the address gossip is bound to: the configured one, with the port serf
// picked when it was 0.
func (m *Membership) Addr() string { return m.addr }

// Advertised returns the gossip address this node tells its peers to reach it at.
func (m *Membership) Advertised() string { return m.advertised.String() }

// Members returns every member serf knows, this node included, sorted by name. A member
// with a node id tag that does not parse, or alive and sharing no sync protocol version
// with this node, is left out — as if partitioned — and logged once (not on every call:
// the notice loop calls this every few seconds). A member serf has called leaving for
// staleLeave while memberlist still sees it live is alive (leaveWatch).
func (m *Membership) Members() []Member {
	suspect, live := map[string]bool{}, map[string]bool{}
	for _, n := range m.serf.Memberlist().Members() {
		suspect[n.Name] = n.State == memberlist.StateSuspect
		live[n.Name] = suspect[n.Name] || n.State == memberlist.StateAlive
	}
	sms := m.serf.Members()
	m.mu.Lock()
	stale := m.leaving.update(sms, live, time.Now())
	m.mu.Unlock()
	var out []Member
	for _, sm := range sms {
		if stale[sm.Name] {
			m.warnOnce(sm.Name, "stale leave",
				"member announced a leave long ago but is still alive; treating it as alive (a leave intent of an earlier run of it, gossiped after it rejoined)",
				"member", sm.Name, "leaving_for", staleLeave.String())
			sm.Status = serf.StatusAlive
		}
		id, err := crdt.ParseNodeID(sm.Tags[tagID])
		if err != nil {
			m.warnOnce(sm.Name, "bad node id "+strconv.Quote(sm.Tags[tagID]),
				"member has no valid node id; ignoring", "member", sm.Name, "id", sm.Tags[tagID])
			continue
		}
		status := "alive"
		switch {
		case m.cfg.Removed != nil && m.cfg.Removed(id):
			status = "removed"
		case sm.Status == serf.StatusFailed:
			status = "failed"
		case sm.Status == serf.StatusLeft, sm.Status == serf.StatusLeaving:
			status = "left"
		case sm.Status == serf.StatusAlive && suspect[sm.Name]:
			status = "suspect"
		}
		theirs, err := memberProtocols(sm.Tags)
		proto, ok := m.cfg.Protocol.Common(theirs)
		if err != nil || !ok {
			proto = 0
			if status == "alive" || status == "suspect" {
				reason := "proto " + strconv.Quote(sm.Tags[tagProtoMin]+".."+sm.Tags[tagProto])
				m.warnOnce(sm.Name, reason,
					"member shares no sync protocol version with this node; treating it as partitioned until one of the two is upgraded",
					"member", sm.Name, "theirs", theirs.String(), "ours", m.cfg.Protocol.String(), slog.Any("err", err))
				continue
			}
		}
		if r, ok := sm.Tags[tagReplicas]; ok && r != strconv.Itoa(m.cfg.Replicas) && status == "alive" {
			m.warnOnce(sm.Name, "replicas "+strconv.Quote(r),
				"member runs with another --replicas; every node of a cluster needs the same", "member", sm.Name,
				"replicas", r, "ours", m.cfg.Replicas)
		}
		out = append(out, Member{
			Name: sm.Name, ID: id, Region: sm.Tags[tagRegion], Status: status,
			Addr: net.JoinHostPort(sm.Addr.String(), strconv.Itoa(int(sm.Port))), SyncAddr: sm.Tags[tagSync],
			Joining: sm.Tags[tagJoining] == "1", Proto: proto, EdDSA: sm.Tags[tagTokens] == "eddsa",
		})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// staleLeave is how long a member may be leaving (serf) while memberlist still sees it
// live before this node treats it as alive. A real leave ends within a few seconds
// (leaveBroadcastTimeout, twice, then leavePropagateDelay): memberlist then marks it
// left too.
const staleLeave = 10 * time.Second

// leaveWatch tells a member that is leaving from one that only looks it.
//
// Serf marks a member leaving when it gets a leave intent newer than the latest status it
// knows of, and back alive only on a join intent newer still. A node that left and came
// back at once (a rolling update) can leave some member stuck with its old leave: one
// that started just then learns of the leave from a push-pull (the member, then gone,
// listed as left), sees it rejoin through memberlist, and — having missed the join
// intent's gossip, or the rejoined node's clock having restarted below the leave's — keeps
// it leaving for good. Swarm's rolling update hit this (one node in six saw another
// "left" for the 3 minutes the test waited, while it served). So a member serf calls
// leaving for longer than staleLeave while memberlist sees it live is alive.
type leaveWatch struct {
	since map[string]time.Time // member → when it was first seen leaving while live
}

// update notes members' states at now and returns the members whose leave is stale.
func (w *leaveWatch) update(members []serf.Member, live map[string]bool, now time.Time) map[string]bool {
	var stale map[string]bool
	seen := make(map[string]bool, len(w.since))
	for _, sm := range members {
		if sm.Status != serf.StatusLeaving || !live[sm.Name] {
			continue
		}
		seen[sm.Name] = true
		since, ok := w.since[sm.Name]
		if !ok {
			w.since[sm.Name] = now
			continue
		}
		if now.Sub(since) >= staleLeave {
			if stale == nil {
				stale = map[string]bool{}
			}
			stale[sm.Name] = true
		}
	}
	for name := range w.since {
		if !seen[name] {
			delete(w.since, name)
		}
	}
	return stale
}

// memberProtocols returns the sync protocol versions a member's tags announce.
func memberProtocols(tags map[string]string) (ProtocolRange, error) {
	hi, err := strconv.ParseUint(tags[tagProto], 10, 8)
	if err != nil {
		return ProtocolRange{}, fmt.Errorf("proto tag %q: %w", tags[tagProto], err)
	}
	lo := hi
	if s, ok := tags[tagProtoMin]; ok {
		if lo, err = strconv.ParseUint(s, 10, 8); err != nil || lo > hi {
			return ProtocolRange{}, fmt.Errorf("proto_min tag %q (proto %d): not a version at most proto", s, hi)
		}
	}
	return ProtocolRange{Min: uint8(lo), Max: uint8(hi)}, nil // #nosec G115 -- ParseUint(…, 8) fits
}

// warnOnce logs msg with args unless it logged the same reason for member last.
func (m *Membership) warnOnce(member, reason, msg string, args ...any) {
	m.mu.Lock()
	seen := m.warned[member] == reason
	m.warned[member] = reason
	m.mu.Unlock()
	if !seen {
		m.log.Warn(msg, args...)
	}
}

// Close leaves the cluster, stops the goroutines and shuts serf down. The leave takes at
// most about 2.5 s (1.25 s with Fast; see leaveBroadcastTimeout), no time when this is the
// last live member, and is skipped when ctx has ended before Close is called; once begun it
// is not cut short by ctx, as memberlist panics on a leave after its shutdown. Close
// returns serf's errors. A second call does nothing and returns the first's error;
// Members stays usable (the last membership seen).
func (m *Membership) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		var err error
		if ctx.Err() == nil {
			if !m.othersAlive() {
				*m.leaveDelay = 0 // nobody to propagate the leave to
			}
			err = m.serf.Leave() // in this goroutine: memberlist panics on a leave after shutdown
		}
		m.cancel()
		m.wg.Wait()
		if serr := m.serf.Shutdown(); serr != nil && err == nil {
			err = serr
		}
		m.closeErr = err
	})
	return m.closeErr
}

// Errors of Remove.
var (
	ErrNoSuchMember    = errors.New("no such member")
	ErrMemberNotFailed = errors.New("member is not failed")
)

// Remove declares the member called name gone for good, as an operator does for a node
// whose machine is lost: serf marks it left on every member (serf's force-leave), so it
// leaves the failed members handed to OnPeers. The left member stays listed for serf's
// TombstoneTimeout (24 h), and gossip's state exchange carries it: a member that missed
// the removal's broadcast (cut off, or its packets lost) learns it when it next exchanges
// state. (Force-leave with prune would erase the member at once, leaving nothing for the
// exchange to carry.) Until then
// a failed member still counts where data must reach every member that may come back
// (handoff keeps a node's own writes until such holders confirm them); after, nothing
// waits for it. Only a member this node sees failed can be removed — stop a live one, or
// let it leave (SIGTERM) — so Remove returns ErrMemberNotFailed for a live, suspect,
// left or removed member and for this node, ErrNoSuchMember for a name it does not know. "Failed"
// is this node's view: a live member cut off from this node
// alone passes, and its removal takes it out of the cluster for good (it stops once a
// peer refuses it or its record reaches it) — the caller
// checks first that every region sees it failed. It waits for the removal's broadcast
// (serf's BroadcastTimeout, leaveBroadcastTimeout); one that did not get out in time is
// logged, and gossip still carries it. A node cut off for longer than the tombstone's
// 24 h misses it for good: it keeps the member failed until ReconnectTimeout.
//
// Once the member is found removable, Remove calls record with it before serf learns
// anything; record's error aborts the removal. The node records the member's ID there as
// removed for good (crdt.RemovedPrefix, MembershipConfig.Removed), because a removed node
// must not come back with its data: coming back with its old data, it could vouch for
// writes it missed while it was gone, which other nodes stopped keeping for it. Under
// its recorded ID it is never a peer again, and it stops once it learns it (wiping its
// data directory gives it a new ID).
func (m *Membership) Remove(name string, record func(Member) error) error {
	var found *Member
	for _, mem := range m.Members() {
		if mem.Name != name {
			continue
		}
		if mem.Status != "failed" || name == m.cfg.NodeName {
			status := mem.Status
			if name == m.cfg.NodeName {
				status = "this node"
			}
			return fmt.Errorf("%w: %s is %s", ErrMemberNotFailed, name, status)
		}
		found = &mem
	}
	if found == nil {
		return fmt.Errorf("%w: %q", ErrNoSuchMember, name)
	}
	if err := record(*found); err != nil {
		return err
	}
	// Serf marks it left here at once (its member event makes eventLoop publish), then
	// broadcasts; an error is a broadcast not sent within its timeout, which gossip's
	// state exchange still carries.
	if err := m.serf.RemoveFailedNode(name); err != nil {
		m.log.Warn("member removal not yet broadcast; gossip carries it", "member", name, slog.Any("err", err))
	}
	m.log.Warn("member removed for good by an operator", "member", name)
	return nil
}

// othersAlive reports whether serf knows another member that is alive.
func (m *Membership) othersAlive() bool {
	for _, sm := range m.serf.Members() {
		if sm.Name != m.cfg.NodeName && sm.Status == serf.StatusAlive {
			return true
		}
	}
	return false
}

// levelWriter turns serf's and memberlist's "[LEVEL] text" log lines into slog records.
type levelWriter struct{ log *slog.Logger }

func (w *levelWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if strings.HasPrefix(line, prefix) {
			lvl = l
			line = strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	w.log.Log(context.Background(), lvl, line)
	return len(p), nil
}
