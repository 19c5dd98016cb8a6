package storage

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// Overtaken is a write of this node's that a remote write replaced before replication
// necessarily sent it: the record at Key no longer shows this node's field stamped TS,
// because another node's write to the same field won the merge here.
type Overtaken struct {
	Key string
	TS  crdt.Timestamp
}

// Overtaken returns the latest timestamp of this node's writes to the record at key that
// remote writes replaced, if it still remembers one: every one is remembered while no
// more than maxOvertaken are; beyond that, those older than overtakenFor are forgotten,
// then others at random. Nothing is remembered across a restart.
//
// Replication pushes only a node's own writes, and tells each peer up to which timestamp
// it holds them all. A write replaced here before it was pushed would be missing from that
// promise: the record no longer carries it, and the write that replaced it is its own
// origin's to push, which may not have reached the peer. The pusher relays such a record,
// which carries the replacing write, in its place.
func (db *DB) Overtaken(key string) (crdt.Timestamp, bool) { return db.overtaken.get(key) }

// overtakenFor is how long an overtaken write is remembered: replication pushes within
// milliseconds, and a peer that was unreachable meanwhile catches up by anti-entropy.
const overtakenFor = 5 * time.Minute

// maxOvertaken bounds the writes remembered; beyond it the oldest are forgotten first.
const maxOvertaken = 4096

// overtakenWrites remembers overtaken writes by key. Safe for concurrent use.
type overtakenWrites struct {
	n  atomic.Int64 // len(m), read without the lock: usually 0
	mu sync.Mutex
	m  map[string]crdt.Timestamp
}

// note records overtaken writes found by a batch committed at now.
func (o *overtakenWrites) note(ws []Overtaken, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = make(map[string]crdt.Timestamp)
	}
	for _, w := range ws {
		if old, ok := o.m[w.Key]; !ok || old.Less(w.TS) {
			o.m[w.Key] = w.TS
		}
	}
	if len(o.m) > maxOvertaken {
		horizon := now.Add(-overtakenFor).UnixNano()
		for k, ts := range o.m {
			if ts.Wall < horizon {
				delete(o.m, k)
			}
		}
		for k := range o.m { // still too many: forget at random
			if len(o.m) <= maxOvertaken {
				break
			}
			delete(o.m, k)
		}
	}
	o.n.Store(int64(len(o.m)))
}

func (o *overtakenWrites) get(key string) (crdt.Timestamp, bool) {
	if o.n.Load() == 0 {
		return crdt.Timestamp{}, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	ts, ok := o.m[key]
	return ts, ok
}
