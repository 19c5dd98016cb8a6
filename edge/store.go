package edge

import (
	"context"
	"errors"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// store adapts *storage.DB to functions.Store. It also notes, in the bookmark of the
// request whose context it is given (requestIn), the caller's own records and the entries
// of their conversations that a handler reads, and every write it makes, so the response
// can name what it showed and wrote; outside a request it only passes through.
//
// With placement (Config.Replicas), a request is served by a node that holds its
// caller's partition (forward.go), so what a handler reads and writes of the caller is
// here; other users' records it reads (a recipient's name, a conversation partner's)
// may not be: those it reads from a node that holds them (remote), without storing them.
type store struct {
	*storage.DB
	remote remoteRecords // nil: every record is here
}

// remoteRecords reads records this node does not hold; *cluster.Replicator implements it.
type remoteRecords interface {
	HoldsKey(key string) bool
	ReadRecords(ctx context.Context, keys []string) (map[string]crdt.Map, error)
}

var (
	_ functions.Store    = store{}
	_ functions.AppStore = store{}
)

// Record implements functions.Store.
func (s store) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	if s.remote != nil && !s.remote.HoldsKey(key) {
		ms, ok, err := s.Records(ctx, key)
		if err != nil {
			return crdt.Map{}, false, err
		}
		return ms[0], ok[0], nil
	}
	m, ok, err := s.DB.Record(ctx, key)
	if r := requestIn(ctx); ok && r != nil && r.shows(key, &m) {
		r.shown.AddMap(&m)
	}
	return m, ok, err
}

// Records implements functions.Store.
func (s store) Records(ctx context.Context, keys ...string) ([]crdt.Map, []bool, error) {
	ms, ok, err := s.DB.Records(ctx, keys...)
	if err == nil && s.remote != nil {
		err = s.readRemote(ctx, keys, ms, ok)
	}
	if r := requestIn(ctx); r != nil && err == nil {
		for i := range ms {
			if ok[i] && r.shows(keys[i], &ms[i]) {
				r.shown.AddMap(&ms[i])
			}
		}
	}
	return ms, ok, err
}

// readRemote fills in, from the nodes that hold them, the records of keys this node does
// not hold.
func (s store) readRemote(ctx context.Context, keys []string, ms []crdt.Map, ok []bool) error {
	var far []string
	for _, k := range keys {
		if !s.remote.HoldsKey(k) {
			far = append(far, k)
		}
	}
	if len(far) == 0 {
		return nil
	}
	if r := requestIn(ctx); r != nil {
		// The remote read's connection may outlive the request (a dial in the background):
		// the request's context must not be reused for another meanwhile.
		r.waited = true
	}
	got, err := s.remote.ReadRecords(ctx, far)
	if err != nil {
		return functions.Errorf(functions.EUnavailable, "no node holding the records asked for answered")
	}
	for i, k := range keys {
		if m, found := got[k]; found {
			ms[i], ok[i] = m, true
		}
	}
	return nil
}

// UserSessions implements functions.Store.
func (s store) UserSessions(ctx context.Context, userID string) ([]crdt.Session, error) {
	ss, err := s.DB.UserSessions(ctx, userID)
	if b := shownIn(ctx); b != nil {
		for _, x := range ss {
			b.Add(x.Created)
		}
	}
	return ss, err
}

// ReadLog implements functions.Store.
func (s store) ReadLog(ctx context.Context, conv string, after crdt.Cursor, limit int) ([]crdt.Entry, crdt.Cursor, error) {
	es, next, err := s.DB.ReadLog(ctx, conv, after, limit)
	if b := shownIn(ctx); b != nil {
		for _, e := range es {
			b.Add(e.ID.TS)
		}
	}
	return es, next, err
}

// Update implements functions.Store. What fn reads of the caller's and what it writes
// join the request's bookmark only if fn succeeds (else its writes are discarded).
// A write that would grow a record beyond storage.MaxRecord is the client's to fix: 413.
func (s store) Update(ctx context.Context, fn func(tx functions.Tx) error) error {
	r := requestIn(ctx)
	if r == nil {
		return tooLarge(s.DB.Update(ctx, func(tx *storage.Tx) error { return fn(tx) }))
	}
	var seen crdt.Bookmark
	err := s.DB.Update(ctx, func(tx *storage.Tx) error {
		seen = crdt.Bookmark{}
		return fn(notingTx{tx, r, &seen})
	})
	if err == nil {
		r.shown.Merge(seen)
	}
	return tooLarge(err)
}

func tooLarge(err error) error {
	if errors.Is(err, storage.ErrRecordTooLarge) {
		return functions.Errorf(functions.ETooLarge, "the record would exceed %d bytes", storage.MaxRecord)
	}
	return err
}

// notingTx is a storage transaction that notes, in a bookmark, the caller's records it
// shows and the writes it makes.
type notingTx struct {
	*storage.Tx
	r    *requestContext // read only: the function runs on the committer
	seen *crdt.Bookmark
}

func (t notingTx) Record(key string) (crdt.Map, bool, error) {
	m, ok, err := t.Tx.Record(key)
	if ok && t.r.shows(key, &m) {
		t.seen.AddMap(&m)
	}
	return m, ok, err
}

// Merge notes the write itself (update's timestamps), not the merged record, which may
// hold other users' writes (a name's claim record).
func (t notingTx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	m, err := t.Tx.Merge(key, update)
	if err == nil {
		t.seen.AddMap(&update)
	}
	return m, err
}

func (t notingTx) Append(conv string, msg crdt.Message) (crdt.Entry, error) {
	e, err := t.Tx.Append(conv, msg)
	if err == nil {
		t.seen.Add(e.ID.TS)
	}
	return e, err
}

// Conversations implements functions.Store.
func (s store) Conversations(ctx context.Context, userID string) ([]functions.ConversationInfo, error) {
	cs, err := s.DB.Conversations(ctx, userID)
	if err != nil {
		return nil, err
	}
	b := shownIn(ctx)
	out := make([]functions.ConversationInfo, len(cs))
	for i, c := range cs {
		out[i] = functions.ConversationInfo{ID: c.ID, With: c.With, Last: c.Last, Count: c.Count}
		if b != nil {
			b.Add(c.Last.ID.TS)
		}
	}
	return out, nil
}
