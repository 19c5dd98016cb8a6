package functions

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestValidSubject(t *testing.T) {
	for _, s := range []string{"a", "alice@example.com", "auth0|5f0c", "héllo wörld/42", strings.Repeat("x", MaxSubject)} {
		if err := ValidSubject(s); err != nil {
			t.Errorf("ValidSubject(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range []string{"", strings.Repeat("x", MaxSubject+1), "a\x00b", "a\nb", "\u0085", "\xff"} {
		if err := ValidSubject(s); ErrorCode(err) != EInvalid {
			t.Errorf("ValidSubject(%q) = %v, want %s", s, err, EInvalid)
		}
	}
}

func TestCreateForSubject(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	s, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{
		Subject: "alice@example.com", Data: map[string]json.RawMessage{"cart": json.RawMessage(`[1,2]`)},
		TTL: time.Hour, IdleTTL: 10 * time.Minute, Origin: crdt.Origin{Region: "eu", Node: "n1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Subject != "alice@example.com" || s.Username != "" || s.UserID != crdt.SubjectID("shop", "alice@example.com") {
		t.Errorf("session %+v: want subject alice@example.com, no username, user_id SubjectID", s)
	}
	if !s.ExpiresAt.Equal(testEpoch.Add(time.Hour)) || !s.IdleExpiresAt.Equal(testEpoch.Add(10*time.Minute)) {
		t.Errorf("expires %s, idle %s; want an hour and ten minutes on", s.ExpiresAt, s.IdleExpiresAt)
	}
	if string(s.Data["cart"]) != `[1,2]` || s.Region != "eu" || s.Node != "n1" {
		t.Errorf("data %s, region %q, node %q", s.Data, s.Region, s.Node)
	}
	if crdt.IDPartition(s.ID) != crdt.IDPartition(s.UserID) {
		t.Errorf("session %s is not in its subject's partition", s.ID)
	}
	u := crdt.ReadUser(s.UserID, ptr(e.store.record(crdt.UserKey(s.UserID))))
	if u.App != "shop" || u.Subject != "alice@example.com" || u.Username != "" || u.PasswordHash != "" {
		t.Errorf("subject record %+v", u)
	}
	// The subject's record is kept as long as any session of it may live, then goes.
	keepOf := func(subject string) time.Time {
		return time.Unix(0, crdt.SubjectKeepNanos(ptr(e.store.record(crdt.UserKey(crdt.SubjectID("shop", subject)))))).UTC()
	}
	if k := keepOf("alice@example.com"); k.Before(testEpoch.Add(MaxServiceTTL)) || k.After(testEpoch.Add(MaxServiceTTL+time.Hour)) {
		t.Errorf("subject record kept until %s; want a year after the session's creation (%s)", k, testEpoch)
	}
	if err := e.sessions.RevokeSubject(ctx, "shop", "carol"); err != nil {
		t.Fatal(err)
	}
	if k := keepOf("carol"); k.Before(testEpoch.Add(MaxServiceTTL)) {
		t.Errorf("the record a revocation made is kept until %s; want past every session it may revoke", k)
	}
	// Defaults: the node's TTLs, the idle one at most the absolute one.
	d, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "bob"})
	if err != nil || !d.ExpiresAt.Equal(testEpoch.Add(testTTL)) || !d.IdleExpiresAt.Equal(testEpoch.Add(testIdleTTL)) {
		t.Errorf("defaults: %+v, %v", d, err)
	}
	short, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "bob", TTL: 5 * time.Minute})
	if err != nil || !short.IdleExpiresAt.Equal(testEpoch.Add(5*time.Minute)) {
		t.Errorf("short ttl: idle expiry %s, %v; want capped at ttl", short.IdleExpiresAt, err)
	}

	for _, tc := range []struct {
		name string
		app  string
		req  SubjectLogin
		code string
	}{
		{"ErrNoSubject", "shop", SubjectLogin{}, EInvalid},
		{"ErrHugeSubject", "shop", SubjectLogin{Subject: strings.Repeat("x", 1<<16)}, EInvalid},
		{"ErrControlSubject", "shop", SubjectLogin{Subject: "a\tb"}, EInvalid},
		{"ErrShortTTL", "shop", SubjectLogin{Subject: "a", TTL: time.Second}, EInvalid},
		{"ErrLongTTL", "shop", SubjectLogin{Subject: "a", TTL: MaxServiceTTL + time.Second}, EInvalid},
		{"ErrIdleOverTTL", "shop", SubjectLogin{Subject: "a", TTL: time.Hour, IdleTTL: 2 * time.Hour}, EInvalid},
		{"ErrShortIdle", "shop", SubjectLogin{Subject: "a", IdleTTL: time.Second}, EInvalid},
		{"ErrNullData", "shop", SubjectLogin{Subject: "a", Data: map[string]json.RawMessage{"k": json.RawMessage("null")}}, EInvalid},
		{"ErrBadData", "shop", SubjectLogin{Subject: "a", Data: map[string]json.RawMessage{"k": json.RawMessage("{")}}, EInvalid},
		{"ErrBigValue", "shop", SubjectLogin{Subject: "a", Data: map[string]json.RawMessage{"k": json.RawMessage(`"` + strings.Repeat("x", MaxDataValue) + `"`)}}, ETooLarge},
		{"ErrBigData", "shop", SubjectLogin{Subject: "a", Data: bigData()}, ETooLarge},
		{"ErrBadApp", "Shop", SubjectLogin{Subject: "a"}, EInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.store.updateCount()
			_, err := e.sessions.CreateForSubject(ctx, tc.app, tc.req)
			wantCode(t, err, tc.code)
			if e.store.updateCount() != before && tc.code != ETooLarge {
				t.Errorf("a refused creation wrote")
			}
		})
	}
}

