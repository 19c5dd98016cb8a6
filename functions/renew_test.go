package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

func TestLoginRecordsOrigin(t *testing.T) {
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	o := crdt.Origin{Device: "Firefox on Linux", ClientAddr: "203.0.113.9", Region: "eu", Node: "eu-1"}
	s, err := e.sessions.Login(context.Background(), Login{Username: "alice", Password: testPassword, Origin: o})
	if err != nil {
		t.Fatal(err)
	}
	if s.Device != o.Device || s.ClientAddress != o.ClientAddr || s.Region != o.Region || s.Node != o.Node {
		t.Fatalf("Login's session = %+v, want origin %+v", s, o)
	}
	p := Principal{UserID: s.UserID, Username: s.Username, SessionID: s.ID}
	list, err := e.sessions.List(context.Background(), p)
	if err != nil || len(list) != 1 || list[0].Device != o.Device || list[0].ClientAddress != o.ClientAddr {
		t.Fatalf("List = %+v, %v; want the session with its origin", list, err)
	}
	// Nothing recorded: the fields are left out of the JSON.
	_, p2 := e.mustLogin(t, "alice", testPassword)
	s2, err := e.sessions.Current(context.Background(), p2)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s2)
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"device", "client_address", "region", "node"} {
		if _, ok := fields[k]; ok {
			t.Errorf("session without an origin has %q in %s", k, b)
		}
	}
}

func TestSessionsRenew(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	_, p := e.mustLogin(t, "alice", testPassword)
	if _, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"cart": json.RawMessage(`[1,2]`)}}); err != nil {
		t.Fatal(err)
	}
	auth := func(gen uint64) error {
		_, err := e.sessions.AuthenticateToken(ctx, p.UserID, p.SessionID, gen, false)
		return err
	}
	p0, err := e.sessions.AuthenticateToken(ctx, p.UserID, p.SessionID, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	s, gen, err := e.sessions.Renew(ctx, p0)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if gen != 1 || s.ID != p.SessionID || string(s.Data["cart"]) != "[1,2]" {
		t.Fatalf("Renew = %+v, gen %d; want the same session and its data, generation 1", s, gen)
	}
	wantCode(t, auth(0), EUnauthorized) // the renewed token
	if err := auth(1); err != nil {
		t.Fatalf("the new token: %v", err)
	}
	// A second renewal through the new token; the first token cannot renew any more.
	p1, _ := e.sessions.AuthenticateToken(ctx, p.UserID, p.SessionID, 1, false)
	if _, gen, err = e.sessions.Renew(ctx, p1); err != nil || gen != 2 {
		t.Fatalf("second Renew: gen %d, %v; want 2", gen, err)
	}
	_, _, err = e.sessions.Renew(ctx, p1) // p1 was loaded before the second renewal
	wantCode(t, err, EUnauthorized)
	wantCode(t, auth(1), EUnauthorized)
	if err := auth(2); err != nil {
		t.Fatalf("token of generation 2: %v", err)
	}
	// Another user cannot renew a session that is not theirs.
	e.mustRegister(t, "mallory", testPassword)
	_, pm := e.mustLogin(t, "mallory", testPassword)
	pm.SessionID = p.SessionID
	pm.TokenGen = 2
	_, _, err = e.sessions.Renew(ctx, pm)
	wantCode(t, err, EUnauthorized)
}

func TestMessagesExport(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	// More than a page with bob, so Export pages; a few with carol.
	const withBob = MaxPageLimit + 7
	for i := range withBob {
		from, to := e.alice, "bob"
		if i%3 == 0 {
			from, to = e.bob, "alice"
		}
		e.mustSend(t, from, to, fmt.Sprintf("m%d", i))
	}
	e.mustSend(t, e.carol, "alice", "hello alice")
	e.mustSend(t, e.bob, "carol", "not alice's")

	got := map[string][]string{}
	var order []string
	err := e.messages.Export(ctx, e.alice, func(c Conversation) error {
		order = append(order, c.With)
		return nil
	}, func(m Message) error {
		with := m.To
		if m.To == "alice" {
			with = m.From
		}
		if with != order[len(order)-1] {
			t.Errorf("message %+v under the conversation with %s", m, order[len(order)-1])
		}
		got[with] = append(got[with], m.Body)
		return nil
	})
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	if len(order) != 2 || order[0] != "carol" || order[1] != "bob" {
		t.Fatalf("conversations %v, want [carol bob] (newest first)", order)
	}
	if len(got["bob"]) != withBob {
		t.Fatalf("%d messages with bob, want %d", len(got["bob"]), withBob)
	}
	for i, b := range got["bob"] {
		if b != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d with bob = %q, want m%d (conversation order)", i, b, i)
		}
	}
	if len(got["carol"]) != 1 || got["carol"][0] != "hello alice" {
		t.Fatalf("with carol: %v", got["carol"])
	}
	// An error of the callback stops the export and is returned.
	stop := fmt.Errorf("client went away")
	n := 0
	err = e.messages.Export(ctx, e.alice, func(Conversation) error { return nil }, func(Message) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Fatalf("Export with a failing callback: %v after %d messages, want %v after 3", err, n, stop)
	}
}
