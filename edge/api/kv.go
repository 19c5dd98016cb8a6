package api

import (
	"encoding/json"
	"time"
)

// The service API's key-value namespace (docs/API.md, "Key-value namespace"): each app
// has its own keys, each holding a JSON object whose top-level fields merge one by one
// across regions, and an expiry. Store adapters (scs, gorilla/sessions) keep their
// sessions there.

// KVItem is one key of an app's namespace: GET, PUT and PATCH /v1/service/kv/{key}, and
// the items of GET /v1/service/kv.
type KVItem struct {
	Key string `json:"key"`
	// Value is the key's value: each field any JSON value but null, compacted. It is null
	// in a list asked without values.
	Value     map[string]json.RawMessage `json:"value"`
	ExpiresAt time.Time                  `json:"expires_at"`
}

// KVItemResponse is the body of GET, PUT and PATCH /v1/service/kv/{key}.
type KVItemResponse struct {
	Item KVItem `json:"item"`
}

// KVPutRequest is the body of PUT /v1/service/kv/{key}: the key's whole value (fields
// with a null value are left out) and its lifetime from now, in seconds (required).
type KVPutRequest struct {
	Value map[string]json.RawMessage `json:"value"`
	TTL   int64                      `json:"ttl"`
}

// KVPatchRequest is the body of PATCH /v1/service/kv/{key}: each field of Value is set to
// its value, or deleted when the value is JSON null; fields not named keep theirs. TTL,
// when not 0, moves the expiry to that many seconds from now.
type KVPatchRequest struct {
	Value map[string]json.RawMessage `json:"value"`
	TTL   int64                      `json:"ttl,omitempty"`
}

// KVListResponse is the body of GET /v1/service/kv: a page of the app's live keys, and
// the cursor to pass as after for the next page, empty once there is none. A page may
// hold fewer items than asked for, even none, and still have a next page.
type KVListResponse struct {
	Items []KVItem `json:"items"`
	Next  string   `json:"next,omitempty"`
}
