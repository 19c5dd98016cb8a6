package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// mustCreateApp creates the app called name on node n and returns its API key's text.
func mustCreateApp(tb testing.TB, n *Node, name string) string {
	tb.Helper()
	_, key, err := n.apps.Create(context.Background(), name)
	if err != nil {
		tb.Fatalf("create app %q: %v", name, err)
	}
	return key.String()
}

func TestService_Auth(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "svc-0"))
	c := newTestClient(t, n)
	key := mustCreateApp(t, n, "shop")
	token := signUp(t, c, "alice")

	t.Run("OK", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/service/app", key, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		checkHeaders(t, "GET /v1/service/app", "svc-0", true, resp.Header)
		var out api.AppResponse
		if err := json.Unmarshal(body, &out); err != nil || out.App.Name != "shop" || out.App.Revoked {
			t.Errorf("body %s (%v), want the app shop", body, err)
		}
		if strings.Contains(string(body), key[len("sdapp_shop_"):][:64]) {
			t.Errorf("the answer shows the key's secret: %s", body)
		}
	})
	t.Run("OKWithoutBookmark", func(t *testing.T) {
		bare, _, _ := strings.Cut(key, ".")
		if resp, body := c.do("GET", "/v1/service/app", bare, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	})
	wrong := []byte(key)
	wrong[len("sdapp_shop_")] ^= 1 // a hex digit changed: another secret
	for _, tc := range []struct {
		name, method, path, auth string
		status                   int
		code                     string
	}{
		{"ErrNoKey", "GET", "/v1/service/app", "", 401, "unauthorized"},
		{"ErrWrongKey", "GET", "/v1/service/app", string(wrong), 401, "unauthorized"},
		{"ErrMalformedKey", "GET", "/v1/service/app", "sdapp_shop_nothex", 401, "unauthorized"},
		{"ErrNotAKey", "GET", "/v1/service/app", "hello", 401, "unauthorized"},
		{"ErrUnknownApp", "GET", "/v1/service/app", strings.Replace(key, "sdapp_shop_", "sdapp_blog_", 1), 401, "unauthorized"},
		{"ErrUserToken", "GET", "/v1/service/app", token, 403, "forbidden"},
		{"ErrKeyOnUserRoute", "GET", "/v1/sessions/current", key, 403, "forbidden"},
		{"ErrKeyOnUserWrite", "DELETE", "/v1/users/me", key, 403, "forbidden"},
		{"ErrKeyOnAdminRoute", "GET", "/v1/admin/backup", key, 403, "forbidden"},
		{"ErrNoRoute", "GET", "/v1/service/nothing", key, 404, "not_found"},
		{"ErrNoRouteUnauthenticated", "GET", "/v1/service/nothing", "", 401, "unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.do(tc.method, tc.path, tc.auth, nil)
			wantError(t, resp, body, tc.status, tc.code)
		})
	}
	t.Run("ErrRevoked", func(t *testing.T) {
		if _, err := n.apps.Revoke(context.Background(), "shop"); err != nil {
			t.Fatal(err)
		}
		resp, body := c.do("GET", "/v1/service/app", key, nil)
		wantError(t, resp, body, 401, "unauthorized")
		if !strings.Contains(string(body), "revoked") {
			t.Errorf("body %s does not say the app was revoked", body)
		}
	})
}

// TestService_Throttle: API keys that fail to authenticate are limited per client
// address, and requests per app; another app is not held back by the first's limit.
func TestService_Throttle(t *testing.T) {
	cfg := testConfig(t, "svc-throttle")
	cfg.Now = windowStartClock(loginWindow)
	cfg.ServiceFailuresPerAddress = 5
	cfg.ServiceRequestsPerApp = 4
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop, blog := mustCreateApp(t, n, "shop"), mustCreateApp(t, n, "blog")

	t.Run("RequestsPerApp", func(t *testing.T) {
		for i := range cfg.ServiceRequestsPerApp {
			if resp, body := c.do("GET", "/v1/service/app", shop, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("request %d: status %d: %s", i+1, resp.StatusCode, body)
			}
		}
		resp, body := c.do("GET", "/v1/service/app", shop, nil)
		wantError(t, resp, body, 429, "rate_limited")
		if resp.Header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After")
		}
		if resp, body := c.do("GET", "/v1/service/app", blog, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("another app: status %d: %s", resp.StatusCode, body)
		}
	})
	t.Run("FailuresPerAddress", func(t *testing.T) {
		for i := range cfg.ServiceFailuresPerAddress {
			resp, body := c.do("GET", "/v1/service/app", "sdapp_shop_"+strings.Repeat("0", 64), nil)
			wantError(t, resp, body, 401, "unauthorized")
			if t.Failed() {
				t.Fatalf("wrong key %d", i+1)
			}
		}
		resp, body := c.do("GET", "/v1/service/app", "sdapp_shop_"+strings.Repeat("0", 64), nil)
		wantError(t, resp, body, 429, "rate_limited")
		if resp.Header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After")
		}
		// Whatever does not authenticate is held back: a session token too, and a
		// well-formed key of an app that does not exist (with a bookmark, which the
		// node would otherwise wait for).
		resp, body = c.do("GET", "/v1/service/app", signUp(t, c, "throttled"), nil)
		wantError(t, resp, body, 429, "rate_limited")
		ghost := strings.Replace(blog, "sdapp_blog_", "sdapp_ghost_", 1)
		resp, body = c.do("GET", "/v1/service/app", ghost, nil)
		wantError(t, resp, body, 429, "rate_limited")
		// An app sharing the address (a NAT) is not locked out by another's failures:
		// its key authenticates.
		resp, body = c.do("GET", "/v1/service/app", blog, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("a valid key from the throttled address: status %d: %s", resp.StatusCode, body)
		}
	})
}

