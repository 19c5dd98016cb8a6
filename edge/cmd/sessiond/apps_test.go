package main_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestAppsCLI: sessiond apps create, list, rotate and revoke against a running node, with
// the real binary: the key alone on the last line of create's (and rotate's) output works
// on the service routes at once, for the same subjects after a rotation, while the older
// keys work through the grace and not after it, and every key stops working once the app
// is revoked; and the command line's refusals.
func TestAppsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	t.Parallel()
	d := newDaemon(t, "apps-cli", "")
	d.start()
	d.waitReady()
	c := newClient(t, d)
	appKey := regexp.MustCompile(`^sdapp_shop_[0-9a-f]{64}(\.[A-Za-z0-9_-]+)?$`)

	so, se, code := runBin(t, nil, "apps", "create", "shop", "--http", d.http, "--cluster-key-file", d.keyFile)
	if code != 0 || se != "" {
		t.Fatalf("apps create: exit %d, stderr %q, stdout %q", code, se, so)
	}
	lines := strings.Split(strings.TrimRight(so, "\n"), "\n")
	key := lines[len(lines)-1]
	if !appKey.MatchString(key) || strings.Count(so, key) != 1 {
		t.Fatalf("apps create: the last line %q is not the key alone (output %q)", key, so)
	}
	if r := c.do("GET", "/v1/service/app", key, nil); r.status != 200 {
		t.Fatalf("the printed key: %d %s", r.status, r.body)
	}

	t.Run("FlagsBeforeNameAndKeyInEnvironment", func(t *testing.T) {
		env := []string{"SESSIOND_CLUSTER_KEY=" + base64.StdEncoding.EncodeToString(e2eKey)}
		so, se, code := runBin(t, env, "apps", "create", "--http", d.http, "blog")
		if code != 0 {
			t.Fatalf("exit %d: %s%s", code, so, se)
		}
		lines := strings.Split(strings.TrimRight(so, "\n"), "\n")
		if k := lines[len(lines)-1]; !strings.HasPrefix(k, "sdapp_blog_") {
			t.Errorf("last line %q, want blog's key", k)
		}
	})
	t.Run("JSON", func(t *testing.T) {
		so, se, code := runBin(t, nil, "apps", "list", "--json", "--http", d.http, "--cluster-key-file", d.keyFile)
		var out struct {
			Apps []struct {
				Name    string `json:"name"`
				Revoked bool   `json:"revoked"`
			} `json:"apps"`
		}
		if code != 0 || json.Unmarshal([]byte(so), &out) != nil || len(out.Apps) != 2 {
			t.Fatalf("exit %d, stdout %q, stderr %q; want two apps in JSON", code, so, se)
		}
	})
	t.Run("Errors", func(t *testing.T) {
		wrong := filepath.Join(t.TempDir(), "wrong.key")
		if err := os.WriteFile(wrong, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			args []string
			code int
			err  string
		}{
			{"ErrExists", []string{"create", "shop"}, 1, "409 conflict"},
			{"ErrBadName", []string{"create", "Shop!"}, 2, "a-z, 0-9"},
			{"ErrNoName", []string{"create"}, 2, "one NAME"},
			{"ErrTwoNames", []string{"revoke", "shop", "blog"}, 2, "one NAME"},
			{"ErrListArgument", []string{"list", "shop"}, 2, "unexpected argument"},
			{"ErrUnknownCommand", []string{"rename", "shop"}, 2, "unknown command"},
			{"ErrRevokeUnknown", []string{"revoke", "nobody"}, 1, "404 not_found"},
			{"ErrBadFlag", []string{"list", "--nope"}, 2, "nope"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				args := append([]string{"apps"}, tc.args...)
				so, se, code := runBin(t, nil, append(args, "--http", d.http, "--cluster-key-file", d.keyFile)...)
				if code != tc.code || !strings.Contains(se, tc.err) || strings.Contains(so, "sdapp_") {
					t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", tc.args, code, se, so, tc.code, tc.err)
				}
			})
		}
		_, se, code := runBin(t, nil, "apps", "list", "--http", d.http)
		if code != 2 || !strings.Contains(se, "cluster key") {
			t.Errorf("no cluster key: exit %d, stderr %q; want 2", code, se)
		}
		_, se, code = runBin(t, nil, "apps", "list", "--http", d.http, "--cluster-key-file", wrong)
		if code != 1 || !strings.Contains(se, "401 unauthorized") {
			t.Errorf("wrong cluster key: exit %d, stderr %q; want 1 and the node's 401", code, se)
		}
		so, se, code := runBin(t, nil, "apps", "--help")
		if code != 0 || se != "" || !strings.Contains(so, "sessiond apps create NAME") || !strings.Contains(so, "-cluster-key-file") {
			t.Errorf("apps --help: exit %d, stderr %q, stdout %q", code, se, so)
		}
		so, _, _ = runBin(t, nil, "--help")
		if !strings.Contains(so, "sessiond apps") || !strings.Contains(so, "-service-requests-per-app") {
			t.Errorf("sessiond --help does not mention the apps command and the service limits")
		}
	})
	t.Run("Rotate", func(t *testing.T) {
		r := c.do("POST", "/v1/service/sessions", key, map[string]any{"subject": "alice"})
		if r.status != 201 {
			t.Fatalf("a session for alice with the first key: %d %s", r.status, r.body)
		}
		rotate := func(grace string) string {
			t.Helper()
			so, se, code := runBin(t, nil, "apps", "rotate", "shop", "--grace", grace, "--http", d.http, "--cluster-key-file", d.keyFile)
			lines := strings.Split(strings.TrimRight(so, "\n"), "\n")
			k := lines[len(lines)-1]
			if code != 0 || se != "" || !appKey.MatchString(k) || strings.Count(so, k) != 1 || k == key {
				t.Fatalf("apps rotate --grace %s: exit %d, stderr %q, stdout %q; want a new key alone on the last line", grace, code, se, so)
			}
			return k
		}
		second := rotate("1h")
		for name, k := range map[string]string{"first": key, "second": second} {
			if r := c.do("GET", "/v1/service/subjects/alice/sessions", k, nil); r.status != 200 || !strings.Contains(string(r.body), `"subject":"alice"`) {
				t.Errorf("the %s key within the grace: %d %s; want alice's session", name, r.status, r.body)
			}
		}
		so, _, code := runBin(t, nil, "apps", "list", "--http", d.http, "--cluster-key-file", d.keyFile)
		if code != 0 || !regexp.MustCompile(`(?m)^shop\s+\S+\s+[0-9.]+[KMG]?i?B\s+default\s+2\s+active; older key retires \S+$`).MatchString(so) {
			t.Errorf("apps list after a rotation with a grace: exit %d:\n%s", code, so)
		}
		third := rotate("0s")
		for name, k := range map[string]string{"first": key, "second": second} {
			if r := c.do("GET", "/v1/service/app", k, nil); r.status != 401 || !strings.Contains(string(r.body), "rotation") {
				t.Errorf("the %s key after a rotation without grace: %d %s; want 401 naming the rotation", name, r.status, r.body)
			}
		}
		if r := c.do("GET", "/v1/service/subjects/alice/sessions", third, nil); r.status != 200 || !strings.Contains(string(r.body), `"subject":"alice"`) {
			t.Errorf("the newest key: %d %s; want alice's session", r.status, r.body)
		}
		key = third
		for _, tc := range []struct {
			args []string
			code int
			err  string
		}{
			{[]string{"rotate", "shop", "--grace", "-1s"}, 2, "whole seconds"},
			{[]string{"rotate", "shop", "--grace", "721h"}, 2, "whole seconds"},
			{[]string{"rotate", "nobody"}, 1, "404 not_found"},
			{[]string{"rotate"}, 2, "one NAME"},
		} {
			args := append([]string{"apps"}, tc.args...)
			so, se, code := runBin(t, nil, append(args, "--http", d.http, "--cluster-key-file", d.keyFile)...)
			if code != tc.code || !strings.Contains(se, tc.err) || strings.Contains(so, "sdapp_") {
				t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", tc.args, code, se, so, tc.code, tc.err)
			}
		}
	})
	// A leaked key's holder made a session for a subject of its choosing; the documented
	// answer (rotate --grace 0 --end-sessions) must end it, and end-sessions alone ends
	// what was made since.
	t.Run("EndSessionsAfterLeak", func(t *testing.T) {
		so, se, code := runBin(t, nil, "apps", "create", "leaky", "--http", d.http, "--cluster-key-file", d.keyFile)
		if code != 0 {
			t.Fatalf("apps create: exit %d: %s%s", code, so, se)
		}
		lines := strings.Split(strings.TrimRight(so, "\n"), "\n")
		leaked := lines[len(lines)-1]
		session := func(key, subject string) string {
			t.Helper()
			r := c.do("POST", "/v1/service/sessions", key, map[string]any{"subject": subject, "ttl": 31536000})
			var out struct {
				Token string `json:"token"`
			}
			if r.status != 201 || json.Unmarshal(r.body, &out) != nil || out.Token == "" {
				t.Fatalf("a session for %s: %d %s", subject, r.status, r.body)
			}
			return out.Token
		}
		active := func(key, token string) bool {
			t.Helper()
			r := c.do("POST", "/v1/service/introspect", key, map[string]any{"token": token})
			var out struct {
				Active bool `json:"active"`
			}
			if r.status != 200 || json.Unmarshal(r.body, &out) != nil {
				t.Fatalf("introspect: %d %s", r.status, r.body)
			}
			return out.Active
		}
		stolen := session(leaked, "admin@shop.example")
		so, se, code = runBin(t, nil, "apps", "rotate", "leaky", "--grace", "0s", "--end-sessions", "--http", d.http, "--cluster-key-file", d.keyFile)
		lines = strings.Split(strings.TrimRight(so, "\n"), "\n")
		fresh := lines[len(lines)-1]
		if code != 0 || se != "" || !strings.HasPrefix(fresh, "sdapp_leaky_") || !strings.Contains(so, "stops working") {
			t.Fatalf("apps rotate --end-sessions: exit %d, stderr %q, stdout %q", code, se, so)
		}
		if active(fresh, stolen) {
			t.Errorf("the session made with the leaked key is still active after rotate --end-sessions")
		}
		if r := c.do("GET", "/v1/sessions/current", stolen, nil); r.status != 401 {
			t.Errorf("its token on the user routes: %d %s, want 401", r.status, r.body)
		}
		after := session(fresh, "alice")
		if !active(fresh, after) {
			t.Errorf("a session made after the rotation is not active")
		}
		so, se, code = runBin(t, nil, "apps", "end-sessions", "leaky", "--http", d.http, "--cluster-key-file", d.keyFile)
		if code != 0 || se != "" || !strings.Contains(so, `ended the sessions of app "leaky"`) {
			t.Fatalf("apps end-sessions: exit %d, stderr %q, stdout %q", code, se, so)
		}
		if active(fresh, after) {
			t.Errorf("a session is still active after apps end-sessions")
		}
		if !active(fresh, session(fresh, "alice")) {
			t.Errorf("a session made after apps end-sessions is not active")
		}
		for _, tc := range []struct {
			args []string
			code int
			err  string
		}{
			{[]string{"end-sessions", "nobody"}, 1, "404 not_found"},
			{[]string{"revoke", "leaky", "--end-sessions"}, 2, "applies to rotate only"},
			{[]string{"end-sessions", "leaky", "--grace", "0s"}, 2, "applies to rotate only"},
			{[]string{"end-sessions"}, 2, "one NAME"},
		} {
			args := append([]string{"apps"}, tc.args...)
			so, se, code := runBin(t, nil, append(args, "--http", d.http, "--cluster-key-file", d.keyFile)...)
			if code != tc.code || !strings.Contains(se, tc.err) {
				t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", tc.args, code, se, so, tc.code, tc.err)
			}
		}
	})
	t.Run("Quota", func(t *testing.T) {
		for _, tc := range []struct{ value, says, lists string }{
			{"3", "may store 3.0MiB", "3.0MiB"},
			{"default", "--app-quota again", "default"},
			{"none", "may store unbounded", "unbounded"},
		} {
			so, se, code := runBin(t, nil, "apps", "quota", "shop", tc.value, "--http", d.http, "--cluster-key-file", d.keyFile)
			if code != 0 || !strings.Contains(so, tc.says) {
				t.Errorf("apps quota shop %s: exit %d: %s%s; want %q", tc.value, code, so, se, tc.says)
			}
			so, _, code = runBin(t, nil, "apps", "list", "--http", d.http, "--cluster-key-file", d.keyFile)
			if code != 0 || !regexp.MustCompile(`(?m)^shop\s+\S+\s+\S+\s+`+regexp.QuoteMeta(tc.lists)+`\s+\d+\s+active`).MatchString(so) {
				t.Errorf("apps list after quota %s: exit %d:\n%s", tc.value, code, so)
			}
		}
		for _, tc := range []struct {
			args []string
			code int
			err  string
		}{
			{[]string{"quota", "shop", "lots"}, 2, "want MiB"},
			{[]string{"quota", "shop", "1073741825"}, 2, "want MiB"},
			{[]string{"quota", "shop"}, 2, "want NAME and MIB"},
			{[]string{"quota", "Shop", "1"}, 2, "Shop"},
			{[]string{"quota", "nobody", "1"}, 1, "404 not_found"},
		} {
			args := append([]string{"apps"}, tc.args...)
			so, se, code := runBin(t, nil, append(args, "--http", d.http, "--cluster-key-file", d.keyFile)...)
			if code != tc.code || !strings.Contains(se, tc.err) {
				t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", tc.args, code, se, so, tc.code, tc.err)
			}
		}
	})
	t.Run("Revoke", func(t *testing.T) {
		so, se, code := runBin(t, nil, "apps", "revoke", "shop", "--http", d.http, "--cluster-key-file", d.keyFile)
		if code != 0 || !strings.Contains(so, `revoked app "shop"`) {
			t.Fatalf("exit %d: %s%s", code, so, se)
		}
		if r := c.do("GET", "/v1/service/app", key, nil); r.status != 401 {
			t.Errorf("a revoked key: %d %s, want 401", r.status, r.body)
		}
		so, _, code = runBin(t, nil, "apps", "list", "--http", d.http, "--cluster-key-file", d.keyFile)
		if code != 0 || !regexp.MustCompile(`(?m)^blog\s+\S+\s+0B\s+default\s+1\s+active$`).MatchString(so) || !regexp.MustCompile(`(?m)^shop\s+\S+\s+[0-9.]+[KMG]?i?B\s+unbounded\s+1\s+revoked \S+$`).MatchString(so) {
			t.Errorf("apps list after revoke: exit %d:\n%s", code, so)
		}
	})
}

