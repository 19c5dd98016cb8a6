package cluster

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the replication metrics of one node. Register them on the node's own
// registry with Collectors; a nil *Metrics records nothing.
type Metrics struct {
	Propagation  prometheus.Histogram   // origin commit → applied here
	Revocation   prometheus.Histogram   // the same, for revocations
	Rounds       *prometheus.CounterVec // anti-entropy rounds by result
	Bytes        *prometheus.CounterVec // sync bytes by direction and message kind
	Rejected     prometheus.Counter     // remote changes refused for clock skew
	Applied      *prometheus.CounterVec // remote changes by outcome
	MembersGauge *prometheus.GaugeVec   // members by status
	Awaits       *prometheus.CounterVec // bookmarks awaited, by outcome (Awaited)
	AwaitSeconds prometheus.Histogram   // time spent meeting a bookmark not held at once
	Fetches      *prometheus.CounterVec // pulls started to meet a bookmark, by result
	Dropped      prometheus.Counter     // keys handed off to their holders and dropped here
	Moved        prometheus.Counter     // bytes of stored state sent by anti-entropy and handoff
	MoveWait     prometheus.Counter     // seconds that sending waited for the move rate
	// InvalidMessages counts invalid messages and replies from peers, by kind (Guard).
	InvalidMessages *prometheus.CounterVec
	// RemovedRefused counts requests refused because their caller was removed for good
	// (Guard.SetRemoved).
	RemovedRefused prometheus.Counter

	awaits [len(awaitedNames)]prometheus.Counter // Awaits' series, resolved once
}

// NewMetrics returns unregistered replication metrics.
func NewMetrics() *Metrics {
	m := newMetrics()
	for i, name := range awaitedNames {
		m.awaits[i] = m.Awaits.WithLabelValues(name)
	}
	return m
}

func newMetrics() *Metrics {
	return &Metrics{
		Propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_replication_propagation_seconds",
			Help:    "Time from a change's commit at its origin to its application here (includes clock offset between the two).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		Revocation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_revocation_propagation_seconds",
			Help:    "Time from a revocation's commit at its origin (sign-out, revoke, revoke all, erasure) to its application here by push (includes clock offset). Until then a token replayed here without the sign-out's bookmark still works.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		Rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_antientropy_rounds_total",
			Help: "Anti-entropy rounds started by this node, by result (in_sync, repaired, error).",
		}, []string{"result"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_sync_bytes_total",
			Help: "Bytes of node-to-node sync messages, by direction (sent, received) and kind (push, digest, leaves).",
		}, []string{"direction", "kind"}),
		Rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_rejected_timestamps_total",
			Help: "Remote changes refused because their timestamp was too far ahead of local time.",
		}),
		Applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_remote_changes_total",
			Help: "Remote changes received, by outcome (applied, unchanged, dropped, rejected: stamped beyond --max-skew, too_large: the record would exceed 1 MiB).",
		}, []string{"outcome"}),
		MembersGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sessiond_members",
			Help: "Cluster members known to this node, by status.",
		}, []string{"status"}),
		Awaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_bookmark_requests_total",
			Help: "Requests carrying a bookmark, by how it was met: covered (held at once), waited (replication brought it), fetched (pulled from another node), set_aside (met but for marks nothing can bring: of nodes gone for 10 min, or beyond what their origin holds), behind (answered 503).",
		}, []string{"outcome"}),
		AwaitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_bookmark_wait_seconds",
			Help:    "Time a request waited for its bookmark, when it was not held at once.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		Fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_bookmark_fetches_total",
			Help: "Pulls from another node started to meet a bookmark, by result (ok, error).",
		}, []string{"result"}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_handoff_dropped_keys_total",
			Help: "Keys this node stored without holding them (placement moved them, or it accepted writes for others) that it dropped once their holders in its region confirmed them.",
		}),
		Moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_moved_bytes_total",
			Help: "Bytes of stored state this node sent to peers by anti-entropy and handoff (not pushes of new writes): data moving after a change of placement, and repairs.",
		}),
		MoveWait: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_move_throttled_seconds_total",
			Help: "Seconds that sending stored state by anti-entropy and handoff waited for the move rate (--move-rate).",
		}),
		InvalidMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_peer_invalid_messages_total",
			Help: "Sync messages and replies from peers that were invalid (undecodable, out of range, oversized, or naming what was not asked), by kind (push, digest, leaves, counters, push_reply, digest_reply, leaves_reply). Each backs the peer off; any increase means a faulty peer or a bug.",
		}, []string{"kind"}),
		RemovedRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_removed_peer_refused_total",
			Help: "Sync and forwarded requests refused because their caller is a node removed from the cluster for good (sessiond members remove) that came back with its data. Any increase: that node runs again on its old data directory.",
		}),
	}
}

// Collectors returns every metric, for registering.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Propagation, m.Revocation, m.Rounds, m.Bytes, m.Rejected, m.Applied, m.MembersGauge,
		m.Awaits, m.AwaitSeconds, m.Fetches, m.Dropped, m.Moved, m.MoveWait, m.InvalidMessages, m.RemovedRefused}
}

func (m *Metrics) fetched(err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.Fetches.WithLabelValues(result).Inc()
}

func (m *Metrics) bytes(direction, kind string, n int) {
	if m != nil {
		m.Bytes.WithLabelValues(direction, kind).Add(float64(n))
	}
}

func (m *Metrics) round(result string) {
	if m != nil {
		m.Rounds.WithLabelValues(result).Inc()
	}
}
