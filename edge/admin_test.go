package edge

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/backup"
	"github.com/sessiond/sessiond/edge/adminauth"
)

func TestAdmin_Backup(t *testing.T) {
	cfg := testConfig(t, "n1")
	cfg.ClusterKeys = [][]byte{testKey, otherKey} // otherKey: an older key, still accepted
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	token := signUp(t, c, "alice")
	const path = "/v1/admin/backup"
	signed := func(key []byte, method, target string, at time.Time) string {
		return adminauth.Sign(key, method, target, nil, at)
	}

	t.Run("OK", func(t *testing.T) {
		resp, body := c.do("GET", path, "", nil, "Authorization", signed(testKey, "GET", path, time.Now()))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		checkHeaders(t, "GET "+path, "n1", true, resp.Header)
		v, err := backup.Verify(bytes.NewReader(body), t.TempDir())
		if err != nil {
			t.Fatalf("the backup served does not verify: %v", err)
		}
		if h := v.Header; h.Node != "n1" || h.Users != 1 || h.Sessions != 1 || h.NodeID != n.db.NodeID().String() {
			t.Errorf("backup header %+v, want node n1 with 1 user and 1 session", h)
		}
	})
	t.Run("OKOlderKey", func(t *testing.T) {
		resp, body := c.do("GET", path, "", nil, "Authorization", signed(otherKey, "GET", path, time.Now()))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	})
	wrongKey := bytes.Repeat([]byte{0x77}, 32)
	replayed := signed(testKey, "GET", path, time.Now())
	c.do("GET", path, "", nil, "Authorization", replayed)
	for _, tc := range []struct {
		name, path, auth, token string
		status                  int
		code                    string
	}{
		{name: "ErrNoAuth", path: path, status: 401, code: "unauthorized"},
		{name: "ErrWrongKey", path: path, auth: signed(wrongKey, "GET", path, time.Now()), status: 401, code: "unauthorized"},
		{name: "ErrStale", path: path, auth: signed(testKey, "GET", path, time.Now().Add(-2*adminauth.Window)), status: 401, code: "unauthorized"},
		{name: "ErrTamperedPath", path: path + "?x=1", auth: signed(testKey, "GET", path, time.Now()), status: 401, code: "unauthorized"},
		{name: "ErrReplayed", path: path, auth: replayed, status: 401, code: "unauthorized"},
		{name: "ErrUserToken", path: path, token: token, status: 403, code: "forbidden"},
		{name: "ErrUnknownRouteUnsigned", path: "/v1/admin/nothing", status: 401, code: "unauthorized"},
		{name: "ErrUnknownRoute", path: "/v1/admin/nothing", auth: signed(testKey, "GET", "/v1/admin/nothing", time.Now()), status: 404, code: "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			resp, body := c.do("GET", tc.path, tc.token, nil, hdr...)
			wantError(t, resp, body, tc.status, tc.code)
			if tc.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), adminauth.Scheme) {
				t.Errorf("WWW-Authenticate = %q, want %s", resp.Header.Get("WWW-Authenticate"), adminauth.Scheme)
			}
		})
	}
}
