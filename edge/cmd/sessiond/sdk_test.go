package main_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	sdk "github.com/sessiond/sessiond/edge/client"
)

// sdkClient returns a Go client (package client) of the nodes, in their order, with
// strict decoding, and a record of its attempts.
func sdkClient(t *testing.T, nodes []*clNode, roundRobin bool) (*sdk.Client, *attempts) {
	t.Helper()
	var eps []string
	for _, n := range nodes {
		eps = append(eps, "http://"+n.http)
	}
	rec := &attempts{}
	c, err := sdk.New(sdk.Config{
		Endpoints: eps, RoundRobin: roundRobin, DisallowUnknownFields: true, Observe: rec.add,
		AttemptTimeout: 20 * time.Second, // -race nodes hash slowly
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, rec
}

// attempts records a client's attempts; safe for concurrent use.
type attempts struct {
	mu  sync.Mutex
	all []sdk.Attempt
}

func (a *attempts) add(at sdk.Attempt) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.all = append(a.all, at)
}

func (a *attempts) since(i int) []sdk.Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]sdk.Attempt(nil), a.all[i:]...)
}

func (a *attempts) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.all)
}

// TestSDKCluster drives a three-region cluster of the real binary through the Go client:
// read-your-writes with the client's bookmark while its requests go round the nodes, a
// message stream on one node fed by writes through another, and failover when the node
// a client keeps to is killed.
func TestSDKCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	nodes := startBookmarkCluster(t, 3)
	ctx := context.Background()
	alice, rec := sdkClient(t, nodes, true)
	bob, _ := sdkClient(t, nodes[1:], false) // keeps to us-1
	for _, c := range []struct {
		c    *sdk.Client
		name string
	}{{alice, "alice"}, {bob, "bob"}} {
		if _, err := c.c.Register(ctx, api.RegisterRequest{Username: c.name, Password: pw}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.c.Login(ctx, api.LoginRequest{Username: c.name, Password: pw}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("ReadYourWrites", func(t *testing.T) {
		// Each write is read back from the next node in turn: without the bookmark, a
		// node that has not received the write yet would show the one before.
		served := map[string]bool{}
		for i := range 30 {
			if _, err := alice.PatchSession(ctx, map[string]any{"n": i}); err != nil {
				t.Fatal(err)
			}
			wrote := alice.Bookmark()
			if wrote == "" {
				t.Fatal("no bookmark kept after a write")
			}
			mark := rec.len()
			s, err := alice.CurrentSession(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(s.Data["n"]); got != fmt.Sprint(i) {
				t.Fatalf("read %d after writing %d", s.Data["n"], i)
			}
			for _, a := range rec.since(mark) {
				served[a.Header.Get(api.HeaderServedBy)] = true
				if a.Bookmark != wrote {
					t.Fatalf("read sent bookmark %q, want the write's %q", a.Bookmark, wrote)
				}
			}
		}
		if len(served) != 3 {
			t.Errorf("reads served by %v, want all three nodes", served)
		}
	})

	t.Run("Stream", func(t *testing.T) {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := bob.StreamMessages(sctx)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if stream.ServedBy != nodes[1].name {
			t.Errorf("stream served by %q, want %s", stream.ServedBy, nodes[1].name)
		}
		var sent []api.Message
		for i := range 3 {
			m, err := alice.SendMessage(ctx, api.SendMessageRequest{To: "bob", Body: fmt.Sprint("hello ", i)})
			if err != nil {
				t.Fatal(err)
			}
			sent = append(sent, m)
		}
		// The stream delivers messages as they reach its node: sent through three
		// nodes, they may arrive out of the conversation's order, which the list gives.
		want := map[string]bool{}
		for _, m := range sent {
			want[m.ID] = true
		}
		for range sent {
			got, err := stream.Next()
			if err != nil || !want[got.ID] {
				t.Fatalf("stream on %s: %+v, %v; want one of %v", nodes[1].name, got, err, want)
			}
			delete(want, got.ID)
		}
		// Alice's bookmark covers her messages: every node lists them to her.
		for range 3 {
			page, err := alice.Messages(ctx, "bob", "", 0)
			if err != nil || len(page.Messages) != 3 {
				t.Fatalf("Messages=%d, %v; want the 3 sent", len(page.Messages), err)
			}
			for i, m := range page.Messages {
				if m.ID != sent[i].ID {
					t.Fatalf("Messages[%d]=%s, want %s: the list is in the order they were sent", i, m.ID, sent[i].ID)
				}
			}
		}
	})

	t.Run("Failover", func(t *testing.T) {
		c, rec := sdkClient(t, nodes, false) // keeps to eu-1
		if _, err := c.Login(ctx, api.LoginRequest{Username: "alice", Password: pw}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PatchSession(ctx, map[string]any{"before": true}); err != nil {
			t.Fatal(err)
		}
		// The write reaches the other nodes before eu-1 dies (or reads carrying its
		// bookmark would rightly get 503 behind): reads with the bookmark there say so.
		others, _ := sdkClient(t, nodes[1:], true)
		others.SetToken(c.Token())
		if err := others.SetBookmark(c.Bookmark()); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := others.CurrentSession(ctx); err != nil {
				t.Fatal(err)
			}
		}
		nodes[0].kill9()
		mark := rec.len()
		s, err := c.CurrentSession(ctx)
		if err != nil {
			t.Fatalf("read after %s was killed: %v", nodes[0].name, err)
		}
		if string(s.Data["before"]) != "true" {
			t.Errorf("read after failover lost the write before it: %s", s.Data)
		}
		if _, err := c.SendMessage(ctx, api.SendMessageRequest{To: "bob", Body: "still here"}); err != nil {
			t.Fatalf("send after %s was killed: %v", nodes[0].name, err)
		}
		at := rec.since(mark)
		if len(at) < 3 || at[0].Endpoint != "http://"+nodes[0].http || at[0].Err == nil {
			t.Fatalf("attempts after the kill: %+v; want a failed one to %s first", at, nodes[0].name)
		}
		var te *sdk.TransportError
		if errors.As(at[0].Err, &te) {
			t.Errorf("Attempt.Err is the transport's error, not a *TransportError")
		}
		for _, a := range at[1:] {
			if a.Err != nil || a.Header.Get(api.HeaderServedBy) == nodes[0].name {
				t.Errorf("attempt %+v after failover", a)
			}
		}
	})
}