// TestService_FreshKeyElsewhere: a key whose app record has not reached a node yet is
// not refused there: the node meets the bookmark the key carries (here by fetching the
// record from the node that created it) and then accepts it.
func TestService_FreshKeyElsewhere(t *testing.T) {
	a := MustStartNode(t, testConfig(t, "svc-a"))
	cfgB := testConfig(t, "svc-b")
	cfgB.Join = []string{a.membership.Addr()}
	cfgB.BookmarkTimeout = 10 * time.Second
	b := MustStartNode(t, cfgB)
	waitFor(t, 10*time.Second, "two members", func() bool { return a.replicator.Peers() == 1 && b.replicator.Peers() == 1 })

	for i := range 20 {
		name := "app-" + string(rune('a'+i))
		key := mustCreateApp(t, a, name)
		k, err := functions.ParseAPIKey(key)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := newTestClient(t, b).do("GET", "/v1/service/app", key, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s on the other node at once: status %d: %s (it held the record: %v)", name, resp.StatusCode, body, b.replicator.Covers(k.Bookmark, 0))
		}
	}
}

// afterAppRead is a functions.AppStore whose first Record call runs then once, after the
// read and before returning it.
type afterAppRead struct {
	functions.AppStore
	once sync.Once
	then func()
}

func (s *afterAppRead) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	m, ok, err := s.AppStore.Record(ctx, key)
	s.once.Do(s.then)
	return m, ok, err
}