// bigData is session data within the per-value bound but over MaxSessionData in all.
func bigData() map[string]json.RawMessage {
	d := map[string]json.RawMessage{}
	v := json.RawMessage(`"` + strings.Repeat("x", MaxDataValue-100) + `"`)
	for i := range MaxSessionData/MaxDataValue + 2 {
		d["k"+strings.Repeat("x", i)] = v
	}
	return d
}

func ptr[T any](v T) *T { return &v }

// TestServiceScope: an app reaches its own subjects' sessions only — not another app's,
// even for the same subject, and not a registered user's.
func TestServiceScope(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", "correct horse")
	_, userP := e.mustLogin(t, "alice", "correct horse")
	shop, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	blog, err := e.sessions.CreateForSubject(ctx, "blog", SubjectLogin{Subject: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if shop.UserID == blog.UserID || shop.UserID == userP.UserID {
		t.Fatalf("two apps' subjects (or a subject and a user) of one name share an ID: %s", shop.UserID)
	}
	patch := DataPatch{Set: map[string]json.RawMessage{"k": json.RawMessage(`1`)}}
	for _, id := range []string{blog.ID, userP.SessionID, strings.Repeat("0", 32)} {
		_, err := e.sessions.ServiceSession(ctx, "shop", id)
		wantCode(t, err, ENotFound)
		_, err = e.sessions.PatchServiceSession(ctx, "shop", id, patch)
		wantCode(t, err, ENotFound)
		wantCode(t, e.sessions.RevokeServiceSession(ctx, "shop", id), ENotFound)
	}
	// Nothing above changed the others' sessions.
	if s, err := e.sessions.ServiceSession(ctx, "blog", blog.ID); err != nil || len(s.Data) != 0 {
		t.Errorf("blog's session after shop's attempts: %+v, %v", s, err)
	}
	if _, err := e.sessions.Current(ctx, userP); err != nil {
		t.Errorf("alice's own session after shop's attempts: %v", err)
	}
	// Introspection: inactive for another app's and for a user's session.
	if _, err := e.sessions.Introspect(ctx, "shop", blog.UserID, blog.ID, 0); ErrorCode(err) != EUnauthorized {
		t.Errorf("shop introspects blog's session: %v, want inactive", err)
	}
	if _, err := e.sessions.Introspect(ctx, "shop", userP.UserID, userP.SessionID, 0); ErrorCode(err) != EUnauthorized {
		t.Errorf("shop introspects a user's session: %v, want inactive", err)
	}
	// Subjects: the same name under another app is another subject.
	if ss, err := e.sessions.SubjectSessions(ctx, "shop", "alice"); err != nil || len(ss) != 1 || ss[0].ID != shop.ID {
		t.Errorf("shop's alice: %+v, %v; want its one session", ss, err)
	}
	if err := e.sessions.RevokeSubject(ctx, "blog", "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.ServiceSession(ctx, "shop", shop.ID); err != nil {
		t.Errorf("shop's alice after blog revoked its alice: %v", err)
	}
	if _, err := e.sessions.ServiceSession(ctx, "blog", blog.ID); ErrorCode(err) != ENotFound {
		t.Errorf("blog's alice after its revocation: %v, want not found", err)
	}
	if _, err := e.sessions.Current(ctx, userP); err != nil {
		t.Errorf("the user alice after blog revoked its alice: %v", err)
	}
}

func TestServiceSessionLifecycle(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	s, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "carol", TTL: time.Hour, IdleTTL: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	// The session's own token authenticates like any other (the user routes), as a subject.
	p, err := e.sessions.AuthenticateToken(ctx, s.UserID, s.ID, 0, false)
	if err != nil || p.App != "shop" || p.Username != "" {
		t.Fatalf("AuthenticateToken = %+v, %v; want the subject of shop", p, err)
	}
	if cur, err := e.sessions.Current(ctx, p); err != nil || cur.Subject != "carol" {
		t.Errorf("Current = %+v, %v", cur, err)
	}

	// The app patches; the subject's token sees it.
	got, err := e.sessions.PatchServiceSession(ctx, "shop", s.ID, DataPatch{Set: map[string]json.RawMessage{"a": json.RawMessage(`"x"`)}})
	if err != nil || string(got.Data["a"]) != `"x"` || got.Subject != "carol" {
		t.Fatalf("PatchServiceSession = %+v, %v", got, err)
	}
	_, err = e.sessions.PatchServiceSession(ctx, "shop", s.ID, DataPatch{Set: bigData()})
	wantCode(t, err, ETooLarge)

	// Introspection slides idle expiry, as a use does.
	e.now.Advance(20 * time.Minute)
	in, err := e.sessions.Introspect(ctx, "shop", s.UserID, s.ID, 0)
	if err != nil || !in.IdleExpiresAt.Equal(testEpoch.Add(50*time.Minute)) {
		t.Errorf("Introspect = %+v, %v; want idle expiry slid to 50 minutes", in, err)
	}
	// A renewed token's predecessor is inactive.
	if _, _, err := e.sessions.Renew(ctx, Principal{UserID: s.UserID, SessionID: s.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.Introspect(ctx, "shop", s.UserID, s.ID, 0); ErrorCode(err) != EUnauthorized {
		t.Errorf("Introspect of a renewed token: %v, want inactive", err)
	}
	if _, err := e.sessions.Introspect(ctx, "shop", s.UserID, s.ID, 1); err != nil {
		t.Errorf("Introspect of the new token: %v", err)
	}

	// Listing and revoking a subject's sessions.
	two, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := e.sessions.SubjectSessions(ctx, "shop", "carol")
	if err != nil || len(ss) != 2 || ss[0].ID != two.ID || ss[1].ID != s.ID {
		t.Fatalf("SubjectSessions = %+v, %v; want both, newest first", ss, err)
	}
	if ss, err := e.sessions.SubjectSessions(ctx, "shop", "nobody"); err != nil || ss == nil || len(ss) != 0 {
		t.Errorf("SubjectSessions of an unknown subject = %#v, %v; want an empty list", ss, err)
	}
	wantCode(t, e.sessions.RevokeServiceSession(ctx, "shop", two.ID), "")
	if _, err := e.sessions.ServiceSession(ctx, "shop", two.ID); ErrorCode(err) != ENotFound {
		t.Errorf("a revoked session: %v, want not found", err)
	}
	e.now.Advance(time.Second)
	if err := e.sessions.RevokeSubject(ctx, "shop", "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.AuthenticateToken(ctx, s.UserID, s.ID, 1, false); ErrorCode(err) != EUnauthorized {
		t.Errorf("the subject's token after RevokeSubject: %v, want unauthorized", err)
	}
	// A session created afterwards works.
	e.now.Advance(time.Second)
	again, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.ServiceSession(ctx, "shop", again.ID); err != nil {
		t.Errorf("a session after the revocation: %v", err)
	}
	// Revoking a subject never seen writes its record, so the revocation holds for sessions
	// created elsewhere before it.
	if err := e.sessions.RevokeSubject(ctx, "shop", "dave"); err != nil {
		t.Fatal(err)
	}
	if u := crdt.ReadUser(crdt.SubjectID("shop", "dave"), ptr(e.store.record(crdt.UserKey(crdt.SubjectID("shop", "dave"))))); u.App != "shop" || u.SessionsUntil.IsZero() {
		t.Errorf("record of a revoked unseen subject: %+v", u)
	}
}

// TestServiceSessionsCapped: a subject, like a user, holds at most MaxSessionsPerUser
// active sessions; the oldest goes.
func TestServiceSessionsCapped(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	var first Session
	for i := range MaxSessionsPerUser + 1 {
		s, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "erin"})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = s
		}
		e.now.Advance(time.Millisecond)
	}
	ss, err := e.sessions.SubjectSessions(ctx, "shop", "erin")
	if err != nil || len(ss) != MaxSessionsPerUser {
		t.Fatalf("%d sessions, %v; want %d", len(ss), err, MaxSessionsPerUser)
	}
	if _, err := e.sessions.ServiceSession(ctx, "shop", first.ID); ErrorCode(err) != ENotFound {
		t.Errorf("the oldest session: %v, want revoked", err)
	}
}

// TestEndAppSessions: the answer to a leaked API key. Ending an app's sessions (alone, or
// with a rotation) stops every session its subjects had — any subject's, the token's own
// requests, introspection and the subject's list alike — and no other app's; sessions
// made afterwards work.
func TestEndAppSessions(t *testing.T) {
	ctx := context.Background()
	for _, how := range []string{"EndSessions", "Rotate"} {
		t.Run(how, func(t *testing.T) {
			e := newTestEnv(t)
			for _, app := range []string{"shop", "blog"} {
				if _, _, err := e.apps.Create(ctx, app); err != nil {
					t.Fatal(err)
				}
			}
			create := func(app, subject string) Session {
				t.Helper()
				s, err := e.sessions.CreateForSubject(ctx, app, SubjectLogin{Subject: subject, TTL: time.Hour})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			alice, admin, other := create("shop", "alice"), create("shop", "admin@shop.example"), create("blog", "alice")
			e.now.Advance(time.Second)

			var a App
			var err error
			if how == "Rotate" {
				a, _, err = e.apps.Rotate(ctx, "shop", 0, true)
			} else {
				a, err = e.apps.EndSessions(ctx, "shop")
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.SessionsEndedAt == nil || !a.SessionsEndedAt.Equal(testEpoch.Add(time.Second)) {
				t.Errorf("SessionsEndedAt = %v, want the end's time", a.SessionsEndedAt)
			}
			for _, s := range []Session{alice, admin} {
				if _, err := e.sessions.AuthenticateToken(ctx, s.UserID, s.ID, 0, false); ErrorCode(err) != EUnauthorized {
					t.Errorf("%s's token after the end: %v, want unauthorized", s.Subject, err)
				}
				if _, err := e.sessions.Introspect(ctx, "shop", s.UserID, s.ID, 0); ErrorCode(err) != EUnauthorized {
					t.Errorf("introspecting %s's session after the end: %v, want inactive", s.Subject, err)
				}
				if _, err := e.sessions.ServiceSession(ctx, "shop", s.ID); ErrorCode(err) != ENotFound {
					t.Errorf("reading %s's session after the end: %v, want not found", s.Subject, err)
				}
			}
			if _, err := e.sessions.AuthenticateToken(ctx, other.UserID, other.ID, 0, false); err != nil {
				t.Errorf("another app's session: %v", err)
			}

			// The ended sessions held here are flagged revoked (their data goes), once;
			// another app's are not.
			e.sessions.Subjects = e.store
			if n, err := e.sessions.RevokeEnded(ctx, "shop"); err != nil || n != 2 {
				t.Errorf("RevokeEnded = %d, %v; want alice's and admin's", n, err)
			}
			for _, s := range []Session{alice, admin, other} {
				m, _, _ := e.store.Record(ctx, crdt.SessionKey(s.ID))
				if got := crdt.ReadSessionMeta(s.ID, &m).Revoked; got != (s.ID != other.ID) {
					t.Errorf("%s's session of %s revoked: %v", s.Subject, s.ID, got)
				}
			}
			if n, err := e.sessions.RevokeEnded(ctx, "shop"); err != nil || n != 0 {
				t.Errorf("RevokeEnded again = %d, %v; want none", n, err)
			}

			// Within the end's window, on a node that holds the end: not ended.
			e.now.Advance(time.Second)
			fresh := create("shop", "alice")
			if _, err := e.sessions.AuthenticateToken(ctx, fresh.UserID, fresh.ID, 0, false); err != nil {
				t.Errorf("a session made after the end: %v", err)
			}
			list, err := e.sessions.SubjectSessions(ctx, "shop", "alice")
			if err != nil || len(list) != 1 || list[0].ID != fresh.ID {
				t.Errorf("alice's sessions after the end: %+v, %v; want only the new one", list, err)
			}
			p, err := e.sessions.AuthenticateToken(ctx, fresh.UserID, fresh.ID, 0, false)
			if err != nil {
				t.Fatal(err)
			}
			if own, err := e.sessions.List(ctx, p); err != nil || len(own) != 1 || own[0].ID != fresh.ID {
				t.Errorf("alice's own list after the end: %+v, %v; want only the new one", own, err)
			}
		})
	}
	e := newTestEnv(t)
	_, err := e.apps.EndSessions(ctx, "nobody")
	wantCode(t, err, ENotFound)
	_, err = e.apps.EndSessions(ctx, "Shop!")
	wantCode(t, err, EInvalid)
}
