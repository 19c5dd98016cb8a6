package edge

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
)

// kvItem decodes a key-value item response, failing unless status is 200.
func kvItem(tb testing.TB, what string, resp *http.Response, body []byte) api.KVItem {
	tb.Helper()
	var out api.KVItemResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil {
		tb.Fatalf("%s: status %d: %s", what, resp.StatusCode, body)
	}
	return out.Item
}

func kvValues(it api.KVItem) map[string]string {
	out := make(map[string]string, len(it.Value))
	for k, v := range it.Value {
		out[k] = string(v)
	}
	return out
}

// kvListAll pages through an app's keys through c and returns them with their values.
func kvListAll(tb testing.TB, c *testClient, key string, limit int, hdr ...string) map[string]map[string]string {
	tb.Helper()
	out := make(map[string]map[string]string)
	after := ""
	for range 10000 {
		path := fmt.Sprintf("/v1/service/kv?values=true&limit=%d&after=%s", limit, url.QueryEscape(after))
		resp, body := c.do("GET", path, key, nil, hdr...)
		var page api.KVListResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &page) != nil {
			tb.Fatalf("list: status %d: %s", resp.StatusCode, body)
		}
		if len(page.Items) > limit {
			tb.Fatalf("list: %d items, limit %d", len(page.Items), limit)
		}
		for _, it := range page.Items {
			if _, dup := out[it.Key]; dup {
				tb.Fatalf("list: %q twice", it.Key)
			}
			out[it.Key] = kvValues(it)
		}
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
	tb.Fatal("list never ended")
	return nil
}

