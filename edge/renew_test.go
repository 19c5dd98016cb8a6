package edge

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

const firefoxLinux = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"

// TestHTTP_SessionOrigin: a session records the client's device label, address, and the
// node and region that created it; GET /v1/sessions shows them.
func TestHTTP_SessionOrigin(t *testing.T) {
	for _, omit := range []bool{false, true} {
		t.Run(fmt.Sprintf("OmitSessionAddress=%v", omit), func(t *testing.T) {
			cfg := testConfig(t, "origin-0")
			cfg.Region = "eu"
			cfg.OmitSessionAddress = omit
			n := MustStartNode(t, cfg)
			c := newTestClient(t, n)
			signUp(t, c, "alice")
			resp, body := c.do("POST", "/v1/sessions", "", map[string]any{"username": "alice", "password": "correct horse"}, "User-Agent", firefoxLinux)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("login: %d %s", resp.StatusCode, body)
			}
			var login struct{ Token string }
			_ = json.Unmarshal(body, &login)
			resp, body = c.do("GET", "/v1/sessions", login.Token, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /v1/sessions: %d %s", resp.StatusCode, body)
			}
			var out struct {
				Sessions []map[string]any
			}
			if err := json.Unmarshal(body, &out); err != nil || len(out.Sessions) != 2 {
				t.Fatalf("GET /v1/sessions: %s (%v), want two sessions", body, err)
			}
			s := out.Sessions[0] // newest first: the Firefox one
			want := map[string]any{"device": "Firefox on Linux", "region": "eu", "node": "origin-0", "current": true}
			if !omit {
				want["client_address"] = "127.0.0.1"
			}
			for k, v := range want {
				if s[k] != v {
					t.Errorf("session[%q] = %v, want %v (%s)", k, s[k], v, body)
				}
			}
			if _, ok := s["client_address"]; omit && ok {
				t.Errorf("client_address recorded with --session-address=false: %s", body)
			}
			// Go's client names itself; signUp's session shows that.
			if d := out.Sessions[1]["device"]; d != "Go-http-client" {
				t.Errorf("device of a Go client's session = %v, want Go-http-client", d)
			}
		})
	}
}

// TestHTTP_Renew: POST /v1/sessions/current/renew returns a new token for the same
// session; the old one stops working, the data stays.
func TestHTTP_Renew(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "renew-0"))
	c := newTestClient(t, n)
	old := signUp(t, c, "alice")
	if resp, body := c.do("PATCH", "/v1/sessions/current", old, map[string]any{"data": map[string]any{"cart": []int{1, 2}}}); resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH: %d %s", resp.StatusCode, body)
	}
	resp, body := c.do("POST", "/v1/sessions/current/renew", old, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("renew: %d %s", resp.StatusCode, body)
	}
	var out struct {
		Token   string
		Session struct {
			ID   string
			Data map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" || out.Token == old {
		t.Fatalf("renew: %s (%v), want a new token", body, err)
	}
	if string(out.Session.Data["cart"]) != "[1,2]" {
		t.Fatalf("renewed session's data = %s, want the cart", body)
	}
	resp, body = c.do("GET", "/v1/sessions/current", old, nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	if !strings.Contains(string(body), "renewal") {
		t.Errorf("old token's 401 does not say it was renewed: %s", body)
	}
	resp, body = c.do("POST", "/v1/sessions/current/renew", old, nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	resp, body = c.do("GET", "/v1/sessions/current", out.Token, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), out.Session.ID) {
		t.Fatalf("new token: %d %s", resp.StatusCode, body)
	}
	// Renewing again with the new token works, and retires it in turn.
	resp, body = c.do("POST", "/v1/sessions/current/renew", out.Token, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("second renew: %d %s", resp.StatusCode, body)
	}
	resp, body = c.do("GET", "/v1/sessions/current", out.Token, nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
}

// TestHTTP_Export: GET /v1/users/me/export is one JSON document with the profile, the
// sessions and every message, and only the caller's.
func TestHTTP_Export(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "export-0"))
	c := newTestClient(t, n)
	alice := signUp(t, c, "alice")
	bob := signUp(t, c, "bob")
	carol := signUp(t, c, "carol")
	send := func(tok, to, body string) {
		t.Helper()
		if resp, b := c.do("POST", "/v1/messages", tok, map[string]any{"to": to, "body": body}); resp.StatusCode != http.StatusCreated {
			t.Fatalf("send: %d %s", resp.StatusCode, b)
		}
	}
	send(alice, "bob", "one")
	send(bob, "alice", "two")
	send(carol, "alice", "three")
	send(bob, "carol", "not alice's")

	resp, body := c.do("GET", "/v1/users/me/export", alice, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("export: %d %s", resp.StatusCode, body)
	}
	if cd := resp.Header.Get("Content-Disposition"); !strings.Contains(cd, "attachment") || !strings.Contains(cd, "alice") {
		t.Errorf("Content-Disposition = %q", cd)
	}
	var doc struct {
		User struct {
			Username string `json:"username"`
		} `json:"user"`
		Sessions      []struct{ ID string } `json:"sessions"`
		Conversations []struct {
			With     string `json:"with"`
			Count    int    `json:"count"`
			Messages []struct {
				From, To, Body string
			} `json:"messages"`
		} `json:"conversations"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("export is not one JSON document: %v\n%s", err, body)
	}
	if doc.User.Username != "alice" || len(doc.Sessions) != 1 || len(doc.Conversations) != 2 {
		t.Fatalf("export = %+v", doc)
	}
	bodies := map[string][]string{}
	for _, cv := range doc.Conversations {
		for _, m := range cv.Messages {
			bodies[cv.With] = append(bodies[cv.With], m.Body)
		}
	}
	if fmt.Sprint(bodies["bob"]) != "[one two]" || fmt.Sprint(bodies["carol"]) != "[three]" {
		t.Fatalf("messages by conversation = %v", bodies)
	}
	// A user with nothing but an account gets a document too.
	dave := signUp(t, c, "dave")
	resp, body = c.do("GET", "/v1/users/me/export", dave, nil)
	if resp.StatusCode != http.StatusOK || !json.Valid(body) || !strings.Contains(string(body), `"conversations":[]`) {
		t.Fatalf("empty export: %d %s", resp.StatusCode, body)
	}
	resp, body = c.do("GET", "/v1/users/me/export", "", nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")

	// Exports are bounded: one per account on a node (another of dave's is running) and
	// maxExports per node (as many of others' are running); both refused with 429.
	_, body = c.do("GET", "/v1/users/me", dave, nil)
	var me struct{ User struct{ ID string } }
	if err := json.Unmarshal(body, &me); err != nil || me.User.ID == "" {
		t.Fatalf("GET /v1/users/me: %s", body)
	}
	if !n.exportsPerUser.take(me.User.ID) {
		t.Fatal("could not take dave's export slot")
	}
	resp, body = c.do("GET", "/v1/users/me/export", dave, nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	n.exportsPerUser.release(me.User.ID)
	for range maxExports {
		n.exports.take("")
	}
	resp, body = c.do("GET", "/v1/users/me/export", alice, nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	for range maxExports {
		n.exports.release("")
	}
	if resp, body := c.do("GET", "/v1/users/me/export", dave, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("export after the slots were freed: %d %s", resp.StatusCode, body)
	}
	// A refused export holds no slot: the per-user slot of a refusal by the node-wide
	// bound was given back.
	n.exportsPerUser.mu.Lock()
	held := len(n.exportsPerUser.held)
	n.exportsPerUser.mu.Unlock()
	if held != 0 {
		t.Errorf("%d accounts still hold an export slot after every export ended", held)
	}
}
