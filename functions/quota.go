package functions

import (
	"sync"

	"github.com/sessiond/sessiond/crdt"
)

// Quotas. Every record an app writes is bounded (a key-value value, a session's data),
// and so is how fast it writes (the service API's requests per app), but not how much it
// keeps: a hostile or compromised app could otherwise fill every node's disk with
// key-value records, subjects and sessions that live up to a year, and take every other
// app down with it. A Quota bounds an app's stored bytes, cluster-wide, as this node
// estimates them: a write that would add to them (a new key, subject or session, a value
// or session data that grows) is refused with EQuotaExceeded once the app is at its
// quota, while writes that shrink or delete, and reads, always work. Nodes decide on
// what they hold, so concurrent writes through several nodes may overshoot the quota by
// what they write before they hear of each other. Within a node, the growth of writes
// not yet committed counts too (a claim): the usage the Meter reports moves only when a
// group commit does, and one group commit may carry many writes.

// Usage is what an app's records take across the cluster: how many, and their bytes.
type Usage struct {
	Records int64
	Bytes   int64
}

// UsageMeter estimates an app's Usage across the cluster (one copy of each record) from
// what this node holds. edge implements it over storage.DB.AppUsage and placement.
type UsageMeter interface {
	AppUsage(app string) Usage
}

// AppQuotas tells the quota an operator gave an app of its own (Apps.SetQuota) in place
// of the nodes' own; edge implements it over the app records, which every node holds.
type AppQuotas interface {
	// AppQuota returns app's own quota in bytes (negative: no bound), and false when it
	// has none.
	AppQuota(app string) (bytes int64, ok bool)
}

// Quota bounds the bytes one app stores: Bytes (0: no bound), or the app's own quota
// where Own gives one. A nil Quota bounds nothing. Safe for concurrent use.
type Quota struct {
	Meter UsageMeter
	Bytes int64
	Own   AppQuotas // may be nil

	mu      sync.Mutex
	pending map[string]int64 // app → growth claimed by writes not yet committed
}

func (q *Quota) active() bool { return q != nil && q.Meter != nil && (q.Bytes > 0 || q.Own != nil) }

// limit returns app's quota: its own if it has one, else Bytes; false for no bound.
func (q *Quota) limit(app string) (int64, bool) {
	if q.Own != nil {
		if b, ok := q.Own.AppQuota(app); ok {
			return b, b >= 0
		}
	}
	return q.Bytes, q.Bytes > 0
}

// claim is one write's claim on its app's quota: what its function allowed itself to
// add. The write releases it once Update has returned: by then its growth is in the
// Meter's reading, or it was not stored.
type claim struct {
	q       *Quota
	app     string
	limit   int64 // the app's quota when the claim was made
	bounded bool  // false: no bound
	n       int64
}

// claim returns a write's claim on app's quota, empty until its function calls allows;
// nil (which does nothing) when q bounds nothing. It reads the app's quota now, before
// the write's function runs on the store's committer, which must not wait for reads.
func (q *Quota) claim(app string) *claim {
	if !q.active() {
		return nil
	}
	limit, bounded := q.limit(app)
	return &claim{q: q, app: app, limit: limit, bounded: bounded}
}

// allows returns nil, claiming growth, if the claim's app may store growth more bytes
// besides what it stores and what other writes claimed; else EQuotaExceeded, claiming
// nothing. Growth of zero or less (a write that adds nothing) is always allowed. A
// function run again replaces its earlier claim.
func (c *claim) allows(growth int64) error {
	if c == nil {
		return nil
	}
	q, app := c.q, c.app
	q.mu.Lock()
	defer q.mu.Unlock()
	c.setLocked(0)
	if growth <= 0 || !c.bounded {
		return nil
	}
	used := q.Meter.AppUsage(app).Bytes + q.pending[app]
	if used+growth > c.limit {
		return Errorf(EQuotaExceeded, "app %q stores about %d bytes, with this write over its quota of %d (--app-quota, or its own: sessiond apps quota): delete keys or sessions, or let them expire", app, used, c.limit)
	}
	c.setLocked(growth)
	return nil
}

// release gives the claim back.
func (c *claim) release() {
	if c == nil {
		return
	}
	c.q.mu.Lock()
	c.setLocked(0)
	c.q.mu.Unlock()
}

// setLocked makes n the growth the claim holds of its app's pending growth.
func (c *claim) setLocked(n int64) {
	q := c.q
	if c.n != 0 {
		if q.pending[c.app] -= c.n; q.pending[c.app] == 0 {
			delete(q.pending, c.app)
		}
	}
	c.n = n
	if n != 0 {
		if q.pending == nil {
			q.pending = make(map[string]int64)
		}
		q.pending[c.app] += n
	}
}

// storedSize is about what the record key in state m takes stored (as storage counts an
// app's usage): its key and its encoding; 0 when there is none (ok false).
func storedSize(key string, m *crdt.Map, ok bool) int64 {
	if !ok {
		return 0
	}
	return int64(len(key) + m.EncodedLen())
}
