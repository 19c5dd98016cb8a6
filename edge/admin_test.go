package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/backup"
	"github.com/sessiond/sessiond/storage"
)

func TestAdmin_Backup(t *testing.T) {
	cfg := testConfig(t, "n1")
	cfg.ClusterKeys = [][]byte{testKey, otherKey} // otherKey: an older key, still accepted
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	token := signUp(t, c, "alice")
	const path = "/v1/admin/backup"
	signed := func(key []byte, method, target string, at time.Time) string {
		return adminauth.Sign(key, c.node, method, target, nil, at)
	}

	t.Run("OK", func(t *testing.T) {
		resp, body := c.do("GET", path, "", nil, "Authorization", signed(testKey, "GET", path, time.Now()))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		checkHeaders(t, "GET "+path, "n1", true, resp.Header)
		v, err := backup.Verify(bytes.NewReader(body), t.TempDir(), backup.Trust{Seals: [][]byte{backup.SealKey(testKey)}})
		if err != nil || !v.Sealed {
			t.Fatalf("the backup served does not verify sealed with the node's cluster key: %v", err)
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
		// Sealed with the node's first key, whichever key signed the request.
		if _, err := backup.Verify(bytes.NewReader(body), t.TempDir(), backup.Trust{Seals: [][]byte{backup.SealKey(otherKey)}}); !errors.Is(err, backup.ErrUnsealed) {
			t.Errorf("verified with the older key's seal: %v, want %v", err, backup.ErrUnsealed)
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

// TestAdmin_BackupStalledClient: a backup whose client stops reading holds a read
// transaction; it must not keep the node from closing.
func TestAdmin_BackupStalledClient(t *testing.T) {
	cfg := testConfig(t, "n1")
	cfg.ShutdownTimeout = time.Second
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// 24 MB of messages: more than the sockets and the stream's pipe buffer, so the copy
	// blocks once the client stops reading.
	body := strings.Repeat("x", 4000)
	for i := range 6 {
		err := n.db.Update(context.Background(), func(tx *storage.Tx) error {
			for j := range 1000 {
				if _, err := tx.Append(crdt.ConversationID("a", fmt.Sprint("b", i)), crdt.Message{From: "a", To: fmt.Sprint("b", i), Body: fmt.Sprint(j, body)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	conn, err := net.Dial("tcp", n.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const path = "/v1/admin/backup"
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n", path, adminauth.Sign(testKey, n.AdminIdentity(), "GET", path, nil, time.Now()))
	if _, err := io.ReadFull(conn, make([]byte, 4096)); err != nil {
		t.Fatalf("first bytes of the backup: %v", err)
	}
	// The client reads no more.
	closed := make(chan error, 1)
	go func() { closed <- n.Close(context.Background()) }()
	select {
	case err := <-closed:
		if err == nil {
			t.Log("Close returned nil")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close blocked by a backup whose client stopped reading")
	}
}

// TestAdmin_ReloadKeys: after a key rotation (ReloadKeys), admin requests are signed with
// the new keys; a key removed no longer opens the admin routes.
func TestAdmin_ReloadKeys(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "n1"))
	c := newTestClient(t, n)
	const path = "/v1/admin/backup"
	newKey := bytes.Repeat([]byte{0x55}, 32)
	if err := n.ReloadKeys([][]byte{newKey}); err != nil {
		t.Fatal(err)
	}
	resp, body := c.do("GET", path, "", nil, "Authorization", adminauth.Sign(newKey, c.node, "GET", path, nil, time.Now()))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("signed with the new key: status %d: %.200s", resp.StatusCode, body)
	}
	resp, body = c.do("GET", path, "", nil, "Authorization", adminauth.Sign(testKey, c.node, "GET", path, nil, time.Now()))
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
}

// TestAdmin_RemoveMember: DELETE /v1/admin/members/{name} refuses what is not a failed
// member with a clear 4xx, and needs the admin signature. (A failed member removed: the
// cluster package's TestMembership_RemoveFailed, and the binary's TestShardedCluster.)
func TestAdmin_RemoveMember(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "n1"))
	c := newTestClient(t, n)
	token := signUp(t, c, "alice")
	for _, tc := range []struct {
		name, path, token string
		signed            bool
		status            int
		code, says        string
	}{
		{name: "ErrUnknown", path: "/v1/admin/members/n9", signed: true, status: 404, code: "not_found"},
		{name: "ErrThisNode", path: "/v1/admin/members/n1", signed: true, status: 409, code: "conflict"},
		{name: "ErrUnknownEscaped", path: "/v1/admin/members/n%201", signed: true, status: 404, code: "not_found", says: `no member \"n 1\"`}, // as the CLI escapes a name
		{name: "ErrUnsigned", path: "/v1/admin/members/n9", status: 401, code: "unauthorized"},
		{name: "ErrUserToken", path: "/v1/admin/members/n9", token: token, status: 403, code: "forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.signed {
				hdr = []string{"Authorization", adminauth.Sign(testKey, c.node, "DELETE", tc.path, nil, time.Now())}
			}
			resp, body := c.do("DELETE", tc.path, tc.token, nil, hdr...)
			wantError(t, resp, body, tc.status, tc.code)
			if !strings.Contains(string(body), tc.says) {
				t.Errorf("body %s, want it to say %s", body, tc.says)
			}
		})
	}
}

// TestAdmin_SignedForOneNode: a signed admin request is good on the node it was signed
// for only: captured, it cannot be replayed on another node of the cluster (whose nonce
// memory is its own), which names itself in its refusal. The target is checked as sent,
// escapes and all.
func TestAdmin_SignedForOneNode(t *testing.T) {
	n1 := MustStartNode(t, testConfig(t, "one-1"))
	n2 := MustStartNode(t, testConfig(t, "one-2"))
	c1, c2 := newTestClient(t, n1), newTestClient(t, n2)
	const path = "/v1/admin/apps"
	auth := adminauth.Sign(testKey, c1.node, "GET", path, nil, time.Now())
	if resp, body := c1.do("GET", path, "", nil, "Authorization", auth); resp.StatusCode != http.StatusOK {
		t.Fatalf("on the node it was signed for: %d %s", resp.StatusCode, body)
	}
	resp, body := c2.do("GET", path, "", nil, "Authorization", auth)
	wantError(t, resp, body, 401, "unauthorized")
	if !strings.Contains(string(body), "another node") || resp.Header.Get(adminauth.HeaderIdentity) != n2.AdminIdentity() {
		t.Errorf("replayed on another node: %s, %s %q", body, adminauth.HeaderIdentity, resp.Header.Get(adminauth.HeaderIdentity))
	}
	// The target is verified as sent, byte for byte: a signature of one target opens no
	// other spelling of it, nor another route that a differently read target reaches.
	for _, target := range []string{"http://proxied.example/v1/admin/apps", "a//h/v1/admin/backup?q://x/v1/admin/apps", "/v1/admin/./apps"} {
		raw, rawBody := rawRequest(t, n1.HTTPAddr(), "GET "+target+" HTTP/1.1\r\nHost: proxied.example\r\nAuthorization: "+
			adminauth.Sign(testKey, c1.node, "GET", path, nil, time.Now()))
		if raw.StatusCode != http.StatusUnauthorized {
			t.Errorf("target %s, signed as %s: %d %.80s", target, path, raw.StatusCode, rawBody)
		}
	}
	const escaped = "/v1/admin/members/n%2D9"
	resp, body = c1.do("DELETE", escaped, "", nil, "Authorization", adminauth.Sign(testKey, c1.node, "DELETE", escaped, nil, time.Now()))
	if resp.StatusCode == http.StatusUnauthorized {
		t.Errorf("a target with escapes, signed as sent: %d %s", resp.StatusCode, body)
	}
}
