// Package scsstore keeps the sessions of github.com/alexedwards/scs/v2 in sessiond: each
// session is a key of an app's key-value namespace (/v1/service/kv), replicated to every
// region, expiring with the session. Store implements scs's Store, CtxStore and
// IterableCtxStore (and IterableStore).
//
// With JSONCodec as the SessionManager's codec, every session key is a field of its own
// on the server, and a commit sends only the keys that changed since the request found
// the session (a patch): two requests of one session served at the same time — by two
// app servers, or through nodes in two regions — that change different keys both keep
// their change. (With another codec, such as scs's default gob codec, a session is one
// opaque value and the last commit wins whole.) A session deleted by Destroy or
// RenewToken stays deleted: a commit of it from a request that loaded it before is
// dropped, not written back.
//
//	svc, err := client.NewService(client.Config{Endpoints: endpoints}, apiKey)
//	sessionManager := scs.New()
//	sessionManager.Store = scsstore.New(svc)
//	sessionManager.Codec = scsstore.NewJSONCodec()
//
// The ServiceClient (package client) is the app's: it sends the app's API key, retries
// and fails over between nodes, and keeps the bookmark of every write it made, so every
// request it sends reads the app's own writes, whichever node answers.
//
// Limits are the namespace's (docs/API.md): tokens of 1–256 URL-safe characters (scs's
// are 43), at most 255 session keys of at most 126 bytes each, 64 KiB of encoded values per
// session, and a lifetime of at most 90 days (a longer one is cut to 90 days).
package scsstore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/sessiond/sessiond/edge/client"
)

// maxTTL is the longest lifetime the key-value namespace takes (functions.MaxKVTTL).
const maxTTL = 90 * 24 * time.Hour

// opaqueField holds, base64-encoded, a session that is not a JSON object (the encoding of
// a codec other than JSONCodec).
const opaqueField = "scs:opaque"

// maxBases bounds the sessions remembered for the requests in flight; beyond it, a
// commit sends the whole session.
const maxBases = 1 << 16

// Store is an scs session store in sessiond's key-value namespace. It is safe for
// concurrent use.
type Store struct {
	c     *client.ServiceClient
	now   func() time.Time
	bases baseCache
}

var (
	_ scs.Store            = (*Store)(nil)
	_ scs.CtxStore         = (*Store)(nil)
	_ scs.IterableStore    = (*Store)(nil)
	_ scs.IterableCtxStore = (*Store)(nil)
)

// New returns a Store that keeps sessions in the key-value namespace of the app that c
// authenticates as.
func New(c *client.ServiceClient) *Store {
	return &Store{c: c, now: time.Now, bases: baseCache{m: make(map[baseKey]map[string]json.RawMessage)}}
}

// Find implements scs.Store: FindCtx with context.Background.
func (s *Store) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx returns the session of token, found false when it does not exist, has expired,
// was deleted or the token is malformed. It remembers, for the request of ctx, what it
// found, which the request's commit compares with (see CommitCtx).
func (s *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	it, err := s.c.KVGet(ctx, token)
	if errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrInvalidArgument) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	b, err := encodeFields(it.Value)
	if err != nil {
		return nil, false, err
	}
	s.bases.put(ctx, token, it.Value)
	return b, true, nil
}

// Commit implements scs.Store: CommitCtx with context.Background.
func (s *Store) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// CommitCtx stores the session of token, b, expiring at expiry (cut to 90 days from now).
// When the same request (the same ctx, or one derived from it without a new
// cancellation, as scs's LoadAndSave passes) found the session before, it sends only the
// fields that changed since, and deletes those that went; otherwise it replaces the whole
// session. A session deleted meanwhile stays deleted: the commit is dropped and nil
// returned. An expiry already past deletes the session.
func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	ttl := expiry.Sub(s.now())
	if ttl <= 0 {
		return s.DeleteCtx(ctx, token)
	}
	ttl = min(ttl, maxTTL)
	fields := decodeFields(b)
	if base, ok := s.bases.get(ctx, token); ok {
		set, del := client.KVDiff(base, fields)
		_, err := s.c.KVPatch(ctx, token, set, del, ttl)
		switch {
		case err == nil:
			s.bases.update(ctx, token, fields)
			return nil
		case errors.Is(err, client.ErrKeyDeleted):
			return nil
		case !errors.Is(err, client.ErrNotFound): // expired or swept since: written whole below
			return err
		}
	}
	_, err := s.c.KVPut(ctx, token, fields, ttl)
	if errors.Is(err, client.ErrKeyDeleted) {
		return nil
	}
	if err == nil {
		s.bases.update(ctx, token, fields)
	}
	return err
}

