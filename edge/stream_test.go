package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// sseEvent is one Server-Sent Event of a message stream.
type sseEvent struct {
	event, data string
}

// testStream is an open GET /v1/messages/stream. Its reader goroutine sends each event
// on events and closes ended when the response body ends; the test's cleanup closes the
// body, which makes it return.
type testStream struct {
	events chan sseEvent
	ended  chan struct{}
}

// openTestStream opens a stream with token and waits for its ": connected" comment, so
// the subscription exists before the caller writes anything.
func openTestStream(t *testing.T, c *testClient, token string) *testStream {
	t.Helper()
	resp := tryStream(t, c, token)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("open stream: status %d, want 200", resp.StatusCode)
	}
	s := &testStream{events: make(chan sseEvent, 64), ended: make(chan struct{})}
	connected := make(chan struct{})
	go func() {
		defer close(s.ended)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == ": connected":
				close(connected)
			case strings.HasPrefix(line, "event: "):
				ev.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			case line == "" && ev.event != "":
				select {
				case s.events <- ev:
				default: // the test reads far fewer than 64 events
				}
				ev = sseEvent{}
			}
		}
	}()
	select {
	case <-connected:
	case <-s.ended:
		t.Fatal("stream ended before \": connected\"")
	case <-time.After(5 * time.Second):
		t.Fatal("stream: no \": connected\" within 5s")
	}
	return s
}

// tryStream sends GET /v1/messages/stream; the response body is closed when the test ends.
func tryStream(t *testing.T, c *testClient, token string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/messages/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	// A client of its own: the shared one times out after 10 s, and a stream must not be
	// cut by the client.
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp
}

// waitEnd waits up to within for the stream to send its end event and close. It fails
// the test if a message event comes first or the stream stays open.
func (s *testStream) waitEnd(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	sawEnd := false
	for {
		select {
		case ev := <-s.events:
			switch ev.event {
			case "message":
				t.Errorf("stream delivered a message after the revocation: %s", ev.data)
			case "end":
				sawEnd = true
			}
		case <-s.ended:
			// Drain what the reader sent before it stopped.
			for {
				select {
				case ev := <-s.events:
					if ev.event == "message" {
						t.Errorf("stream delivered a message after the revocation: %s", ev.data)
					}
					sawEnd = sawEnd || ev.event == "end"
				default:
					if !sawEnd {
						t.Errorf("stream closed without an end event")
					}
					return
				}
			}
		case <-deadline:
			t.Fatalf("stream still open %s after the revocation", within)
		}
	}
}

// currentSession returns the session ID and user ID of token.
func currentSession(t *testing.T, c *testClient, token string) (sid, uid string) {
	t.Helper()
	resp, body := c.do("GET", "/v1/sessions/current", token, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("current: status %d: %s", resp.StatusCode, body)
	}
	var out struct {
		Session struct {
			ID     string `json:"id"`
			UserID string `json:"user_id"`
		}
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("current: %v", err)
	}
	return out.Session.ID, out.Session.UserID
}

func logIn(t *testing.T, c *testClient, username string) string {
	t.Helper()
	resp, body := c.do("POST", "/v1/sessions", "", map[string]any{"username": username, "password": "correct horse"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("login %s: status %d: %s", username, resp.StatusCode, body)
	}
	var out struct{ Token string }
	json.Unmarshal(body, &out)
	return out.Token
}

// TestStream_EndsOnRevocation: whichever way a session is revoked, its stream sends
// `event: end` and closes within a second, and a message committed after the revocation
// is not delivered on it.
func TestStream_EndsOnRevocation(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "stream-0"))
	c := newTestClient(t, n)
	bob := signUp(t, c, "bob")
	for i, tc := range []struct {
		name   string
		revoke func(t *testing.T, user, token string)
	}{
		{"SignOut", func(t *testing.T, _, token string) {
			if resp, body := c.do("DELETE", "/v1/sessions/current", token, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("sign out: status %d: %s", resp.StatusCode, body)
			}
		}},
		{"RevokeFromOtherSession", func(t *testing.T, user, token string) {
			sid, _ := currentSession(t, c, token)
			other := logIn(t, c, user)
			if resp, body := c.do("DELETE", "/v1/sessions/"+sid, other, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("revoke: status %d: %s", resp.StatusCode, body)
			}
		}},
		{"RevokeAll", func(t *testing.T, _, token string) {
			if resp, body := c.do("DELETE", "/v1/sessions", token, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("revoke all: status %d: %s", resp.StatusCode, body)
			}
		}},
		{"Erase", func(t *testing.T, _, token string) {
			if resp, body := c.do("DELETE", "/v1/users/me", token, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("erase: status %d: %s", resp.StatusCode, body)
			}
		}},
		// A renewal replaces the token the stream was opened with (found by an outside
		// review: the stream went on delivering to the old token's holder).
		{"Renew", func(t *testing.T, _, token string) {
			if resp, body := c.do("POST", "/v1/sessions/current/renew", token, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("renew: status %d: %s", resp.StatusCode, body)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := fmt.Sprintf("alice%d", i)
			tok := signUp(t, c, user)
			s := openTestStream(t, c, tok)
			// The stream works: a message before the revocation arrives.
			if resp, body := c.do("POST", "/v1/messages", bob, map[string]any{"to": user, "body": "before"}); resp.StatusCode != http.StatusCreated {
				t.Fatalf("send: status %d: %s", resp.StatusCode, body)
			}
			select {
			case ev := <-s.events:
				if ev.event != "message" || !strings.Contains(ev.data, `"before"`) {
					t.Fatalf("first event = %+v, want the message", ev)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no message event within 5s")
			}

			tc.revoke(t, user, tok)
			revoked := time.Now()
			// Sent at once after the revocation; after an erasure the recipient is gone
			// (404), so bob writes to a user that still exists only in the other cases.
			resp, body := c.do("POST", "/v1/messages", bob, map[string]any{"to": user, "body": "after"})
			if tc.name != "Erase" && resp.StatusCode != http.StatusCreated {
				t.Fatalf("send after revocation: status %d: %s", resp.StatusCode, body)
			}
			s.waitEnd(t, time.Second-time.Since(revoked))
		})
	}
}

// TestStream_EndsWhenItsKeyRetires: a stream ends once the signing key of the token it
// was opened with is retired (a leaked key), at its next message or ping.
func TestStream_EndsWhenItsKeyRetires(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "stream-key-0"))
	c := newTestClient(t, n)
	alice := signUp(t, c, "alice")
	signUp(t, c, "bob")
	s := openTestStream(t, c, alice)
	kid, _ := tokenHeader(t, alice)["kid"].(string)
	resp, body := adminDo(c, testKey, "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 0, "retire": kid})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("rotate and retire: %d %s", resp.StatusCode, body)
	}
	retired := time.Now()
	bob := logIn(t, c, "bob") // with the new key
	if resp, body := c.do("POST", "/v1/messages", bob, map[string]any{"to": "alice", "body": "after"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("send: status %d: %s", resp.StatusCode, body)
	}
	s.waitEnd(t, 2*time.Second-time.Since(retired))
}

