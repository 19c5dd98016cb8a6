package client

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sessiond/sessiond/edge/api"
)

// The key-value namespace of the service API (/v1/service/kv): an app's keys, each a JSON
// object whose top-level fields merge one by one across regions, with an expiry. The
// ServiceClient's bookmark covers every write the app made through it, so the app reads
// its own writes on every node. Store adapters (scs, gorilla/sessions) are built on these
// methods.

// kvPath returns the path of key, escaped.
func kvPath(key string) string { return "/v1/service/kv/" + url.PathEscape(key) }

// ttlSeconds returns d in whole seconds, rounded up: the API counts lifetimes in seconds.
func ttlSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

// KVGet returns the value of key (GET /v1/service/kv/{key}). A key that does not exist,
// has expired or was deleted is ErrNotFound.
func (s *ServiceClient) KVGet(ctx context.Context, key string) (api.KVItem, error) {
	var out api.KVItemResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodGet, Path: kvPath(key), Idempotent: true}, &out)
	return out.Item, err
}

// KVPut replaces the whole value of key with value, expiring ttl from now (rounded up to
// a whole second; 1 s to 90 days), and returns it (PUT /v1/service/kv/{key}). A key that
// was deleted is ErrKeyDeleted (a deletion wins over later writes).
func (s *ServiceClient) KVPut(ctx context.Context, key string, value map[string]json.RawMessage, ttl time.Duration) (api.KVItem, error) {
	if value == nil {
		value = map[string]json.RawMessage{}
	}
	var out api.KVItemResponse
	req := api.KVPutRequest{Value: value, TTL: ttlSeconds(ttl)}
	_, err := s.c.Do(ctx, Request{Method: http.MethodPut, Path: kvPath(key), Body: req, Idempotent: true}, &out)
	return out.Item, err
}

// KVPatch sets the fields of set, deletes the fields named in del, and, when ttl is not
// 0, moves the expiry to ttl from now; it returns the value as it now is (PATCH
// /v1/service/kv/{key}). Fields it does not name keep their values, also those another
// node changes at the same time. A key that does not exist or has expired is
// ErrNotFound, a deleted one ErrKeyDeleted.
func (s *ServiceClient) KVPatch(ctx context.Context, key string, set map[string]json.RawMessage, del []string, ttl time.Duration) (api.KVItem, error) {
	req := api.KVPatchRequest{Value: make(map[string]json.RawMessage, len(set)+len(del)), TTL: ttlSeconds(ttl)}
	for k, v := range set {
		req.Value[k] = v
	}
	for _, k := range del {
		req.Value[k] = json.RawMessage("null")
	}
	var out api.KVItemResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodPatch, Path: kvPath(key), Body: req, Idempotent: true}, &out)
	return out.Item, err
}

// KVDiff returns what KVPatch needs to turn the fields base into now: the fields of now
// that are new or changed (compared as compacted JSON, as the node stores them) and the
// names of those of base that went. A store adapter that remembers the fields it found a
// session with sends only what its request changed, so that changes of other fields made
// meanwhile elsewhere survive.
func KVDiff(base, now map[string]json.RawMessage) (set map[string]json.RawMessage, del []string) {
	set = make(map[string]json.RawMessage)
	for k, v := range now {
		if old, ok := base[k]; !ok || !jsonEqual(old, v) {
			set[k] = v
		}
	}
	for k := range base {
		if _, ok := now[k]; !ok {
			del = append(del, k)
		}
	}
	return set, del
}

// jsonEqual reports whether two JSON texts are the same once compacted.
func jsonEqual(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var x, y bytes.Buffer
	return json.Compact(&x, a) == nil && json.Compact(&y, b) == nil && bytes.Equal(x.Bytes(), y.Bytes())
}

// KVDelete deletes key for good (DELETE /v1/service/kv/{key}): no write of it that
// arrives later brings it back while its tombstone is kept (until its latest expiry, and
// at least an hour). Deleting a key that does not exist is not an error.
func (s *ServiceClient) KVDelete(ctx context.Context, key string) error {
	_, err := s.c.Do(ctx, Request{Method: http.MethodDelete, Path: kvPath(key), Idempotent: true}, nil)
	return err
}

// KVList returns a page of the app's live keys after the cursor after ("" for the
// first page), at most limit of them (0: the node's default, 100), with their values if
// values is set (GET /v1/service/kv). Pass the page's Next as after for the next page,
// until it is "". A page may hold fewer keys than limit, even none, and still have a
// next page.
func (s *ServiceClient) KVList(ctx context.Context, after string, limit int, values bool) (api.KVListResponse, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if values {
		q.Set("values", "true")
	}
	var out api.KVListResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/service/kv", Query: q, Idempotent: true}, &out)
	return out, err
}