// TestService_KeyArrivesAfterTheRead: a key made on another node a moment ago, whose
// app's record is pushed here while the request reads it (not found). Not a 401: the
// node meets the bookmark of the app's creation, which the key carries, and looks again.
func TestService_KeyArrivesAfterTheRead(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "svc-arrives"))
	ctx := context.Background()
	const origin = crdt.NodeID(0x0123456789abcdef)
	created := crdt.Timestamp{Wall: n.cfg.Now().UnixNano(), Node: origin}
	key := functions.APIKey{App: "shop"}
	key.Secret[0] = 7
	key.Bookmark.Add(created)
	// The origin is a member (a failed one here): only members' pushes vouch.
	n.replicator.SetMembership(nil, []cluster.Peer{{ID: origin, Name: "origin"}})
	rep, err := n.replicator.HandlePush(ctx, cluster.PushRequest{From: origin})
	if err != nil {
		t.Fatal(err)
	}
	push := cluster.PushRequest{
		From:    origin,
		Changes: []storage.Change{{Key: crdt.AppKey("shop"), Map: crdt.NewApp(key.KeyHash(), created)}},
		Through: created,
		Era:     rep.Era,
	}
	hook := &afterAppRead{AppStore: n.apps.Store, then: func() {
		if _, err := n.replicator.HandlePush(ctx, push); err != nil {
			t.Errorf("push: %v", err)
		}
	}}
	n.apps.Store = hook // app.Test's goroutine starts after this assignment

	req := httptest.NewRequest("GET", "/v1/service/app", nil)
	req.Header.Set("Authorization", "Bearer "+key.String())
	resp, err := n.app.Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ran := false
	hook.once.Do(func() { ran = true })
	if ran {
		t.Fatal("the request never read the app's record")
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"shop"`) {
		t.Fatalf("fresh key whose app arrived while it was read: status %d: %s; want 200", resp.StatusCode, body)
	}

	// Without the bookmark, the same key is refused until the record is here: the
	// bookmark is what makes a fresh key work at once.
	bare := key
	bare.App, bare.Bookmark = "blog", crdt.Bookmark{}
	req = httptest.NewRequest("GET", "/v1/service/app", nil)
	req.Header.Set("Authorization", "Bearer "+bare.String())
	if resp, err = n.app.Test(req, -1); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unknown app without a bookmark: %v, %v; want 401", resp.StatusCode, err)
	}
	resp.Body.Close()
}

func TestAdmin_Apps(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "apps-0"))
	c := newTestClient(t, n)
	token := signUp(t, c, "alice")

	resp, body := adminDo(c, testKey, "POST", "/v1/admin/apps", []byte(`{"name":"shop"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: status %d: %s", resp.StatusCode, body)
	}
	var created api.CreateAppResponse
	if err := json.Unmarshal(body, &created); err != nil || created.App.Name != "shop" || !functions.IsAPIKey(created.Key) {
		t.Fatalf("create: body %s (%v)", body, err)
	}
	if resp, body := c.do("GET", "/v1/service/app", created.Key, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the new key: status %d: %s", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"ErrExists", "POST", "/v1/admin/apps", `{"name":"shop"}`, 409, "conflict"},
		{"ErrBadName", "POST", "/v1/admin/apps", `{"name":"Shop Inc"}`, 400, "invalid_argument"},
		{"ErrHugeName", "POST", "/v1/admin/apps", `{"name":"` + strings.Repeat("a", 100000) + `"}`, 400, "invalid_argument"},
		{"ErrNoName", "POST", "/v1/admin/apps", `{}`, 400, "invalid_argument"},
		{"ErrBadJSON", "POST", "/v1/admin/apps", `{"name":`, 400, "invalid_argument"},
		{"ErrUnknownField", "POST", "/v1/admin/apps", `{"name":"x1","admin":true}`, 400, "invalid_argument"},
		{"ErrRevokeUnknown", "DELETE", "/v1/admin/apps/nobody", "", 404, "not_found"},
		{"ErrRevokeBadName", "DELETE", "/v1/admin/apps/No%20Body", "", 400, "invalid_argument"},
		{"ErrRotateUnknown", "POST", "/v1/admin/apps/nobody/rotate", `{"grace_seconds":0}`, 404, "not_found"},
		{"ErrRotateNegativeGrace", "POST", "/v1/admin/apps/shop/rotate", `{"grace_seconds":-1}`, 400, "invalid_argument"},
		{"ErrRotateHugeGrace", "POST", "/v1/admin/apps/shop/rotate", `{"grace_seconds":9223372036854775807}`, 400, "invalid_argument"},
		{"ErrRotateGraceNotANumber", "POST", "/v1/admin/apps/shop/rotate", `{"grace_seconds":"1h"}`, 400, "invalid_argument"},
		{"ErrRotateUnknownField", "POST", "/v1/admin/apps/shop/rotate", `{"grace":3600}`, 400, "invalid_argument"},
		{"ErrQuotaUnknown", "PUT", "/v1/admin/apps/nobody/quota", `{"quota_mib":1}`, 404, "not_found"},
		{"ErrQuotaHuge", "PUT", "/v1/admin/apps/shop/quota", `{"quota_mib":1073741825}`, 400, "invalid_argument"},
		{"ErrQuotaOverflow", "PUT", "/v1/admin/apps/shop/quota", `{"quota_mib":1e30}`, 400, "invalid_argument"},
		{"ErrQuotaNotANumber", "PUT", "/v1/admin/apps/shop/quota", `{"quota_mib":"1G"}`, 400, "invalid_argument"},
		{"ErrQuotaNoBody", "PUT", "/v1/admin/apps/shop/quota", ``, 415, "unsupported_media_type"},
		{"ErrQuotaEmptyJSON", "PUT", "/v1/admin/apps/shop/quota", `not json`, 400, "invalid_argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b []byte
			if tc.body != "" {
				b = []byte(tc.body)
			}
			resp, body := adminDo(c, testKey, tc.method, tc.path, b)
			wantError(t, resp, body, tc.status, tc.code)
		})
	}
	t.Run("ErrNotSigned", func(t *testing.T) {
		resp, body := c.do("POST", "/v1/admin/apps", "", map[string]string{"name": "blog"})
		wantError(t, resp, body, 401, "unauthorized")
		resp, body = c.do("POST", "/v1/admin/apps", token, map[string]string{"name": "blog"})
		wantError(t, resp, body, 403, "forbidden")
		resp, body = c.do("GET", "/v1/admin/apps", created.Key, nil)
		wantError(t, resp, body, 403, "forbidden")
	})
	t.Run("ErrBodyAltered", func(t *testing.T) {
		auth := adminauth.Sign(testKey, c.node, "POST", "/v1/admin/apps", []byte(`{"name":"blog"}`), time.Now())
		resp, body := c.do("POST", "/v1/admin/apps", "", []byte(`{"name":"evil"}`), "Authorization", auth)
		wantError(t, resp, body, 401, "unauthorized")
	})
	t.Run("ErrWrongClusterKey", func(t *testing.T) {
		resp, body := adminDo(c, otherKey, "GET", "/v1/admin/apps", nil)
		wantError(t, resp, body, 401, "unauthorized")
	})

	if resp, body := adminDo(c, testKey, "POST", "/v1/admin/apps", []byte(`{"name":"blog"}`)); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create blog: status %d: %s", resp.StatusCode, body)
	}
	resp, body = adminDo(c, testKey, "DELETE", "/v1/admin/apps/shop", nil)
	var revoked api.AppResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &revoked) != nil || !revoked.App.Revoked || revoked.App.RevokedAt == nil {
		t.Fatalf("revoke: status %d: %s", resp.StatusCode, body)
	}
	resp, body = c.do("GET", "/v1/service/app", created.Key, nil)
	wantError(t, resp, body, 401, "unauthorized")

	resp, body = adminDo(c, testKey, "GET", "/v1/admin/apps", nil)
	var list api.AppsResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil {
		t.Fatalf("list: status %d: %s", resp.StatusCode, body)
	}
	if len(list.Apps) != 2 || list.Apps[0].Name != "blog" || list.Apps[0].Revoked || list.Apps[1].Name != "shop" || !list.Apps[1].Revoked {
		t.Errorf("list = %+v, want blog, then shop revoked", list.Apps)
	}
	if strings.Contains(string(body), created.Key[len("sdapp_shop_"):][:64]) {
		t.Errorf("the list shows a key's secret")
	}
}