// TestAppQuota: the outside review's disk filler, against the real binary with a 1 MiB
// quota. An app putting 60 KB values under new keys is refused with 403 quota_exceeded
// once it stores about its quota, and so are its other ways to add (new subjects' sessions,
// revocations of subjects nobody has); reads, deletes and shrinking writes still work,
// freeing room works, another app is not held back, and a restarted node counts the
// same usage from its file.
func TestAppQuota(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	t.Parallel()
	d := newDaemon(t, "app-quota", "", "--app-quota", "1", "--service-requests-per-app", "1000000")
	d.start()
	d.waitReady()
	c := newClient(t, d)
	key := func(app string) string {
		so, se, code := runBin(t, nil, "apps", "create", app, "--http", d.http, "--cluster-key-file", d.keyFile)
		lines := strings.Split(strings.TrimRight(so, "\n"), "\n")
		if code != 0 {
			t.Fatalf("apps create %s: exit %d: %s%s", app, code, so, se)
		}
		return lines[len(lines)-1]
	}
	shop, blog := key("shop"), key("blog")
	put := func(k, name string, size int) reply {
		return c.do("PUT", "/v1/service/kv/"+name, k, map[string]any{"value": map[string]any{"v": strings.Repeat("x", size)}, "ttl": 7776000})
	}
	// fill puts values of size under new keys until one is refused, and returns how many
	// were stored.
	fill := func(size int) int {
		t.Helper()
		for i := range 100_000 {
			r := put(shop, fmt.Sprintf("fill%d-%d", size, i), size)
			if r.status == 200 {
				continue
			}
			if r.status != 403 || !strings.Contains(string(r.body), `"quota_exceeded"`) {
				t.Fatalf("after %d puts of %d bytes: %d %s; want 403 quota_exceeded", i, size, r.status, r.body)
			}
			return i
		}
		t.Fatalf("no put of %d bytes was refused", size)
		return 0
	}
	if n := fill(60_000); n < 15 || n > 17 { // 1 MiB holds 17 values of 60,000 bytes and their keys
		t.Errorf("%d values of 60 KB stored under a 1 MiB quota, want 15 to 17", n)
	}
	fill(1000) // what is left, but for less than a small record
	fill(1)

	so, se, code := runBin(t, nil, "apps", "list", "--json", "--http", d.http, "--cluster-key-file", d.keyFile)
	var list struct {
		Apps []struct {
			Name   string `json:"name"`
			Stored struct {
				Records, Bytes int64
			} `json:"stored"`
		} `json:"apps"`
	}
	if code != 0 || json.Unmarshal([]byte(so), &list) != nil || len(list.Apps) != 2 {
		t.Fatalf("apps list --json: exit %d, %q %q", code, so, se)
	}
	if st := list.Apps[1].Stored; list.Apps[1].Name != "shop" || st.Bytes > 1<<20 || st.Bytes < 1<<20-1024 {
		t.Errorf("apps list: %+v; want shop storing within 1 KiB under its 1 MiB quota", list.Apps[1])
	}
	for name, r := range map[string]reply{
		"a new subject's session":       c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "mallory"}),
		"revoking a subject nobody has": c.do("DELETE", "/v1/service/subjects/never-seen/sessions", shop, nil),
	} {
		if r.status != 403 || !strings.Contains(string(r.body), `"quota_exceeded"`) {
			t.Errorf("%s at the quota: %d %s; want 403 quota_exceeded", name, r.status, r.body)
		}
	}
	if r := c.do("GET", "/v1/service/kv/fill60000-0", shop, nil); r.status != 200 {
		t.Errorf("a read at the quota: %d %s", r.status, r.body)
	}
	if r := put(blog, "other", 60_000); r.status != 200 {
		t.Errorf("another app's put: %d %s", r.status, r.body)
	}

	// A restart counts the same usage from the file.
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	d.start()
	d.waitReady()
	c = newClient(t, d)
	if r := put(shop, "after-restart", 1000); r.status != 403 {
		t.Errorf("a new key after a restart at the quota: %d %s; want 403", r.status, r.body)
	}
	// Deleting frees room.
	for i := range 2 {
		if r := c.do("DELETE", fmt.Sprintf("/v1/service/kv/fill60000-%d", i), shop, nil); r.status/100 != 2 {
			t.Fatalf("delete at the quota: %d %s", r.status, r.body)
		}
	}
	if r := put(shop, "after-delete", 60_000); r.status != 200 {
		t.Errorf("a put after deleting two values: %d %s", r.status, r.body)
	}
	// A leaked key's holder fills an app with sessions of big data, for subjects of its
	// choosing: ending the app's sessions gives the room back, as their holders flag
	// them revoked and drop their data; so does revoking a subject.
	leak := key("leak")
	stored := func(app string) int64 {
		t.Helper()
		r := c.do("GET", "/v1/service/app", map[string]string{"shop": shop, "leak": leak}[app], nil)
		var out struct {
			App struct {
				Stored struct{ Bytes int64 } `json:"stored"`
			} `json:"app"`
		}
		if r.status != 200 || json.Unmarshal(r.body, &out) != nil {
			t.Fatalf("GET /v1/service/app: %d %s", r.status, r.body)
		}
		return out.App.Stored.Bytes
	}
	data := map[string]any{}
	for k := range 4 { // 60 KB: values are at most 16 KiB
		data[fmt.Sprint("blob", k)] = strings.Repeat("y", 15_000)
	}
	for i := 0; ; i++ {
		r := c.do("POST", "/v1/service/sessions", leak, map[string]any{"subject": fmt.Sprintf("victim%d", i), "data": data, "ttl": 31536000})
		if r.status == 403 {
			break
		}
		if r.status != 201 || i > 100 {
			t.Fatalf("session %d: %d %s", i, r.status, r.body)
		}
	}
	if got := stored("leak"); got < 1<<20-64<<10 {
		t.Fatalf("leak stores %d bytes when refused, want about 1 MiB", got)
	}
	if so, se, code := runBin(t, nil, "apps", "end-sessions", "leak", "--http", d.http, "--cluster-key-file", d.keyFile); code != 0 {
		t.Fatalf("apps end-sessions: exit %d: %s%s", code, so, se)
	}
	deadline := time.Now().Add(20 * time.Second)
	for stored("leak") > 64<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("leak still stores %d bytes 20 s after its sessions ended", stored("leak"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := c.do("POST", "/v1/service/sessions", leak, map[string]any{"subject": "carol", "data": data}); r.status != 201 {
		t.Fatalf("a session after the end gave the room back: %d %s", r.status, r.body)
	}
	before := stored("leak")
	if r := c.do("DELETE", "/v1/service/subjects/carol/sessions", leak, nil); r.status != 204 {
		t.Fatalf("revoke carol: %d %s", r.status, r.body)
	}
	if after := stored("leak"); after > before-50_000 {
		t.Errorf("revoking a subject with 60 KB of session data: stored %d → %d", before, after)
	}

	// Room for one value of 40 KB (two deleted, one put): of a burst at once, one is
	// stored. (Here the burst's writes rarely share a group commit, which all read the
	// same usage; TestQuotaClaims checks the claims that bound such a batch.)
	var burst atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 64 {
		wg.Go(func() {
			<-start
			if r := put(shop, fmt.Sprintf("burst%d", i), 40_000); r.status == 200 {
				burst.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := burst.Load(); n != 1 {
		t.Errorf("%d of a burst of 64 puts of 40 KB stored where there was room for one", n)
	}
}
