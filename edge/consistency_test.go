package edge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// bookmarkOf returns the response's bookmark, failing the test when it has none.
func bookmarkOf(tb testing.TB, what string, resp *http.Response) crdt.Bookmark {
	tb.Helper()
	raw := resp.Header.Get(headerBookmark)
	if raw == "" {
		tb.Fatalf("%s: no %s header", what, headerBookmark)
	}
	b, err := crdt.ParseBookmark(raw)
	if err != nil {
		tb.Fatalf("%s: %s %q: %v", what, headerBookmark, raw, err)
	}
	return b
}

// wantCovers checks that b covers every field of the record at key as stored now.
func wantCovers(tb testing.TB, what string, n *Node, b crdt.Bookmark, key string) {
	tb.Helper()
	m, ok, err := n.db.Record(context.Background(), key)
	if err != nil || !ok {
		tb.Fatalf("%s: record %s: ok=%v err=%v", what, key, ok, err)
	}
	for _, name := range m.Names() {
		f, _ := m.Field(name)
		if !b.Covers(f.TS) {
			tb.Errorf("%s: bookmark %v does not cover field %s of %s (stamped %v)", what, b.Marks(), name, key, f.TS)
		}
	}
}

// TestConsistency_WritesCarryTheirBookmark: every write's response names the write, so a
// client that sends it back elsewhere is answered from state that includes it.
func TestConsistency_WritesCarryTheirBookmark(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "n1"))
	c := newTestClient(t, n)

	resp, body := c.do("POST", "/v1/users", "", map[string]any{"username": "alice", "password": "correct horse"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("register: %d %s", resp.StatusCode, body)
	}
	var reg struct{ User struct{ ID string } }
	if err := json.Unmarshal(body, &reg); err != nil {
		t.Fatal(err)
	}
	wantCovers(t, "register", n, bookmarkOf(t, "register", resp), crdt.UserKey(reg.User.ID))
	wantCovers(t, "register", n, bookmarkOf(t, "register", resp), crdt.ClaimKey("alice"))
	signUp(t, c, "bob")

	resp, body = c.do("POST", "/v1/sessions", "", map[string]any{"username": "alice", "password": "correct horse"})
	var login struct {
		Token   string
		Session struct{ ID string }
	}
	if err := json.Unmarshal(body, &login); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	tok := login.Token
	sessionKey := crdt.SessionKey(login.Session.ID)
	wantCovers(t, "login", n, bookmarkOf(t, "login", resp), sessionKey)

	// The token carries the bookmark of its session's creation.
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var cl struct{ Bm string }
	if err := json.Unmarshal(payload, &cl); err != nil {
		t.Fatal(err)
	}
	created, err := crdt.ParseBookmark(cl.Bm)
	if err != nil || created.IsZero() {
		t.Fatalf("token claim bm = %q: %v", cl.Bm, err)
	}
	wantCovers(t, "token", n, created, sessionKey)

	resp, body = c.do("PATCH", "/v1/sessions/current", tok, map[string]any{"data": map[string]any{"theme": "dark"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("patch: %d %s", resp.StatusCode, body)
	}
	wantCovers(t, "patch", n, bookmarkOf(t, "patch", resp), sessionKey)

	resp, body = c.do("PATCH", "/v1/users/me", tok, map[string]any{"profile": map[string]any{"address": "2 Looking Glass Lane"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("profile: %d %s", resp.StatusCode, body)
	}
	wantCovers(t, "profile", n, bookmarkOf(t, "profile", resp), crdt.UserKey(reg.User.ID))

	resp, body = c.do("POST", "/v1/messages", tok, map[string]any{"to": "bob", "body": "hi"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("send: %d %s", resp.StatusCode, body)
	}
	b := bookmarkOf(t, "send", resp)
	if ts := n.db.Clock().Last(); b.Mark(n.db.NodeID()).Wall == 0 || ts.Less(b.Mark(n.db.NodeID())) {
		t.Errorf("send: bookmark mark %v is not a timestamp this node issued (last %v)", b.Mark(n.db.NodeID()), ts)
	}

	resp, _ = c.do("DELETE", "/v1/sessions/current", tok, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("sign out: %d", resp.StatusCode)
	}
	wantCovers(t, "sign out", n, bookmarkOf(t, "sign out", resp), sessionKey)

	tok2 := signUp(t, c, "carol")
	resp, _ = c.do("DELETE", "/v1/sessions", tok2, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke all: %d", resp.StatusCode)
	}
	bookmarkOf(t, "revoke all", resp)
	tok3 := signUp(t, c, "dave")
	resp, _ = c.do("DELETE", "/v1/users/me", tok3, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("erase: %d", resp.StatusCode)
	}
	bookmarkOf(t, "erase", resp)
}

// TestConsistency_Headers: the bookmark and consistency headers' contract on one node.
func TestConsistency_Headers(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "n1"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	resp, _ := c.do("PATCH", "/v1/sessions/current", tok, map[string]any{"data": map[string]any{"k": 1}})
	raw := resp.Header.Get(headerBookmark)

	t.Run("OK", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerBookmark, raw)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if got := resp.Header.Get(headerBookmark); got != raw {
			t.Errorf("a read that showed nothing newer: %s = %q, want the request's %q", headerBookmark, got, raw)
		}
	})
	t.Run("Combined", func(t *testing.T) {
		var other crdt.Bookmark
		other.Add(crdt.Timestamp{Wall: 1, Node: 42}) // an old write of a node this one never knew
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerBookmark, raw+" , "+other.String())
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		got := bookmarkOf(t, "combined", resp)
		want, _ := crdt.ParseBookmark(raw)
		want.Merge(other)
		if !want.CoveredBy(got) {
			t.Errorf("combined: response bookmark %v does not cover the two sent (%v)", got.Marks(), want.Marks())
		}
	})
	t.Run("ErrBadBookmark", func(t *testing.T) {
		for _, bad := range []string{"not a bookmark", "AAAA", strings.Repeat("A", 2000), raw + ",%%"} {
			resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerBookmark, bad)
			wantError(t, resp, body, http.StatusBadRequest, "invalid_argument")
		}
	})
	t.Run("ErrorsCarryNone", func(t *testing.T) {
		// An error shows nothing, and what the handler read on the way is not the caller's
		// to see: a failed login read the account it tried, a revoke of another user's
		// session read that session.
		resp, _ := c.do("POST", "/v1/sessions", "", map[string]any{"username": "alice", "password": "wrong wrong"})
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get(headerBookmark) != "" {
			t.Errorf("failed login: status %d, %s %q; want 401 and none", resp.StatusCode, headerBookmark, resp.Header.Get(headerBookmark))
		}
		other := signUp(t, c, "mallory")
		_, body := c.do("GET", "/v1/sessions/current", tok, nil)
		var cur struct{ Session struct{ ID string } }
		if err := json.Unmarshal(body, &cur); err != nil {
			t.Fatal(err)
		}
		resp, _ = c.do("DELETE", "/v1/sessions/"+cur.Session.ID, other, nil)
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get(headerBookmark) != "" {
			t.Errorf("revoke of another user's session: status %d, %s %q; want 404 and none", resp.StatusCode, headerBookmark, resp.Header.Get(headerBookmark))
		}
	})
	t.Run("ErrBadConsistency", func(t *testing.T) {
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerConsistency, "strong")
		wantError(t, resp, body, http.StatusBadRequest, "invalid_argument")
	})
	t.Run("Eventual", func(t *testing.T) {
		var ahead crdt.Bookmark // a write of a live-looking node, far in the future: never held
		ahead.Add(crdt.Timestamp{Wall: n.cfg.Now().Add(24 * 3600e9).UnixNano(), Node: 42})
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil, headerConsistency, "eventual", headerBookmark, ahead.String())
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("eventual: status %d: %s", resp.StatusCode, body)
		}
		if resp.Header.Get(headerLag) == "" {
			t.Errorf("eventual: no %s header", headerLag)
		}
		// Without the opt-out the same bookmark cannot be met: it is further ahead than
		// MaxSkew, so the node says it is behind at once rather than answering stale.
		resp, body = c.do("GET", "/v1/sessions/current", tok, nil, headerBookmark, ahead.String())
		wantError(t, resp, body, http.StatusServiceUnavailable, "behind")
		if got := resp.Header.Get("Retry-After"); got != "60" {
			t.Errorf("behind a bookmark a day ahead: Retry-After %q, want 60 (the bound)", got)
		}
		// Twenty seconds beyond MaxSkew: the node stays behind about that long.
		var near crdt.Bookmark
		near.Add(crdt.Timestamp{Wall: n.cfg.Now().Add(n.cfg.MaxSkew + 20*time.Second).UnixNano(), Node: 42})
		resp, body = c.do("GET", "/v1/sessions/current", tok, nil, headerBookmark, near.String())
		wantError(t, resp, body, http.StatusServiceUnavailable, "behind")
		if got, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || got < 15 || got > 21 {
			t.Errorf("behind a bookmark 20 s past MaxSkew: Retry-After %q, want about 20", resp.Header.Get("Retry-After"))
		}
	})
}