func TestKV_HTTP(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "kv-0"))
	c := newTestClient(t, n)
	shop, blog := mustCreateApp(t, n, "shop"), mustCreateApp(t, n, "blog")

	t.Run("OK", func(t *testing.T) {
		resp, body := c.do("PUT", "/v1/service/kv/tok1", shop, map[string]any{"value": map[string]any{"cart": []int{1, 2}, "user": "alice"}, "ttl": 3600})
		it := kvItem(t, "put", resp, body)
		if want := map[string]string{"cart": "[1,2]", "user": `"alice"`}; it.Key != "tok1" || !maps.Equal(kvValues(it), want) {
			t.Errorf("put: %+v, want %v", it, want)
		}
		if d := time.Until(it.ExpiresAt); d < 59*time.Minute || d > time.Hour {
			t.Errorf("put: expires in %s, want an hour", d)
		}
		if resp.Header.Get(headerBookmark) == "" {
			t.Error("a write without a bookmark")
		}
		checkHeaders(t, "PUT /v1/service/kv/tok1", "kv-0", true, resp.Header)
		resp, body = c.do("GET", "/v1/service/kv/tok1", shop, nil, headerBookmark, resp.Header.Get(headerBookmark))
		if it := kvItem(t, "get", resp, body); it.Value["user"] == nil || resp.Header.Get(headerBookmark) == "" {
			t.Errorf("get: %s, bookmark %q", body, resp.Header.Get(headerBookmark))
		}
		resp, body = c.do("PATCH", "/v1/service/kv/tok1", shop, `{"value":{"user":null,"theme": "dark" },"ttl":60}`)
		it = kvItem(t, "patch", resp, body)
		if want := map[string]string{"cart": "[1,2]", "theme": `"dark"`}; !maps.Equal(kvValues(it), want) || time.Until(it.ExpiresAt) > time.Minute {
			t.Errorf("patch: %+v, want %v expiring within a minute", it, want)
		}
		// Another app does not see it, read or listed.
		resp, body = c.do("GET", "/v1/service/kv/tok1", blog, nil)
		wantError(t, resp, body, 404, "not_found")
		if got := kvListAll(t, c, blog, 10); len(got) != 0 {
			t.Errorf("blog lists %v", got)
		}
		if got := kvListAll(t, c, shop, 10); len(got) != 1 || got["tok1"]["theme"] != `"dark"` {
			t.Errorf("shop lists %v", got)
		}
		resp, body = c.do("DELETE", "/v1/service/kv/tok1", shop, nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete: %d %s", resp.StatusCode, body)
		}
		resp, body = c.do("GET", "/v1/service/kv/tok1", shop, nil)
		wantError(t, resp, body, 404, "not_found")
		resp, body = c.do("PUT", "/v1/service/kv/tok1", shop, map[string]any{"value": map[string]any{"a": 1}, "ttl": 60})
		wantError(t, resp, body, 409, "key_deleted")
		resp, body = c.do("PATCH", "/v1/service/kv/tok1", shop, map[string]any{"value": map[string]any{"a": 1}})
		wantError(t, resp, body, 409, "key_deleted")
		if resp, _ := c.do("DELETE", "/v1/service/kv/never", shop, nil); resp.StatusCode != http.StatusNoContent {
			t.Errorf("delete of an absent key: %d", resp.StatusCode)
		}
	})
	t.Run("OKKeys", func(t *testing.T) {
		for _, key := range []string{"a:b@c+d=e~f.g_h-i", strings.Repeat("Z", functions.MaxKVKey), "AbC-dEf_0123456789abcdef0123456789abcdefghi"} {
			path := "/v1/service/kv/" + url.PathEscape(key)
			if strings.Contains(key, ":") { // escaped as encodeURIComponent does: the same key
				path = "/v1/service/kv/" + strings.NewReplacer(":", "%3A", "@", "%40", "+", "%2B", "=", "%3D").Replace(key)
			}
			resp, body := c.do("PUT", path, shop, map[string]any{"value": map[string]any{}, "ttl": 60})
			if it := kvItem(t, "put "+key, resp, body); it.Key != key {
				t.Errorf("put %q: key %q", key, it.Key)
			}
			resp, body = c.do("GET", path, shop, nil)
			if it := kvItem(t, "get "+key, resp, body); it.Key != key || it.Value == nil {
				t.Errorf("get %q: %+v", key, it)
			}
		}
	})
	t.Run("OKList", func(t *testing.T) {
		want := make(map[string]map[string]string)
		for i := range 40 {
			key := fmt.Sprintf("list%02d", i)
			resp, body := c.do("PUT", "/v1/service/kv/"+key, blog, map[string]any{"value": map[string]any{"i": i}, "ttl": 60})
			kvItem(t, "put", resp, body)
			want[key] = map[string]string{"i": fmt.Sprint(i)}
		}
		for _, limit := range []int{1, 7, 100} {
			if got := kvListAll(t, c, blog, limit); !maps.EqualFunc(got, want, maps.Equal) {
				t.Errorf("limit %d: %d keys, want %d", limit, len(got), len(want))
			}
		}
		resp, body := c.do("GET", "/v1/service/kv?limit=3", blog, nil)
		var page api.KVListResponse
		if json.Unmarshal(body, &page) != nil || resp.StatusCode != 200 || len(page.Items) != 3 || page.Items[0].Value != nil || page.Next == "" {
			t.Errorf("without values: %d %s", resp.StatusCode, body)
		}
	})
	huge := `"` + strings.Repeat("x", functions.MaxKVValue) + `"`
	many := make(map[string]int, functions.MaxKVFields+1)
	for i := range functions.MaxKVFields + 1 {
		many[fmt.Sprint("f", i)] = i
	}
	for _, tc := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"ErrHugeField", "PUT", "/v1/service/kv/k", `{"value":{"a":` + huge + `},"ttl":60}`, 413, "too_large"},
		{"ErrManyFields", "PUT", "/v1/service/kv/k", map[string]any{"value": many, "ttl": 60}, 413, "too_large"},
		{"ErrLongKey", "PUT", "/v1/service/kv/" + strings.Repeat("k", functions.MaxKVKey+1), map[string]any{"value": map[string]any{}, "ttl": 60}, 400, "invalid_argument"},
		{"ErrBadKey", "GET", "/v1/service/kv/a%20b", nil, 400, "invalid_argument"},
		{"ErrUnicodeKey", "GET", "/v1/service/kv/%D0%BA", nil, 400, "invalid_argument"},
		{"ErrSlashKey", "GET", "/v1/service/kv/a%2Fb", nil, 400, "invalid_argument"},
		{"ErrDotKey", "GET", "/v1/service/kv/%2E%2E", nil, 400, "invalid_argument"},
		{"ErrNoTTL", "PUT", "/v1/service/kv/k", map[string]any{"value": map[string]any{}}, 400, "invalid_argument"},
		{"ErrNegativeTTL", "PUT", "/v1/service/kv/k", map[string]any{"value": map[string]any{}, "ttl": -1}, 400, "invalid_argument"},
		{"ErrLongTTL", "PUT", "/v1/service/kv/k", map[string]any{"value": map[string]any{}, "ttl": int64(functions.MaxKVTTL/time.Second) + 1}, 400, "invalid_argument"},
		{"ErrFractionalTTL", "PUT", "/v1/service/kv/k", `{"value":{},"ttl":1.5}`, 400, "invalid_argument"},
		{"ErrNoValue", "PUT", "/v1/service/kv/k", map[string]any{"ttl": 60}, 400, "invalid_argument"},
		{"ErrValueNotObject", "PUT", "/v1/service/kv/k", `{"value":[1],"ttl":60}`, 400, "invalid_argument"},
		{"ErrFormatCharField", "PUT", "/v1/service/kv/k", `{"value":{"a\u202eb":1},"ttl":60}`, 400, "invalid_argument"},
		{"ErrFieldTwice", "PUT", "/v1/service/kv/k", `{"value":{"a":1,"a":2},"ttl":60}`, 400, "invalid_argument"},
		{"ErrNestedTwice", "PUT", "/v1/service/kv/k", `{"value":{"a":{"x":1,"x":2}},"ttl":60}`, 400, "invalid_argument"},
		{"ErrHugeNumber", "PUT", "/v1/service/kv/k", `{"value":{"a":-1e999},"ttl":60}`, 400, "invalid_argument"},
		{"ErrUnknownField", "PUT", "/v1/service/kv/k", `{"value":{},"ttl":60,"x":1}`, 400, "invalid_argument"},
		{"ErrMalformed", "PUT", "/v1/service/kv/k", `{"value":{`, 400, "invalid_argument"},
		{"ErrLongFieldName", "PUT", "/v1/service/kv/k", map[string]any{"value": map[string]any{strings.Repeat("f", functions.MaxKVField+1): 1}, "ttl": 60}, 400, "invalid_argument"},
		{"ErrEmptyPatch", "PATCH", "/v1/service/kv/k", `{}`, 400, "invalid_argument"},
		{"ErrPatchAbsent", "PATCH", "/v1/service/kv/absent", map[string]any{"value": map[string]any{"a": 1}}, 404, "not_found"},
		{"ErrGetAbsent", "GET", "/v1/service/kv/absent", nil, 404, "not_found"},
		{"ErrListLimit", "GET", "/v1/service/kv?limit=0", nil, 400, "invalid_argument"},
		{"ErrListValuesLimit", "GET", "/v1/service/kv?values=true&limit=101", nil, 400, "invalid_argument"},
		{"ErrListValues", "GET", "/v1/service/kv?values=yes", nil, 400, "invalid_argument"},
		{"ErrListCursor", "GET", "/v1/service/kv?after=!!", nil, 400, "invalid_argument"},
		{"ErrListPartitions", "GET", "/v1/service/kv?partitions=AAAA", nil, 400, "invalid_argument"},
		{"ErrNoKeyAuth", "GET", "/v1/service/kv/k", nil, 401, "unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := shop
			if tc.name == "ErrNoKeyAuth" {
				auth = ""
			}
			resp, body := c.do(tc.method, tc.path, auth, tc.body)
			wantError(t, resp, body, tc.status, tc.code)
		})
	}
	t.Run("ErrHugeBody", func(t *testing.T) {
		// Announced, not sent: a client still writing a body the node has refused may see
		// its connection reset before it reads the answer.
		resp, body := rawRequest(t, n.HTTPAddr(), fmt.Sprintf(
			"PUT /v1/service/kv/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d", shop, maxBody+1))
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "too_large")
	})
	t.Run("ErrRefusedWriteStoresNothing", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/service/kv/k", shop, nil)
		wantError(t, resp, body, 404, "not_found")
	})
	t.Run("ErrUserToken", func(t *testing.T) {
		token := signUp(t, c, "kvuser")
		resp, body := c.do("GET", "/v1/service/kv/k", token, nil)
		wantError(t, resp, body, 403, "forbidden")
	})
}