// createSubjectSession creates a session of subject through the service API with key and
// returns the answer.
func createSubjectSession(t *testing.T, c *testClient, key, subject string, data map[string]any) api.ServiceSessionResponse {
	t.Helper()
	resp, body := c.do("POST", "/v1/service/sessions", key, map[string]any{"subject": subject, "data": data})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create a session of %q: status %d: %s", subject, resp.StatusCode, body)
	}
	var out api.ServiceSessionResponse
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
		t.Fatalf("create a session of %q: body %s: %v", subject, body, err)
	}
	if resp.Header.Get(headerBookmark) == "" {
		t.Errorf("create: no %s", headerBookmark)
	}
	return out
}

func TestService_Sessions(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "svc-sessions"))
	c := newTestClient(t, n)
	shop, blog := mustCreateApp(t, n, "shop"), mustCreateApp(t, n, "blog")
	userToken := signUp(t, c, "alice")
	const subject = "auth0|alice/1 é" // a '/' and non-ASCII: escaped in paths
	path := "/v1/service/subjects/" + url.PathEscape(subject) + "/sessions"

	created := createSubjectSession(t, c, shop, subject, map[string]any{"cart": []int{1, 2}})
	s := created.Session
	if s.Subject != subject || s.Username != "" || string(s.Data["cart"]) != "[1,2]" || s.Node != "svc-sessions" || s.Device != "" || s.ClientAddress != "" {
		t.Errorf("created session %+v", s)
	}
	sid := "/v1/service/sessions/" + s.ID

	t.Run("TokenOnUserRoutes", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/sessions/current", created.Token, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"subject":"auth0|alice/1 é"`) {
			t.Fatalf("GET current with the subject's token: %d %s", resp.StatusCode, body)
		}
		// The session's data is the app's: the subject's own token cannot write it
		// (outside review: a browser rewrote the role its app's backend had stored)…
		resp, body = c.do("PATCH", "/v1/sessions/current", created.Token, map[string]any{"data": map[string]any{"role": "admin"}})
		wantError(t, resp, body, 403, "forbidden")
		resp, body = c.do("GET", sid, shop, nil)
		if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "admin") {
			t.Errorf("the app reads its session after the subject's refused patch: %d %s", resp.StatusCode, body)
		}
		// … unless the app lets it, when it creates the session.
		resp, body = c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "bob", "subject_writes": true})
		var writable api.ServiceSessionResponse
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &writable) != nil {
			t.Fatalf("create a session with subject_writes: %d %s", resp.StatusCode, body)
		}
		resp, body = c.do("PATCH", "/v1/sessions/current", writable.Token, map[string]any{"data": map[string]any{"theme": "dark"}})
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"theme":"dark"`) {
			t.Fatalf("PATCH current with the token of a session with subject_writes: %d %s", resp.StatusCode, body)
		}
		for _, r := range [][2]string{{"GET", "/v1/users/me"}, {"DELETE", "/v1/users/me"}, {"GET", "/v1/conversations"}, {"GET", "/v1/cluster"}, {"GET", "/v1/users/me/export"}} {
			resp, body := c.do(r[0], r[1], created.Token, nil)
			wantError(t, resp, body, 403, "forbidden")
		}
		resp, body = c.do("POST", "/v1/messages", created.Token, map[string]any{"to": "alice", "body": "hi"})
		wantError(t, resp, body, 403, "forbidden")
	})
	t.Run("Read", func(t *testing.T) {
		resp, body := c.do("GET", sid, shop, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"cart":[1,2]`) {
			t.Fatalf("GET %s: %d %s", sid, resp.StatusCode, body)
		}
		if resp.Header.Get(headerBookmark) == "" {
			t.Errorf("a read of the app's own session shows no bookmark")
		}
	})
	t.Run("Patch", func(t *testing.T) {
		resp, body := c.do("PATCH", sid, shop, map[string]any{"data": map[string]any{"theme": nil, "n": 3}})
		var out api.SessionResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || string(out.Session.Data["n"]) != "3" || out.Session.Data["theme"] != nil {
			t.Fatalf("PATCH %s: %d %s", sid, resp.StatusCode, body)
		}
	})
	t.Run("Introspect", func(t *testing.T) {
		resp, body := c.do("POST", "/v1/service/introspect", shop, map[string]string{"token": created.Token})
		var out api.IntrospectResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || !out.Active || out.Session == nil || out.Session.ID != s.ID ||
			out.User == nil || out.User.Subject != subject || out.User.ID != s.UserID {
			t.Fatalf("introspect: %d %s", resp.StatusCode, body)
		}
		for _, tc := range []struct{ name, key, token string }{
			{"AnotherAppsToken", blog, created.Token},
			{"AUsersToken", shop, userToken},
			{"Garbage", shop, "not a token"},
			{"Empty", shop, ""},
			{"Huge", shop, strings.Repeat("a", 100000)},
			{"AnAPIKey", shop, shop},
		} {
			resp, body := c.do("POST", "/v1/service/introspect", tc.key, map[string]string{"token": tc.token})
			if resp.StatusCode != http.StatusOK || string(body) != `{"active":false}` {
				t.Errorf("%s: %d %s, want 200 {\"active\":false}", tc.name, resp.StatusCode, body)
			}
		}
	})
	t.Run("List", func(t *testing.T) {
		second := createSubjectSession(t, c, shop, subject, nil)
		resp, body := c.do("GET", path, shop, nil)
		var out api.SessionsResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || len(out.Sessions) != 2 || out.Sessions[0].ID != second.Session.ID {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		resp, body = c.do("GET", path, blog, nil)
		if resp.StatusCode != http.StatusOK || string(body) != `{"sessions":[]}` {
			t.Errorf("another app's subject of the same name: %d %s, want none", resp.StatusCode, body)
		}
	})
	t.Run("Scope", func(t *testing.T) {
		for _, r := range []struct {
			method string
			body   any
		}{{"GET", nil}, {"PATCH", map[string]any{"data": map[string]any{"x": 1}}}, {"DELETE", nil}} {
			resp, body := c.do(r.method, sid, blog, r.body)
			wantError(t, resp, body, 404, "not_found")
		}
		// A registered user's session, by its id.
		resp, body := c.do("GET", "/v1/sessions/current", userToken, nil)
		var mine api.SessionResponse
		if json.Unmarshal(body, &mine) != nil || mine.Session.ID == "" {
			t.Fatalf("alice's session: %d %s", resp.StatusCode, body)
		}
		resp, body = c.do("DELETE", "/v1/service/sessions/"+mine.Session.ID, shop, nil)
		wantError(t, resp, body, 404, "not_found")
		if resp, body := c.do("GET", "/v1/sessions/current", userToken, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("alice's session after an app tried to revoke it: %d %s", resp.StatusCode, body)
		}
		if resp, _ := c.do("GET", sid, shop, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("shop's session after blog's attempts: %d", resp.StatusCode)
		}
	})
	t.Run("Hostile", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path string
			body               any
			status             int
			code               string
		}{
			{"ErrHugeSubject", "POST", "/v1/service/sessions", map[string]any{"subject": strings.Repeat("x", 300000)}, 400, "invalid_argument"},
			{"ErrNoSubject", "POST", "/v1/service/sessions", map[string]any{}, 400, "invalid_argument"},
			{"ErrControlSubject", "POST", "/v1/service/sessions", map[string]any{"subject": "a\u0000b"}, 400, "invalid_argument"},
			{"ErrBadJSON", "POST", "/v1/service/sessions", `{"subject":`, 400, "invalid_argument"},
			{"ErrNotAnObject", "POST", "/v1/service/sessions", `[1]`, 400, "invalid_argument"},
			{"ErrUnknownField", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "user_id": "u"}, 400, "invalid_argument"},
			{"ErrNegativeTTL", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "ttl": -1}, 400, "invalid_argument"},
			{"ErrHugeTTL", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "ttl": int64(1) << 62}, 400, "invalid_argument"},
			{"ErrFractionalTTL", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "ttl": 1.5}, 400, "invalid_argument"},
			{"ErrIdleOverTTL", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "ttl": 3600, "idle_ttl": 7200}, 400, "invalid_argument"},
			{"ErrNullData", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "data": map[string]any{"k": nil}}, 400, "invalid_argument"},
			{"ErrBigData", "POST", "/v1/service/sessions", map[string]any{"subject": "x", "data": map[string]any{"k": strings.Repeat("x", 20000)}}, 413, "too_large"},
			{"ErrPatchNoData", "PATCH", sid, map[string]any{}, 400, "invalid_argument"},
			{"ErrBadID", "GET", "/v1/service/sessions/nothex", nil, 404, "not_found"},
			{"ErrLongID", "GET", "/v1/service/sessions/" + strings.Repeat("a", 3000), nil, 404, "not_found"},
			{"ErrUnknownID", "GET", "/v1/service/sessions/" + strings.Repeat("0", 32), nil, 404, "not_found"},
			{"ErrLongSubjectInPath", "GET", "/v1/service/subjects/" + strings.Repeat("x", 300) + "/sessions", nil, 400, "invalid_argument"},
			{"ErrControlInPath", "DELETE", "/v1/service/subjects/a%0Ab/sessions", nil, 400, "invalid_argument"},
			{"ErrIntrospectBadJSON", "POST", "/v1/service/introspect", `{"token":1}`, 400, "invalid_argument"},
			{"ErrMethod", "PUT", sid, nil, 404, "not_found"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, body := c.do(tc.method, tc.path, shop, tc.body)
				wantError(t, resp, body, tc.status, tc.code)
			})
		}
	})
	t.Run("ErrBadEscape", func(t *testing.T) {
		resp, body := rawRequest(t, n.HTTPAddr(), "GET /v1/service/subjects/%zz/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+shop)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "invalid_argument") {
			t.Errorf("a subject badly escaped: %d %s, want 400", resp.StatusCode, body)
		}
	})
	t.Run("Revoke", func(t *testing.T) {
		resp, body := c.do("DELETE", sid, shop, nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE %s: %d %s", sid, resp.StatusCode, body)
		}
		resp, body = c.do("GET", "/v1/sessions/current", created.Token, nil)
		wantError(t, resp, body, 401, "unauthorized")
		resp, body = c.do("POST", "/v1/service/introspect", shop, map[string]string{"token": created.Token})
		if string(body) != `{"active":false}` {
			t.Errorf("introspect a revoked session's token: %d %s", resp.StatusCode, body)
		}
		other := createSubjectSession(t, c, shop, subject, nil)
		if resp, body = c.do("DELETE", path, shop, nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE %s: %d %s", path, resp.StatusCode, body)
		}
		resp, body = c.do("GET", "/v1/sessions/current", other.Token, nil)
		wantError(t, resp, body, 401, "unauthorized")
		if resp, body = c.do("GET", path, shop, nil); string(body) != `{"sessions":[]}` {
			t.Errorf("the subject's sessions after revoking them all: %d %s", resp.StatusCode, body)
		}
	})
}

