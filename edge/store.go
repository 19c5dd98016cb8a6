package edge

import (
	"context"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// store adapts *storage.DB to functions.Store. It also notes, in the bookmark of the
// request whose context it is given (shownIn), every record and entry a handler reads and
// every write it makes, so the response can name what it showed; outside a request it
// only passes through.
type store struct{ *storage.DB }

var _ functions.Store = store{}

// Record implements functions.Store.
func (s store) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	m, ok, err := s.DB.Record(ctx, key)
	if ok {
		if b := shownIn(ctx); b != nil {
			b.AddMap(&m)
		}
	}
	return m, ok, err
}

// Records implements functions.Store.
func (s store) Records(ctx context.Context, keys ...string) ([]crdt.Map, []bool, error) {
	ms, ok, err := s.DB.Records(ctx, keys...)
	if b := shownIn(ctx); b != nil && err == nil {
		for i := range ms {
			if ok[i] {
				b.AddMap(&ms[i])
			}
		}
	}
	return ms, ok, err
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

// Update implements functions.Store. What fn reads and writes joins the request's
// bookmark only if fn succeeds (else its writes are discarded).
func (s store) Update(ctx context.Context, fn func(tx functions.Tx) error) error {
	b := shownIn(ctx)
	if b == nil {
		return s.DB.Update(ctx, func(tx *storage.Tx) error { return fn(tx) })
	}
	var seen crdt.Bookmark
	err := s.DB.Update(ctx, func(tx *storage.Tx) error {
		seen = crdt.Bookmark{}
		return fn(notingTx{tx, &seen})
	})
	if err == nil {
		b.Merge(seen)
	}
	return err
}

// notingTx is a storage transaction that notes what it shows and writes in a bookmark.
type notingTx struct {
	*storage.Tx
	seen *crdt.Bookmark
}

func (t notingTx) Record(key string) (crdt.Map, bool, error) {
	m, ok, err := t.Tx.Record(key)
	if ok {
		t.seen.AddMap(&m)
	}
	return m, ok, err
}

func (t notingTx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	m, err := t.Tx.Merge(key, update)
	if err == nil {
		t.seen.AddMap(&m)
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
