package storage

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// What each app's records take on this node, so that a quota can bound what one app
// stores (functions.Quota). An app owns its key-value records (crdt.KVPrefix, named by
// the key) and its subjects' user and session records (the "app" field both carry: see
// crdt.FieldApp, crdt.FieldSessionApp). Usage is derived state, kept in memory: Open
// counts it in the pass that rebuilds the digest, and every batch adds what it changed
// when it is acknowledged, as it does for the digest.

// AppUsage is what an app's records take: how many, and their keys' and encoded states'
// bytes.
type AppUsage struct {
	Records int64
	Bytes   int64
}

// recordApp returns the app that owns the record key stored as enc, or "" for a record
// no app owns. It decodes nothing but the one field.
func recordApp(key string, enc []byte) string {
	switch {
	case strings.HasPrefix(key, crdt.KVPrefix):
		app, _, _ := crdt.ParseKVKey(key)
		return app
	case strings.HasPrefix(key, crdt.SessionPrefix), strings.HasPrefix(key, crdt.UserPrefix):
		// crdt.FieldSessionApp and crdt.FieldApp: one name.
		if v, ok := crdt.PeekValue(enc, crdt.FieldApp); ok {
			return string(v)
		}
	}
	return ""
}

// usageTable is the usage of every app with records here. Safe for concurrent use.
type usageTable struct {
	mu   sync.RWMutex
	apps map[string]AppUsage
}

// addUsage adds the record key stored as enc (sign 1) to *apps, or takes it away (sign
// -1), if an app owns it; it makes the map if need be.
func addUsage(apps *map[string]AppUsage, key string, enc []byte, sign int64) {
	app := recordApp(key, enc)
	if app == "" {
		return
	}
	if *apps == nil {
		*apps = make(map[string]AppUsage)
	}
	u := (*apps)[app]
	u.Records += sign
	u.Bytes += sign * int64(len(key)+len(enc))
	(*apps)[app] = u
}

// apply adds a batch's changes (deltas by app) to the table.
func (t *usageTable) apply(deltas map[string]AppUsage) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.apps == nil {
		t.apps = make(map[string]AppUsage, len(deltas))
	}
	for app, d := range deltas {
		u := t.apps[app]
		u.Records += d.Records
		u.Bytes += d.Bytes
		if u.Records == 0 && u.Bytes == 0 {
			delete(t.apps, app)
		} else {
			t.apps[app] = u
		}
	}
}

// AppUsage returns what the records of app take on this node, as of the latest
// acknowledged batch: every record it owns that is stored here, its own partitions' and
// any others' (keys on their way to their holders).
func (db *DB) AppUsage(app string) AppUsage {
	db.usage.mu.RLock()
	defer db.usage.mu.RUnlock()
	return db.usage.apps[app]
}

// maxSubjectScan bounds the user records one AppSubjects call reads, so that its read
// transaction stays short however few of them are the app's.
const maxSubjectScan = 4096

// AppSubjects returns the IDs of app's subjects whose records this node stores, in ID
// order, from just after the ID after ("" from the first), reading at most
// maxSubjectScan user records: next is where to go on from, "" once every user record
// was read. It decodes nothing but the field that names a record's app.
func (db *DB) AppSubjects(ctx context.Context, app, after string) (ids []string, next string, err error) {
	if app == "" {
		return nil, "", fmt.Errorf("app subjects: no app")
	}
	err = db.view(ctx, func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketRecords).Cursor()
		prefix := []byte(crdt.UserPrefix)
		start := append(slices.Clip(prefix), after...)
		k, v := c.Seek(start)
		if after != "" && bytes.Equal(k, start) {
			k, v = c.Next()
		}
		for n := 0; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if n == maxSubjectScan {
				return nil
			}
			n++
			next = string(k[len(prefix):])
			if len(v) < seqLen {
				return fmt.Errorf("record %q: corrupt value", k)
			}
			if a, ok := crdt.PeekValue(v[seqLen:], crdt.FieldApp); ok && string(a) == app {
				ids = append(ids, next)
			}
		}
		next = ""
		return nil
	})
	return ids, next, err
}
