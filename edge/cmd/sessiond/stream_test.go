package main_test

import (
	"net/http"
	"testing"
	"time"
)

// TestStreamEndsOnReplicatedRevocation: a sign-out on one node ends the session's message
// stream on another node as soon as the revocation arrives there by replication, not at
// the stream's next 15 s ping.
func TestStreamEndsOnReplicatedRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	nodes := startBookmarkCluster(t, 2)
	hc := newBMHTTP(t)
	register(t, nodes[0], "streamer", pw)
	r := send(t, hc, nodes[0], "POST", "/v1/sessions", "", map[string]string{"username": "streamer", "password": pw})
	if r.status != http.StatusCreated {
		t.Fatalf("login: status %d: %s", r.status, r.body)
	}
	var out struct{ Token string }
	r.json(t, &out)
	waitFor(t, 10*time.Second, "the session on "+nodes[1].name, func() bool {
		return send(t, hc, nodes[1], "GET", "/v1/sessions/current", out.Token, nil).status == http.StatusOK
	})
	s := openStream(t, &client{t: t, base: "http://" + nodes[1].http}, nodes[1].name, out.Token)

	if r := send(t, hc, nodes[0], "DELETE", "/v1/sessions/current", out.Token, nil); r.status != http.StatusNoContent {
		t.Fatalf("sign-out on %s: status %d: %s", nodes[0].name, r.status, r.body)
	}
	signedOut := time.Now()
	// Replication takes tens of milliseconds; the stream then has a second to end.
	const within = 2 * time.Second
	select {
	case m := <-s.events:
		t.Fatalf("stream delivered %+v after the sign-out", m)
	case <-s.errs:
		t.Logf("stream on %s ended %s after the sign-out on %s", nodes[1].name, time.Since(signedOut).Round(time.Millisecond), nodes[0].name)
	case <-time.After(within):
		t.Fatalf("stream on %s still open %s after the sign-out on %s", nodes[1].name, within, nodes[0].name)
	}
}