// TestService_AppQuota: an operator gives one app its own quota in place of the nodes'
// --app-quota — lower (0: it may add nothing), none, or back to the nodes' — and only
// that app's writes that add are judged by it.
func TestService_AppQuota(t *testing.T) {
	cfg := testConfig(t, "app-quota-0")
	cfg.AppQuotaMiB = 1
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop, blog := mustCreateApp(t, n, "shop"), mustCreateApp(t, n, "blog")
	value := strings.Repeat("x", 60_000)
	put := func(key, app, name string) int {
		t.Helper()
		resp, body := c.do("PUT", "/v1/service/kv/"+name, key, map[string]any{"value": map[string]string{"v": value}, "ttl": 3600})
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("put %s of %s: %d %s", name, app, resp.StatusCode, body)
		}
		return resp.StatusCode
	}
	setQuota := func(body string) api.App {
		t.Helper()
		resp, b := adminDo(c, testKey, "PUT", "/v1/admin/apps/shop/quota", []byte(body))
		var out api.AppResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
			t.Fatalf("set quota %s: %d %s", body, resp.StatusCode, b)
		}
		return out.App
	}
	if a := setQuota(`{"quota_mib":0}`); a.QuotaMiB == nil || *a.QuotaMiB != 0 {
		t.Errorf("quota_mib %v after setting 0", a.QuotaMiB)
	}
	if st := put(shop, "shop", "a"); st != http.StatusForbidden {
		t.Errorf("a put of shop with its own quota of 0: %d, want 403", st)
	}
	if st := put(blog, "blog", "a"); st == http.StatusForbidden {
		t.Errorf("blog, under the nodes' quota, was refused")
	}
	// None: past the nodes' 1 MiB.
	if a := setQuota(`{"quota_mib":-5}`); a.QuotaMiB == nil || *a.QuotaMiB != -1 {
		t.Errorf("quota_mib %v after setting none, want -1", a.QuotaMiB)
	}
	for i := range 20 {
		if st := put(shop, "shop", fmt.Sprint("k", i)); st == http.StatusForbidden {
			t.Fatalf("put %d of shop (%d KB) with no quota of its own refused", i, (i+1)*60)
		}
	}
	for i := range 20 {
		if put(blog, "blog", fmt.Sprint("k", i)) == http.StatusForbidden {
			break
		}
		if i == 19 {
			t.Errorf("blog stored 1.2 MB past the nodes' quota of 1 MiB")
		}
	}
	// Back to the nodes' own: shop is over it now.
	if a := setQuota(`{"quota_mib":null}`); a.QuotaMiB != nil {
		t.Errorf("quota_mib %v after clearing it", *a.QuotaMiB)
	}
	if st := put(shop, "shop", "more"); st != http.StatusForbidden {
		t.Errorf("a put of shop over the nodes' quota again: %d, want 403", st)
	}
	resp, body := adminDo(c, testKey, "GET", "/v1/admin/apps", nil)
	var list api.AppsResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Apps) != 2 {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	for _, a := range list.Apps {
		if a.QuotaMiB != nil {
			t.Errorf("%s lists its own quota %d", a.Name, *a.QuotaMiB)
		}
	}
}