// TestKV_Throttle: the key-value routes count against the app's request limit.
func TestKV_Throttle(t *testing.T) {
	cfg := testConfig(t, "kv-throttle")
	cfg.Now = windowStartClock(loginWindow)
	cfg.ServiceRequestsPerApp = 3
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop := mustCreateApp(t, n, "shop")
	for i := range 3 {
		if resp, body := c.do("PUT", "/v1/service/kv/k", shop, map[string]any{"value": map[string]any{"i": i}, "ttl": 60}); resp.StatusCode != http.StatusOK {
			t.Fatalf("put %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body := c.do("GET", "/v1/service/kv/k", shop, nil)
	wantError(t, resp, body, 429, "rate_limited")
}

// TestKV_Replicas: three nodes of one region with Replicas 1, each key on one node. A key
// written through any node is read through any other with the write's bookmark, served by
// its holder; listing through any node gathers every key from every holder; a delete
// through one node is seen through every other.
func TestKV_Replicas(t *testing.T) {
	nodes, tab := startRegion(t, []string{"kv-a", "kv-b", "kv-c"}, nil)
	holderOf := func(key string) string {
		return tab.Owners(nodes[0].cfg.Region, crdt.KeyHomes(crdt.KVKey("shop", key)).First())[0].Name
	}
	shop := mustCreateApp(t, nodes[0], "shop") // the key carries its app's bookmark: it works everywhere at once
	clients := make([]*testClient, len(nodes))
	for i, n := range nodes {
		clients[i] = newTestClient(t, n)
	}

	want := make(map[string]map[string]string)
	held := make(map[string]int)
	for i := range 30 {
		key := fmt.Sprintf("tok%02d", i)
		w, r := clients[i%3], clients[(i+1)%3]
		resp, body := w.do("PUT", "/v1/service/kv/"+key, shop, map[string]any{"value": map[string]any{"i": i}, "ttl": 600})
		kvItem(t, "put "+key, resp, body)
		if got := resp.Header.Get("X-Served-By"); got != holderOf(key) {
			t.Errorf("put %s via %s served by %s, want its holder %s", key, nodes[i%3].cfg.NodeName, got, holderOf(key))
		}
		resp, body = r.do("GET", "/v1/service/kv/"+key, shop, nil, headerBookmark, resp.Header.Get(headerBookmark))
		if it := kvItem(t, "get "+key, resp, body); it.Value["i"] == nil {
			t.Errorf("get %s: %s", key, body)
		}
		want[key] = map[string]string{"i": fmt.Sprint(i)}
		held[holderOf(key)]++
	}
	if len(held) != 3 {
		t.Fatalf("keys held by %v: want every node to hold some", held)
	}
	for i, c := range clients {
		for _, limit := range []int{4, 100} {
			if got := kvListAll(t, c, shop, limit); !maps.EqualFunc(got, want, maps.Equal) {
				t.Errorf("list via %s, limit %d: %d keys %v, want %d", nodes[i].cfg.NodeName, limit, len(got), slices.Sorted(maps.Keys(got)), len(want))
			}
		}
	}
	// A patch and a delete through one node are seen through the others with the bookmark.
	resp, body := clients[0].do("PATCH", "/v1/service/kv/tok01", shop, map[string]any{"value": map[string]any{"x": true}})
	kvItem(t, "patch", resp, body)
	mark := resp.Header.Get(headerBookmark)
	resp, body = clients[2].do("DELETE", "/v1/service/kv/tok02", shop, nil, headerBookmark, mark)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	mark = resp.Header.Get(headerBookmark)
	for i, c := range clients {
		resp, body := c.do("GET", "/v1/service/kv/tok02", shop, nil, headerBookmark, mark)
		wantError(t, resp, body, 404, "not_found")
		resp, body = c.do("GET", "/v1/service/kv/tok01", shop, nil, headerBookmark, mark)
		if it := kvItem(t, "get tok01 via "+nodes[i].cfg.NodeName, resp, body); string(it.Value["x"]) != "true" {
			t.Errorf("get tok01 via %s: %s", nodes[i].cfg.NodeName, body)
		}
		got := kvListAll(t, c, shop, 7, headerBookmark, mark)
		if _, ok := got["tok02"]; ok || len(got) != len(want)-1 || got["tok01"]["x"] != "true" {
			t.Errorf("list via %s after the delete: %d keys, tok01 %v", nodes[i].cfg.NodeName, len(got), got["tok01"])
		}
	}
}