// Delete implements scs.Store: DeleteCtx with context.Background.
func (s *Store) Delete(token string) error { return s.DeleteCtx(context.Background(), token) }

// DeleteCtx deletes the session of token for good: a later commit of it, from a request
// that found it before, is dropped. Deleting a session that does not exist is not an
// error.
func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	s.bases.drop(ctx, token)
	err := s.c.KVDelete(ctx, token)
	if errors.Is(err, client.ErrInvalidArgument) { // a malformed token names no session
		return nil
	}
	return err
}

// All implements scs.IterableStore: AllCtx with context.Background.
func (s *Store) All() (map[string][]byte, error) { return s.AllCtx(context.Background()) }

// AllCtx returns every live session of the app, by token (an empty map when there is
// none). It reads them a page at a time; sessions written or deleted meanwhile may or
// may not be in it.
func (s *Store) AllCtx(ctx context.Context) (map[string][]byte, error) {
	out := make(map[string][]byte)
	after := ""
	for {
		page, err := s.c.KVList(ctx, after, 100, true)
		if err != nil {
			return nil, err
		}
		for _, it := range page.Items {
			b, err := encodeFields(it.Value)
			if err != nil {
				return nil, err
			}
			out[it.Key] = b
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// decodeFields returns the fields a session's encoding b is stored as: its members when
// it is a JSON object (JSONCodec's encoding), else b itself, base64-encoded, in one field.
func decodeFields(b []byte) map[string]json.RawMessage {
	var fields map[string]json.RawMessage
	if json.Unmarshal(b, &fields) == nil && fields != nil {
		return fields
	}
	v, _ := json.Marshal(base64.StdEncoding.EncodeToString(b)) // a string always marshals
	return map[string]json.RawMessage{opaqueField: v}
}

// encodeFields returns the session encoding that fields store (decodeFields' inverse).
func encodeFields(fields map[string]json.RawMessage) ([]byte, error) {
	if v, ok := fields[opaqueField]; ok && len(fields) == 1 {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, errors.New("scsstore: malformed opaque session")
		}
		return base64.StdEncoding.DecodeString(s)
	}
	if fields == nil {
		fields = map[string]json.RawMessage{}
	}
	return json.Marshal(fields)
}

// baseCache remembers, for each request in flight, the session it found: by the request's
// Done channel (the same for the context scs's LoadAndSave finds with and the one it
// commits with) and the token. An entry goes when its request's context ends. Requests
// without a Done channel (context.Background) are not remembered: their commits send the
// whole session.
type baseCache struct {
	mu sync.Mutex
	m  map[baseKey]map[string]json.RawMessage
}

type baseKey struct {
	done  <-chan struct{}
	token string
}

func (b *baseCache) put(ctx context.Context, token string, fields map[string]json.RawMessage) {
	done := ctx.Done()
	if done == nil {
		return
	}
	k := baseKey{done, token}
	b.mu.Lock()
	_, had := b.m[k]
	if !had && len(b.m) >= maxBases {
		b.mu.Unlock()
		return
	}
	b.m[k] = maps.Clone(fields)
	b.mu.Unlock()
	if !had {
		context.AfterFunc(ctx, func() {
			b.mu.Lock()
			delete(b.m, k)
			b.mu.Unlock()
		})
	}
}

// update replaces what the request of ctx found with what it committed, if it found
// the session: a second commit of the same request sends what changed since the first.
func (b *baseCache) update(ctx context.Context, token string, fields map[string]json.RawMessage) {
	if _, ok := b.get(ctx, token); ok {
		b.put(ctx, token, fields)
	}
}

func (b *baseCache) get(ctx context.Context, token string) (map[string]json.RawMessage, bool) {
	done := ctx.Done()
	if done == nil {
		return nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.m[baseKey{done, token}]
	return f, ok
}

func (b *baseCache) drop(ctx context.Context, token string) {
	if done := ctx.Done(); done != nil {
		b.mu.Lock()
		delete(b.m, baseKey{done, token})
		b.mu.Unlock()
	}
}