// TestStream_EndsOnRemoteRevocation: a revocation that arrives by replication (applied
// as a remote change, as the replicator applies it) ends the stream at once.
func TestStream_EndsOnRemoteRevocation(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "stream-remote-0"))
	c := newTestClient(t, n)
	for _, tc := range []struct {
		name   string
		change func(sid, uid string, ts crdt.Timestamp) storage.Change
	}{
		{"Session", func(sid, _ string, ts crdt.Timestamp) storage.Change {
			return storage.Change{Key: crdt.SessionKey(sid), Map: crdt.RevokeSession(ts)}
		}},
		{"RevokeAll", func(_, uid string, ts crdt.Timestamp) storage.Change {
			return storage.Change{Key: crdt.UserKey(uid), Map: crdt.RevokeSessionsUntil(ts, time.Minute)}
		}},
		{"Erase", func(_, uid string, ts crdt.Timestamp) storage.Change {
			return storage.Change{Key: crdt.UserKey(uid), Map: crdt.EraseUser(ts)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := signUp(t, c, "remote-"+strings.ToLower(tc.name))
			sid, uid := currentSession(t, c, tok)
			s := openTestStream(t, c, tok)
			ts := crdt.Timestamp{Wall: time.Now().UnixNano(), Node: 0x0123456789abcdef}
			res, err := n.db.ApplyRemote(context.Background(), []storage.Change{tc.change(sid, uid, ts)})
			if err != nil || res.Applied != 1 {
				t.Fatalf("ApplyRemote = %+v, %v; want one applied", res, err)
			}
			s.waitEnd(t, time.Second)
			if resp, _ := c.do("GET", "/v1/sessions/current", tok, nil); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("current after remote revocation: status %d, want 401", resp.StatusCode)
			}
		})
	}
}

// TestStream_PerUserCap: a user holds at most maxStreamsPerUser streams on a node; one
// more is 429 rate_limited with Retry-After, and other users are not affected.
func TestStream_PerUserCap(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "stream-cap-0"))
	c := newTestClient(t, n)
	alice := signUp(t, c, "alice")
	for range maxStreamsPerUser {
		openTestStream(t, c, logIn(t, c, "alice")) // a session each: the cap is per user
	}
	resp := tryStream(t, c, alice)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("stream %d of one user: status %d, want 429", maxStreamsPerUser+1, resp.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read 429 body: %v", err)
	}
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if ra := resp.Header.Get("Retry-After"); ra == "" {
		t.Errorf("429: no Retry-After")
	}
	openTestStream(t, c, signUp(t, c, "bob"))
}

// TestBroker_ServedAndRelayedShareTheCap: the streams a node serves and those it relays
// to a holder count against one cap per user — during a change of placement a flood of
// streams lands on both sides of the same node (chaos with --replicas 1 once had 10
// accepted at once against a cap of 8, with two counts of 8).
func TestBroker_ServedAndRelayedShareTheCap(t *testing.T) {
	b := newBroker()
	const relayed = 3
	var releases []func()
	for range relayed {
		release, ok := b.reserveRelay("alice")
		if !ok {
			t.Fatalf("relay refused below the cap")
		}
		releases = append(releases, release)
	}
	for i := range maxStreamsPerUser - relayed {
		if _, ok := b.subscribe("alice", fmt.Sprintf("s%d", i)); !ok {
			t.Fatalf("stream %d refused below the cap", relayed+i+1)
		}
	}
	if _, ok := b.subscribe("alice", "one-more"); ok {
		t.Errorf("a stream served past the cap, %d of them relayed", relayed)
	}
	if _, ok := b.reserveRelay("alice"); ok {
		t.Errorf("a stream relayed past the cap")
	}
	if _, ok := b.subscribe("bob", "s"); !ok {
		t.Errorf("another user's stream refused")
	}
	releases[0]()
	releases[0]() // a second call changes nothing
	if _, ok := b.subscribe("alice", "after-release"); !ok {
		t.Errorf("a stream refused after a relayed one ended")
	}
	if _, ok := b.subscribe("alice", "past-again"); ok {
		t.Errorf("the release was counted twice")
	}
}
