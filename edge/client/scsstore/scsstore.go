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
// # Keys
//
// A session token is what the visitor's cookie holds, and a visitor can send any. So a
// Store takes only tokens of the shape scs makes — 43 characters of base64url, 256 random
// bits (or, with HashTokenInStore, their SHA-256) — and keeps the session of token under
// the key prefix+token: DefaultKeyPrefix ("scs:session:") for New, another with
// NewWithPrefix. Any other token is not found, without a request to the server, and
// deleting it deletes nothing. A cookie therefore names the store's own keys or none:
// it cannot read, overwrite or delete another key of the app (keep no key of your own
// under the prefix, and give two Stores of one app different prefixes). Sessions kept by
// versions of this package before the prefix, under the bare token, are not found: their
// visitors start new sessions (sign in again), and the old keys expire on their own.
//
// Limits are the namespace's (docs/API.md): at most 255 session keys of at most 126 bytes
// each (see JSONCodec), 64 KiB of encoded values per session, and a lifetime of at most 90
// days (a longer one is cut to 90 days). Every session counts against the app's storage
// quota (the nodes' --app-quota): at it, commits of new or growing sessions fail (scs
// answers 500) until sessions expire or are destroyed. An app that gives sessions to
// anonymous visitors should bound what they can make it store — give them a short
// IdleTimeout, or put data in the session only once a visitor signs in.
package scsstore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
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

const (
	// listPage is the number of keys AllCtx asks for per page: the most the namespace
	// gives with values.
	listPage = 100
	// maxListPages bounds the pages one AllCtx reads (6.5 million keys of the app's at
	// 100 a page), so that a server that never stops giving a next cursor cannot keep it
	// going for ever.
	maxListPages = 1 << 16
)

// Store is an scs session store in sessiond's key-value namespace. It is safe for
// concurrent use.
type Store struct {
	c        *client.ServiceClient
	prefix   string
	now      func() time.Time
	maxPages int // maxListPages; less in tests
	bases    baseCache
}

var (
	_ scs.Store            = (*Store)(nil)
	_ scs.CtxStore         = (*Store)(nil)
	_ scs.IterableStore    = (*Store)(nil)
	_ scs.IterableCtxStore = (*Store)(nil)
)

// New returns a Store that keeps sessions in the key-value namespace of the app that c
// authenticates as, under keys that begin with DefaultKeyPrefix.
func New(c *client.ServiceClient) *Store {
	return newPrefixed(c, DefaultKeyPrefix)
}

// NewWithPrefix returns a Store as New does, whose keys begin with prefix instead: 1 to
// 213 bytes of A–Z a–z 0–9 - _ . ~ : @ + = (what the namespace takes in keys, leaving room
// for the 43 of a token). The store owns every key under prefix: the app must keep none
// of its own there. It returns an error naming what is wrong with prefix.
func NewWithPrefix(c *client.ServiceClient, prefix string) (*Store, error) {
	if err := client.ValidKeyPrefix(prefix); err != nil {
		return nil, fmt.Errorf("scsstore: %w", err)
	}
	return newPrefixed(c, prefix), nil
}

func newPrefixed(c *client.ServiceClient, prefix string) *Store {
	return &Store{
		c: c, prefix: prefix, now: time.Now, maxPages: maxListPages,
		bases: baseCache{m: make(map[baseKey]map[string]json.RawMessage)},
	}
}

// key returns the key the session of token is kept under, or false when token is not of
// the shape scs makes, and so names no session of the store's.
func (s *Store) key(token string) (string, bool) {
	if !client.IsRandomID(token) {
		return "", false
	}
	return s.prefix + token, true
}

// Find implements scs.Store: FindCtx with context.Background.
func (s *Store) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx returns the session of token, found false when it does not exist, has expired
// or was deleted, and, without asking the server, when token is not of the shape scs
// makes. It remembers, for the request of ctx, what it found, which the request's commit
// compares with (see CommitCtx).
func (s *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	key, ok := s.key(token)
	if !ok {
		return nil, false, nil
	}
	it, err := s.c.KVGet(ctx, key)
	if errors.Is(err, client.ErrNotFound) {
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
// returned. An expiry already past deletes the session (the store's own key: see Keys in
// the package documentation). A token not of the shape scs makes, or a zero expiry (scs
// never commits one; a codec that decoded a record without a deadline would), is an
// error, and nothing is written or deleted.
func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	key, ok := s.key(token)
	if !ok {
		return fmt.Errorf("scsstore: commit: token is not of the shape scs makes (%d characters of base64url)", tokenLen)
	}
	if expiry.IsZero() {
		return errors.New("scsstore: commit: session without an expiry (a deadline missing from what the codec decoded?)")
	}
	ttl := expiry.Sub(s.now())
	if ttl <= 0 {
		return s.delete(ctx, token, key)
	}
	ttl = min(ttl, maxTTL)
	fields := decodeFields(b)
	if base, ok := s.bases.get(ctx, token); ok {
		set, del := client.KVDiff(base, fields)
		_, err := s.c.KVPatch(ctx, key, set, del, ttl)
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
	_, err := s.c.KVPut(ctx, key, fields, ttl)
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
// error; a token not of the shape scs makes names none, and is not sent.
func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	key, ok := s.key(token)
	if !ok {
		return nil
	}
	return s.delete(ctx, token, key)
}

func (s *Store) delete(ctx context.Context, token, key string) error {
	s.bases.drop(ctx, token)
	return s.c.KVDelete(ctx, key)
}

// All implements scs.IterableStore: AllCtx with context.Background.
func (s *Store) All() (map[string][]byte, error) { return s.AllCtx(context.Background()) }

// AllCtx returns every live session of the store, by token (an empty map when there is
// none): the app's keys under the store's prefix, read a page at a time; sessions
// written or deleted meanwhile may or may not be in it. The namespace lists all the
// app's keys, so AllCtx reads (and skips) the app's other keys too. It returns an error,
// and no sessions, when the server gives a cursor it gave before, or more than
// maxListPages pages (65,536).
func (s *Store) AllCtx(ctx context.Context) (map[string][]byte, error) {
	out := make(map[string][]byte)
	seen := make(map[string]bool)
	after := ""
	for range s.maxPages {
		page, err := s.c.KVList(ctx, after, listPage, true)
		if err != nil {
			return nil, err
		}
		for _, it := range page.Items {
			token, ok := strings.CutPrefix(it.Key, s.prefix)
			if !ok || !client.IsRandomID(token) {
				continue
			}
			b, err := encodeFields(it.Value)
			if err != nil {
				return nil, err
			}
			out[token] = b
		}
		if page.Next == "" {
			return out, nil
		}
		if seen[page.Next] {
			return nil, fmt.Errorf("scsstore: list sessions: the server gave cursor %q twice", page.Next)
		}
		seen[page.Next] = true
		after = page.Next
	}
	return nil, fmt.Errorf("scsstore: list sessions: more than %d pages", s.maxPages)
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
