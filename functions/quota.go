package functions

import "github.com/sessiond/sessiond/crdt"

// Quotas. Every record an app writes is bounded (a key-value value, a session's data),
// and so is how fast it writes (the service API's requests per app), but not how much it
// keeps: a hostile or compromised app could otherwise fill every node's disk with
// key-value records, subjects and sessions that live up to a year, and take every other
// app down with it. A Quota bounds an app's stored bytes, cluster-wide, as this node
// estimates them: a write that would add to them (a new key, subject or session, a value
// or session data that grows) is refused with EQuotaExceeded once the app is at its
// quota, while writes that shrink or delete, and reads, always work. Nodes decide on
// what they hold, so concurrent writes through several nodes may overshoot the quota by
// what they write before they hear of each other.

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

// Quota bounds the bytes one app stores. A nil Quota, or one with Bytes 0, bounds nothing.
type Quota struct {
	Meter UsageMeter
	Bytes int64
}

// allows returns nil if app may store growth more bytes, else EQuotaExceeded. Growth of
// zero or less (a write that adds nothing) is always allowed.
func (q *Quota) allows(app string, growth int64) error {
	if q == nil || q.Bytes <= 0 || q.Meter == nil || growth <= 0 {
		return nil
	}
	if u := q.Meter.AppUsage(app); u.Bytes+growth > q.Bytes {
		return Errorf(EQuotaExceeded, "app %q stores about %d bytes, with this write over its quota of %d (--app-quota): delete keys or sessions, or let them expire", app, u.Bytes, q.Bytes)
	}
	return nil
}

// storedSize is about what the record key in state m takes stored (as storage counts an
// app's usage): its key and its encoding; 0 when there is none (ok false).
func storedSize(key string, m *crdt.Map, ok bool) int64 {
	if !ok {
		return 0
	}
	return int64(len(key) + m.EncodedLen())
}
