package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
)

// openNode starts a node in-process with its data in dir, on loopback ports the kernel
// picks.
func openNode(dir string) (*edge.Node, error) {
	cfg := edge.DefaultConfig()
	cfg.NodeName = "client-test"
	cfg.DataDir = dir
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.SyncAddr = "127.0.0.1:0"
	cfg.PasswordWait = time.Minute // argon2id under -race is slow; the queue is not tested here
	n, err := edge.NewNode(cfg)
	if err != nil {
		return nil, err
	}
	return n, n.Start(context.Background())
}

// startNode starts a node for the test and stops it when the test ends.
func startNode(tb testing.TB) *edge.Node {
	tb.Helper()
	n, err := openNode(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			tb.Errorf("close node: %v", err)
		}
	})
	return n
}

// strictClient returns a client of n that refuses response fields package api lacks, so
// that every route the tests call checks the node and the types have not drifted apart.
func strictClient(t *testing.T, n *edge.Node) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}, DisallowUnknownFields: true})
	if err != nil {
		t.Fatal(err)
	}
	// Before the node closes (cleanups run last first): it waits for open connections.
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func wantCode(t *testing.T, what string, err error, target *client.Error) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.Is(err, target) || !errors.As(err, &e) {
		t.Fatalf("%s: err=%v, want %s", what, err, target.Code)
	}
	if e.Status != target.Status || e.Message == "" || e.ServedBy != "client-test" || e.RequestID == "" {
		t.Errorf("%s: Error=%+v, want status %d, a message, X-Served-By and X-Request-ID", what, e, target.Status)
	}
	return e
}

