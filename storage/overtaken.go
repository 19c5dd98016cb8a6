package storage

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
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
// then others at random. Nothing is remembered across a restart: Replaced is the lasting
// record.
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

// Replaced returns, for those of keys whose stored state once carried a write of this
// node's that it no longer shows, the latest such write's timestamp. A record loses one
// when a remote write wins the merge over it (as Overtaken says), and a user record
// stands for the sessions the erasure cascade deleted with writes of ours in them; a
// conversation loses this node's messages when an erasure marker purges them, and a log
// key (LogKey) stands for its conversation.
//
// Unlike Overtaken, this is kept in the file (the replaced bucket), written in the commit
// that lost the write and deleted only with the record, or with the conversation when
// Drop removes it: it survives restarts and is never forgotten for lack of room. That is
// what handing off a key needs (edge/cluster): a node that stores a key without holding
// it must know, whenever it offers the key, maybe after restarts, whether the key carried
// a write of its own. A restored backup (Reidentify) starts with none. It costs a key
// and a timestamp per record or conversation that lost a write of ours, at most one each.
// A value that does not decode (Check reports it) counts as a mark of unknown time, the
// zero Timestamp: the cautious answer.
func (db *DB) Replaced(ctx context.Context, keys []string) (map[string]crdt.Timestamp, error) {
	var out map[string]crdt.Timestamp
	err := db.view(ctx, func(btx *bolt.Tx) error {
		bk := btx.Bucket(bucketReplaced)
		for _, key := range keys {
			ts, ok := replacedIn(bk, replacedKey(key))
			if !ok {
				continue
			}
			if out == nil {
				out = make(map[string]crdt.Timestamp)
			}
			out[key] = ts
		}
		return nil
	})
	return out, err
}

// replacedKey is key's key in the replaced bucket: a record's own key, or for a log key
// 0 and its conversation (no record key starts with 0).
func replacedKey(key string) []byte {
	if conv, _, ok := ParseLogKey(key); ok {
		return convReplacedKey(conv)
	}
	return []byte(key)
}

func convReplacedKey(conv string) []byte { return append([]byte{0}, conv...) }

// replacedIn returns the mark of key (replacedKey) in bk, the replaced bucket, if there is
// one: a value that does not decode is a mark all the same, of no known time (the zero
// Timestamp, before every other).
func replacedIn(bk *bolt.Bucket, key []byte) (crdt.Timestamp, bool) {
	v := bk.Get(key)
	if v == nil {
		return crdt.Timestamp{}, false
	}
	ts, err := crdt.DecodeTimestamp(v)
	if err != nil {
		return crdt.Timestamp{}, true
	}
	return ts, true
}

// noteReplaced records in the replaced bucket that the state at key (replacedKey) lost
// this node's write stamped ts, unless it records a later one.
func (b *batch) noteReplaced(key []byte, ts crdt.Timestamp) error {
	bk := b.replaced.get()
	if old, ok := replacedIn(bk.Bucket, key); ok && !old.Less(ts) {
		return nil
	}
	return bk.Put(key, ts.AppendBinary(nil))
}

// forgetReplaced deletes key's entry (replacedKey) in the replaced bucket, if any: its
// record or conversation is no longer stored.
func (b *batch) forgetReplaced(key []byte) error {
	bk := b.replaced.get()
	if bk.Get(key) == nil {
		return nil
	}
	return bk.Delete(key)
}