// TestConfig_AppQuota: an --app-quota past what the shift to bytes holds is refused, not
// wrapped round to a small bound or to none (found by an outside review).
func TestConfig_AppQuota(t *testing.T) {
	for _, tc := range []struct {
		mib int
		ok  bool
	}{{-1, true}, {0, true}, {functions.MaxAppQuotaMiB, true}, {functions.MaxAppQuotaMiB + 1, false}, {1<<44 + 1, false}} {
		cfg := DefaultConfig()
		cfg.AppQuotaMiB = tc.mib
		if err := cfg.Validate(); (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "AppQuotaMiB")) {
			t.Errorf("AppQuotaMiB %d: Validate() = %v, want ok %v", tc.mib, err, tc.ok)
		}
	}
}

// TestService_SubjectRecordExpires: a subject's record goes, on the node's own sweep, a
// year after its latest session (the longest such a session may live), and with it the
// app's last share of the quota; the subject gets a new one with its next session.
func TestService_SubjectRecordExpires(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "subject-keep-0")
	cfg.Now = clock.Now
	cfg.SweepEvery = 10 * time.Millisecond
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop := mustCreateApp(t, n, "shop")
	ctx := context.Background()
	key := crdt.UserKey(crdt.SubjectID("shop", "alice@example.com"))
	create := func() {
		t.Helper()
		resp, body := c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "alice@example.com", "ttl": 3600})
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("create a session: %d %s", resp.StatusCode, body)
		}
	}
	stored := func() bool {
		_, ok, err := n.db.Record(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	create()
	clock.Add(6 * 30 * 24 * time.Hour)
	create() // half a year on: kept a year from now
	clock.Add(functions.MaxServiceTTL - 3*30*24*time.Hour)
	if _, err := n.db.Sweep(ctx, clock.Now()); err != nil { // as the node's own sweep does
		t.Fatal(err)
	}
	if !stored() {
		t.Fatalf("the subject's record went within a year of its latest session")
	}
	clock.Add(3*30*24*time.Hour + 2*cfg.MaxSkew)
	waitFor(t, 10*time.Second, "the subject's record to be swept", func() bool { return !stored() })
	if u := n.db.AppUsage("shop"); u != (storage.AppUsage{}) {
		t.Errorf("shop stores %+v once its subject and sessions are gone, want nothing", u)
	}
	create()
	if !stored() {
		t.Errorf("the subject's next session made no record")
	}
}

// TestService_ThreeNodes: three nodes of one region with Replicas 1. An app created
// through one node authenticates on every node at once (its record is held by all); each
// subject's records live on one node, and its sessions are served through any node —
// created, read with the bookmark of the creation, patched, introspected, listed, used
// with their tokens — by the node that holds them. A revocation of the app reaches every
// node.
func TestService_ThreeNodes(t *testing.T) {
	nodes, tab := startRegion(t, []string{"svc3-a", "svc3-b", "svc3-c"}, nil)
	holderOf := func(subject string) string {
		return tab.Owners(nodes[0].cfg.Region, crdt.IDPartition(crdt.SubjectID("shop", subject)))[0].Name
	}
	clients := make([]*testClient, len(nodes))
	for i, n := range nodes {
		clients[i] = newTestClient(t, n)
	}

	// The app, created through the admin route of the first node, works on every node at
	// once: no wait, no retry.
	resp, body := adminDo(clients[0], testKey, "POST", "/v1/admin/apps", []byte(`{"name":"shop"}`))
	var app api.CreateAppResponse
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &app) != nil {
		t.Fatalf("create the app: %d %s", resp.StatusCode, body)
	}
	key := app.Key
	for _, c := range clients {
		if resp, body := c.do("GET", "/v1/service/app", key, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("the new key on %s: %d %s", c.base, resp.StatusCode, body)
		}
	}

	// A subject held by each node, each created through a node that does not hold it.
	subjects := map[string]string{} // holder → subject
	for i := 0; len(subjects) < len(nodes) && i < 1000; i++ {
		s := fmt.Sprintf("user-%d@example.com", i)
		if _, ok := subjects[holderOf(s)]; !ok {
			subjects[holderOf(s)] = s
		}
	}
	for holder, subject := range subjects {
		via := slices.IndexFunc(nodes, func(n *Node) bool { return n.cfg.NodeName != holder })
		c := clients[via]
		resp, body := c.do("POST", "/v1/service/sessions", key, map[string]any{"subject": subject, "data": map[string]any{"cart": 1}})
		var created api.ServiceSessionResponse
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &created) != nil {
			t.Fatalf("create a session of %s via %s: %d %s", subject, nodes[via].cfg.NodeName, resp.StatusCode, body)
		}
		if by, fwd := resp.Header.Get("X-Served-By"), resp.Header.Get(headerForwardedBy); by != holder || fwd != nodes[via].cfg.NodeName {
			t.Errorf("create of %s via %s: served by %q, forwarded by %q; want its holder %s", subject, nodes[via].cfg.NodeName, by, fwd, holder)
		}
		if created.Session.Node != holder {
			t.Errorf("session of %s records node %q, want its holder %s", subject, created.Session.Node, holder)
		}
		bm := resp.Header.Get(headerBookmark)
		sid := "/v1/service/sessions/" + created.Session.ID
		path := "/v1/service/subjects/" + url.PathEscape(subject) + "/sessions"
		for i, c := range clients {
			name := nodes[i].cfg.NodeName
			resp, body := c.do("GET", sid, key, nil, headerBookmark, bm)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"cart":1`) {
				t.Errorf("read %s via %s: %d %s", subject, name, resp.StatusCode, body)
			}
			if by := resp.Header.Get("X-Served-By"); by != holder {
				t.Errorf("read %s via %s served by %s, want %s", subject, name, by, holder)
			}
			if resp, body := c.do("PATCH", sid, key, map[string]any{"data": map[string]any{"via": name}}, headerBookmark, bm); resp.StatusCode != http.StatusOK {
				t.Errorf("patch %s via %s: %d %s", subject, name, resp.StatusCode, body)
			} else {
				bm = resp.Header.Get(headerBookmark)
			}
			resp, body = c.do("GET", "/v1/sessions/current", created.Token, nil)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"via":"`+name+`"`) {
				t.Errorf("the token of %s via %s: %d %s; want the patch made through it", subject, name, resp.StatusCode, body)
			}
			resp, body = c.do("POST", "/v1/service/introspect", key, map[string]string{"token": created.Token})
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), `{"active":true`) {
				t.Errorf("introspect %s via %s: %d %s", subject, name, resp.StatusCode, body)
			}
			resp, body = c.do("GET", path, key, nil, headerBookmark, bm)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), created.Session.ID) {
				t.Errorf("list %s via %s: %d %s", subject, name, resp.StatusCode, body)
			}
		}
		// Revoking the subject's sessions through any node ends the token on every one.
		resp, body = clients[(via+1)%len(clients)].do("DELETE", path, key, nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("revoke %s: %d %s", subject, resp.StatusCode, body)
		}
		for i, c := range clients {
			resp, body := c.do("GET", "/v1/sessions/current", created.Token, nil)
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
			if t.Failed() {
				t.Fatalf("the revoked token of %s via %s", subject, nodes[i].cfg.NodeName)
			}
		}
	}

	// Revoked through the last node: the key stops working everywhere as the revocation
	// replicates.
	if resp, body := adminDo(clients[2], testKey, "DELETE", "/v1/admin/apps/shop", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke the app: %d %s", resp.StatusCode, body)
	}
	for i, c := range clients {
		waitFor(t, 10*time.Second, "the revocation on "+nodes[i].cfg.NodeName, func() bool {
			resp, _ := c.do("GET", "/v1/service/app", key, nil)
			return resp.StatusCode == http.StatusUnauthorized
		})
	}
}