// TestRoutes calls every route of docs/API.md through the client against a real node,
// decoding strictly, and checks the typed errors of its refusals.
func TestRoutes(t *testing.T) {
	n := startNode(t)
	ctx := context.Background()
	alice, bob := strictClient(t, n), strictClient(t, n)
	const pw = "correct horse battery"

	u, err := alice.Register(ctx, api.RegisterRequest{Username: "alice", Password: pw, Profile: api.Profile{FirstName: "Alice", Email: "alice@example.com"}})
	if err != nil || u.Username != "alice" || u.Profile.FirstName != "Alice" || len(u.ID) != 32 {
		t.Fatalf("Register=%+v, %v", u, err)
	}
	if _, err := bob.Register(ctx, api.RegisterRequest{Username: "bob", Password: pw}); err != nil {
		t.Fatal(err)
	}
	_, err = bob.Register(ctx, api.RegisterRequest{Username: "alice", Password: pw})
	wantCode(t, "register a taken name", err, client.ErrUsernameTaken)
	_, err = bob.Register(ctx, api.RegisterRequest{Username: "A!", Password: pw})
	wantCode(t, "register a bad name", err, client.ErrInvalidArgument)
	_, err = alice.Login(ctx, api.LoginRequest{Username: "alice", Password: "wrong password"})
	wantCode(t, "login with a wrong password", err, client.ErrUnauthorized)
	_, err = alice.Me(ctx)
	wantCode(t, "Me without a token", err, client.ErrUnauthorized)

	login, err := alice.Login(ctx, api.LoginRequest{Username: "alice", Password: pw})
	if err != nil || login.Token == "" || login.Device == "" || login.Session.Username != "alice" || alice.Token() != login.Token {
		t.Fatalf("Login=%+v, %v", login, err)
	}
	if alice.Bookmark() == "" {
		t.Errorf("no bookmark kept after a login")
	}
	if _, err := bob.Login(ctx, api.LoginRequest{Username: "bob", Password: pw}); err != nil {
		t.Fatal(err)
	}

	t.Run("Sessions", func(t *testing.T) {
		s, err := alice.PatchSession(ctx, map[string]any{"theme": "dark", "cart": []int{1, 2}, "raw": json.RawMessage(`{"a": 1}`)})
		if err != nil || string(s.Data["theme"]) != `"dark"` || string(s.Data["cart"]) != `[1,2]` || string(s.Data["raw"]) != `{"a":1}` {
			t.Fatalf("PatchSession=%+v, %v", s, err)
		}
		s, err = alice.PatchSession(ctx, map[string]any{"theme": nil})
		if _, ok := s.Data["theme"]; err != nil || ok {
			t.Fatalf("PatchSession deleting theme=%+v, %v", s.Data, err)
		}
		cur, err := alice.CurrentSession(ctx)
		if err != nil || cur.ID != login.Session.ID || len(cur.Data) != 2 {
			t.Fatalf("CurrentSession=%+v, %v", cur, err)
		}
		_, err = alice.PatchSession(ctx, map[string]any{"big": strings.Repeat("x", 17<<10)})
		wantCode(t, "a data value over 16 KiB", err, client.ErrTooLarge)

		other := alice.Fork()
		second, err := other.Login(ctx, api.LoginRequest{Username: "alice", Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		ss, err := alice.Sessions(ctx)
		if err != nil || len(ss) != 2 || ss[0].ID != second.Session.ID || ss[0].Current || !ss[1].Current {
			t.Fatalf("Sessions=%+v, %v; want the second login first, the caller's marked current", ss, err)
		}
		if err := alice.RevokeSession(ctx, second.Session.ID); err != nil {
			t.Fatal(err)
		}
		_, err = other.CurrentSession(ctx)
		wantCode(t, "a revoked session", err, client.ErrUnauthorized)
		err = alice.RevokeSession(ctx, strings.Repeat("0", 32))
		wantCode(t, "revoking no session", err, client.ErrNotFound)
	})

	t.Run("Users", func(t *testing.T) {
		last := "Liddell"
		u, err := alice.UpdateProfile(ctx, api.ProfilePatch{LastName: &last})
		if err != nil || u.Profile.LastName != last || u.Profile.FirstName != "Alice" {
			t.Fatalf("UpdateProfile=%+v, %v", u, err)
		}
		me, err := alice.Me(ctx)
		if err != nil || me.Profile != u.Profile || me.ID != u.ID {
			t.Fatalf("Me=%+v, %v; want %+v", me, err, u)
		}
	})

	t.Run("Messages", func(t *testing.T) {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := bob.StreamMessages(sctx)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if stream.ServedBy != "client-test" {
			t.Errorf("Stream.ServedBy=%q", stream.ServedBy)
		}
		m1, err := alice.SendMessage(ctx, api.SendMessageRequest{To: "bob", Body: "hi"})
		if err != nil || m1.From != "alice" || m1.To != "bob" {
			t.Fatalf("SendMessage=%+v, %v", m1, err)
		}
		m2, err := alice.SendMessage(ctx, api.SendMessageRequest{To: "bob", Body: "there", After: m1.ID})
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []api.Message{m1, m2} {
			got, err := stream.Next()
			if err != nil || got.ID != want.ID || got.Body != want.Body || !got.SentAt.Equal(want.SentAt) {
				t.Fatalf("stream Next=%+v, %v; want %+v", got, err, want)
			}
		}
		_, err = alice.SendMessage(ctx, api.SendMessageRequest{To: "nobody", Body: "hi"})
		wantCode(t, "a message to no one", err, client.ErrNotFound)

		page, err := bob.Messages(ctx, "alice", "", 1)
		if err != nil || len(page.Messages) != 1 || page.Messages[0].ID != m1.ID || page.Next == "" {
			t.Fatalf("Messages page 1=%+v, %v", page, err)
		}
		page, err = bob.Messages(ctx, "alice", page.Next, 0)
		if err != nil || len(page.Messages) != 1 || page.Messages[0].ID != m2.ID {
			t.Fatalf("Messages page 2=%+v, %v", page, err)
		}
		_, err = bob.Messages(ctx, "alice", "", -1)
		wantCode(t, "a negative limit", err, client.ErrInvalidArgument)
		cp, err := bob.Conversations(ctx, "", 0)
		if cs := cp.Conversations; err != nil || len(cs) != 1 || cs[0].With != "alice" || cs[0].Count != 2 || cs[0].LastMessage.ID != m2.ID || cp.Next != "" {
			t.Fatalf("Conversations=%+v, %v", cp, err)
		}
		_, err = bob.Conversations(ctx, "not a cursor", 0)
		wantCode(t, "a bad conversations cursor", err, client.ErrInvalidArgument)

		// Up to 8 streams per user on a node: the ninth is refused with Retry-After 15 s,
		// beyond MaxRetryWait, so at once.
		for range 7 {
			s, err := bob.StreamMessages(sctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
		}
		_, err = bob.StreamMessages(sctx)
		if e := wantCode(t, "a ninth stream", err, client.ErrRateLimited); e.RetryAfter != 15*time.Second {
			t.Errorf("RetryAfter=%s, want 15s", e.RetryAfter)
		}

		// Signing out everywhere ends the stream with the end event.
		if err := bob.RevokeAllSessions(ctx); err != nil {
			t.Fatal(err)
		}
		if bob.Token() != "" {
			t.Errorf("token kept after RevokeAllSessions")
		}
		if _, err := stream.Next(); !errors.Is(err, client.ErrSessionEnded) {
			t.Fatalf("stream after revoke-all: %v, want ErrSessionEnded", err)
		}
	})

	t.Run("Cluster", func(t *testing.T) {
		info, err := alice.Cluster(ctx)
		if err != nil || info.Node.Name != "client-test" || len(info.Members) != 1 || info.Members[0].Status != api.MemberAlive {
			t.Fatalf("Cluster=%+v, %v", info, err)
		}
		if ep, err := alice.Health(ctx); err != nil || ep != "http://"+n.HTTPAddr() {
			t.Fatalf("Health=%q, %v", ep, err)
		}
		if _, err := alice.Ready(ctx); err != nil {
			t.Fatalf("Ready: %v", err)
		}
		old := alice.Token()
		renewed, err := alice.RenewSession(ctx)
		if err != nil || renewed.ID != login.Session.ID || alice.Token() == old || len(renewed.Data) != 2 {
			t.Fatalf("RenewSession=%+v, %v; want the same session, its data, a new token", renewed, err)
		}
		stale := alice.Fork()
		stale.SetToken(old)
		_, err = stale.CurrentSession(ctx)
		wantCode(t, "a renewed token", err, client.ErrUnauthorized)
		var exp api.Export
		if err := alice.Export(ctx, &exp); err != nil || exp.User.Username != "alice" || len(exp.Sessions) != 1 || exp.Conversations == nil {
			t.Fatalf("Export=%+v, %v", exp, err)
		}
		m, err := alice.Metrics(ctx)
		if err != nil || !strings.Contains(string(m), "sessiond_") {
			t.Fatalf("Metrics: %v, %.100s", err, m)
		}
		_, err = alice.Do(ctx, client.Request{Method: http.MethodGet, Path: "/v1/nothing"}, nil)
		wantCode(t, "no route", err, client.ErrNotFound)
		_, err = alice.Do(ctx, client.Request{Method: http.MethodGet, Path: "/v1/users/me", Header: http.Header{"X-Big": {strings.Repeat("x", 9<<10)}}}, nil)
		if !errors.Is(err, client.ErrHeaderTooLarge) {
			t.Fatalf("a 9 KiB header: %v, want header_too_large", err)
		}
	})

	t.Run("Leave", func(t *testing.T) {
		if err := alice.Logout(ctx); err != nil {
			t.Fatal(err)
		}
		if alice.Token() != "" {
			t.Errorf("token kept after Logout")
		}
		alice.SetToken(login.Token)
		_, err := alice.Me(ctx)
		wantCode(t, "a signed-out token", err, client.ErrUnauthorized)
		if _, err := alice.Login(ctx, api.LoginRequest{Username: "alice", Password: pw}); err != nil {
			t.Fatal(err)
		}
		if err := alice.DeleteAccount(ctx); err != nil {
			t.Fatal(err)
		}
		_, err = alice.Login(ctx, api.LoginRequest{Username: "alice", Password: pw})
		wantCode(t, "login to an erased account", err, client.ErrUnauthorized)
	})
}
