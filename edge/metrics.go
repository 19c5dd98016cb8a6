package edge

import (
	"context"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// metrics are a node's Prometheus metrics, on a registry of its own so that several nodes
// in one test process do not collide.
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	loginFailures *prometheus.CounterVec
	forwards      *prometheus.CounterVec
	hashWait      *prometheus.HistogramVec // by kind: login, signup
	hashRefused   *prometheus.CounterVec   // by kind and reason

	// byRequest caches each (route, method, status)'s series: requestKey → *requestMetrics.
	// WithLabelValues would hash and look up the labels twice per request. The series are
	// never deleted from their vectors, so a cached one stays the one exported.
	byRequest sync.Map
}

// requestKey is the labels of a request's series; the strings are route patterns and
// constants, never a request's own bytes, so the cache can keep them.
type requestKey struct {
	route, method string
	status        int
}

// requestMetrics are one (route, method, status)'s series.
type requestMetrics struct {
	requests prometheus.Counter
	latency  prometheus.Observer
}

// forRequest returns the series of requests to route by method that got status.
func (m *metrics) forRequest(route, method string, status int) *requestMetrics {
	k := requestKey{route: route, method: method, status: status}
	if v, ok := m.byRequest.Load(k); ok {
		return v.(*requestMetrics)
	}
	v, _ := m.byRequest.LoadOrStore(k, &requestMetrics{
		requests: m.requests.WithLabelValues(route, method, strconv.Itoa(status)),
		latency:  m.latency.WithLabelValues(route, method),
	})
	return v.(*requestMetrics)
}

func newMetrics(db *storage.DB, commits *commitMetrics) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_http_requests_total",
			Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sessiond_http_request_duration_seconds",
			Help:    "HTTP request latency by route and method.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method"}),
		loginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sessiond_login_failures_total",
			Help: "Failed logins by reason (credentials, throttled, signins, conflict).",
		}, []string{"reason"}),
	}
	stored := func(name, help string, pick func(storage.Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			st, err := db.Stats(context.Background())
			if err != nil {
				return -1
			}
			return float64(pick(st))
		})
	}
	m.forwards = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sessiond_forwarded_requests_total",
		Help: "Requests for data this node does not hold (--replicas), by outcome: forwarded to a holder, or served here because no holder answered (no_holder).",
	}, []string{"outcome"})
	m.hashWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sessiond_password_wait_seconds",
		Help:    "How long logins and sign-ups waited for a password-hashing worker (--password-workers), by kind (login, signup); those refused are not counted here.",
		Buckets: []float64{.0001, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"kind"})
	m.hashRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sessiond_password_refused_total",
		Help: "Logins and sign-ups refused with 503 because no password-hashing worker was free in time, by kind (login, signup) and reason: queue_full (--password-queue), displaced (a sign-up whose place a login took), timed_out (--password-wait), canceled (the request ended).",
	}, []string{"kind", "reason"})
	m.reg.MustRegister(
		m.requests, m.latency, m.loginFailures, m.forwards, m.hashWait, m.hashRefused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessiond_stored_keys",
			Help: "Replicated keys (records and log entries) this node stores: those of the partitions it holds, and any it still hands off.",
		}, func() float64 {
			k, err := db.Keys(context.Background())
			if err != nil {
				return -1
			}
			return float64(k)
		}),
		stored("sessiond_stored_users", "User records held by this node.", func(s storage.Stats) int { return s.Users }),
		stored("sessiond_stored_sessions", "Session records held by this node.", func(s storage.Stats) int { return s.Sessions }),
		stored("sessiond_stored_messages", "Message log entries held by this node.", func(s storage.Stats) int { return s.Messages }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.reg.MustRegister(commits.collectors()...)
	return m
}

// commitMetrics are the storage's group commits (storage.Options.OnBatch). They exist
// before the data file is opened, so that the first commit is counted too.
type commitMetrics struct {
	duration, sync, writes, flush prometheus.Histogram
	logBytes, checkpoints         prometheus.Counter
}

func newCommitMetrics() *commitMetrics {
	latency := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}
	return &commitMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_storage_commit_seconds",
			Help:    "Durable group commits: from the start of a batch to its writers' answers (its log sync included).",
			Buckets: latency,
		}),
		sync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_storage_log_sync_seconds",
			Help:    "Writing and syncing a group commit's write-ahead log record (one fdatasync).",
			Buckets: latency,
		}),
		writes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_storage_commit_writes",
			Help:    "Writes (local requests and remote batches) committed together in one group commit.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		flush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sessiond_storage_file_commit_seconds",
			Help:    "Commits of the committer's bbolt transaction to the data file (page writes, no sync), each after the writers of the group commits it carries were answered.",
			Buckets: latency,
		}),
		logBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_storage_log_bytes_total",
			Help: "Bytes of write-ahead log records written.",
		}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sessiond_storage_checkpoints_total",
			Help: "Checkpoints after a commit to the data file: the file synced and a new write-ahead log begun.",
		}),
	}
}

// observe is storage's OnBatch hook.
func (c *commitMetrics) observe(s storage.BatchStats) {
	c.duration.Observe(s.Duration.Seconds())
	c.sync.Observe(s.Sync.Seconds())
	c.writes.Observe(float64(s.Writes))
	if s.Flush > 0 {
		c.flush.Observe(s.Flush.Seconds())
	}
	c.logBytes.Add(float64(s.LogBytes))
	if s.Checkpoint {
		c.checkpoints.Inc()
	}
}

func (c *commitMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.duration, c.sync, c.writes, c.flush, c.logBytes, c.checkpoints}
}

// forwarded counts a request for data this node does not hold: relayed to holder, or
// served here ("") when no holder answered.
func (m *metrics) forwarded(holder string) {
	outcome := "forwarded"
	if holder == "" {
		outcome = "no_holder"
	}
	m.forwards.WithLabelValues(outcome).Inc()
}

func hashKind(signup bool) string {
	if signup {
		return "signup"
	}
	return "login"
}

// observeHash records one login's or sign-up's wait for a password-hashing worker
// (functions.PasswordLimits.Observe).
func (m *metrics) observeHash(w functions.HashWait) {
	if w.Outcome == functions.HashRan {
		m.hashWait.WithLabelValues(hashKind(w.Signup)).Observe(w.Waited.Seconds())
		return
	}
	m.hashRefused.WithLabelValues(hashKind(w.Signup), w.Outcome).Inc()
}

// watchPasswords exports p's workers, the hashes running and the queue.
func (m *metrics) watchPasswords(p *functions.Passwords) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessiond_password_workers",
			Help: "Password hashes (argon2id) that may run at once (--password-workers).",
		}, func() float64 { return float64(p.Stats().Workers) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessiond_password_hashes_running",
			Help: "Password hashes (argon2id) running now.",
		}, func() float64 { return float64(p.Stats().Running) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "sessiond_password_queue_length",
			Help:        "Logins and sign-ups waiting for a password-hashing worker now (at most --password-queue in all).",
			ConstLabels: prometheus.Labels{"kind": "login"},
		}, func() float64 { return float64(p.Stats().WaitingLogins) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "sessiond_password_queue_length",
			Help:        "Logins and sign-ups waiting for a password-hashing worker now (at most --password-queue in all).",
			ConstLabels: prometheus.Labels{"kind": "signup"},
		}, func() float64 { return float64(p.Stats().WaitingSignups) }),
	)
}
