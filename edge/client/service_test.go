package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/edgetest"
)

// TestService calls every service route through a ServiceClient against a real node,
// decoding strictly, and uses a subject's token through a Client.
func TestService(t *testing.T) {
	n := edgetest.Start(t, "client-test", nil)
	ctx := context.Background()
	endpoints := []string{"http://" + n.HTTPAddr()}
	svc, err := client.NewService(client.Config{Endpoints: endpoints, DisallowUnknownFields: true}, edgetest.CreateApp(t, n, "shop"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Client().CloseIdleConnections)
	if _, err := client.NewService(client.Config{Endpoints: endpoints}, "not-a-key"); err == nil {
		t.Errorf("NewService took a string that is no API key")
	}

	if a, err := svc.App(ctx); err != nil || a.Name != "shop" {
		t.Fatalf("App=%+v, %v", a, err)
	}
	created, err := svc.CreateSession(ctx, api.CreateServiceSessionRequest{
		Subject: "alice@example.com", Data: map[string]json.RawMessage{"cart": json.RawMessage(`[1]`)}, TTL: 3600,
	})
	if err != nil || created.Token == "" || created.Session.Subject != "alice@example.com" {
		t.Fatalf("CreateSession=%+v, %v", created, err)
	}
	if svc.Client().Bookmark() == "" {
		t.Errorf("no bookmark kept after a creation")
	}
	id := created.Session.ID
	if s, err := svc.Session(ctx, id); err != nil || string(s.Data["cart"]) != "[1]" {
		t.Errorf("Session=%+v, %v", s, err)
	}
	if s, err := svc.PatchSession(ctx, id, map[string]any{"cart": nil, "step": 2}); err != nil || s.Data["cart"] != nil || string(s.Data["step"]) != "2" {
		t.Errorf("PatchSession=%+v, %v", s.Data, err)
	}

	// The subject's token on the user routes, through a Client.
	user := svc.Client().Fork()
	user.SetToken(created.Token)
	if cur, err := user.CurrentSession(ctx); err != nil || cur.ID != id || cur.Subject != "alice@example.com" {
		t.Errorf("CurrentSession with the subject's token=%+v, %v", cur, err)
	}
	if _, err := user.Me(ctx); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("Me with the subject's token: %v, want ErrForbidden", err)
	}

	in, err := svc.Introspect(ctx, created.Token)
	if err != nil || !in.Active || in.Session == nil || in.Session.ID != id || in.User == nil || in.User.Subject != "alice@example.com" {
		t.Errorf("Introspect=%+v, %v", in, err)
	}
	if in, err := svc.Introspect(ctx, "garbage"); err != nil || in.Active {
		t.Errorf("Introspect(garbage)=%+v, %v; want inactive", in, err)
	}
	ss, err := svc.SubjectSessions(ctx, "alice@example.com")
	if err != nil || len(ss) != 1 || ss[0].ID != id {
		t.Errorf("SubjectSessions=%+v, %v", ss, err)
	}
	if err := svc.RevokeSession(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Session(ctx, id); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Session after RevokeSession: %v, want ErrNotFound", err)
	}
	second, err := svc.CreateSession(ctx, api.CreateServiceSessionRequest{Subject: "alice@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.RevokeSubject(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	if in, err := svc.Introspect(ctx, second.Token); err != nil || in.Active {
		t.Errorf("Introspect after RevokeSubject=%+v, %v; want inactive", in, err)
	}
	_, err = svc.CreateSession(ctx, api.CreateServiceSessionRequest{Subject: strings.Repeat("x", 300)})
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("CreateSession with a huge subject: %v, want ErrInvalidArgument", err)
	}

	bad, err := client.NewService(client.Config{Endpoints: endpoints}, "sdapp_shop_"+strings.Repeat("0", 64))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bad.Client().CloseIdleConnections)
	if _, err := bad.App(ctx); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("App with a wrong key: %v, want ErrUnauthorized", err)
	}
}
