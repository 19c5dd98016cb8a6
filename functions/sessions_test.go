package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestSessionsLogin(t *testing.T) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		e := newTestEnv(t)
		u := e.mustRegister(t, "alice", testPassword)
		e.now.Advance(time.Minute)
		login := testEpoch.Add(time.Minute)
		s, err := e.sessions.Login(ctx, Login{Username: "alice", Password: testPassword})
		if err != nil {
			t.Fatalf("Login: %v", err)
		}
		if len(s.ID) != 32 {
			t.Errorf("ID=%q, want 32 hex digits", s.ID)
		}
		if s.UserID != u.ID {
			t.Errorf("UserID=%q, want %q", s.UserID, u.ID)
		}
		// The user's records live together, in its name's partition (crdt.KeyHomes).
		if p := crdt.NamePartition("alice"); crdt.IDPartition(u.ID) != p || crdt.IDPartition(s.ID) != p {
			t.Errorf("user %q and session %q placed in %d and %d, want the name's partition %d",
				u.ID, s.ID, crdt.IDPartition(u.ID), crdt.IDPartition(s.ID), p)
		}
		if s.Username != "alice" {
			t.Errorf("Username=%q, want %q", s.Username, "alice")
		}
		for _, tc := range []struct {
			field     string
			got, want time.Time
		}{
			{"CreatedAt", s.CreatedAt, login},
			{"LastUsedAt", s.LastUsedAt, login},
			{"ExpiresAt", s.ExpiresAt, login.Add(testTTL)},
			{"IdleExpiresAt", s.IdleExpiresAt, login.Add(testIdleTTL)},
		} {
			if !tc.got.Equal(tc.want) {
				t.Errorf("%s=%v, want %v", tc.field, tc.got, tc.want)
			}
		}
		if s.Data == nil || len(s.Data) != 0 {
			t.Errorf("Data=%v, want an empty, non-nil map", s.Data)
		}
		if s.Current {
			t.Errorf("Current=%v, want false outside List", s.Current)
		}
		p, err := e.sessions.Authenticate(ctx, u.ID, s.ID)
		if err != nil {
			t.Fatalf("Authenticate the new session: %v", err)
		}
		if want := (Principal{UserID: u.ID, Username: "alice", SessionID: s.ID}); p.UserID != want.UserID || p.Username != want.Username || p.SessionID != want.SessionID {
			t.Errorf("Authenticate=%+v, want %+v", p, want)
		}
		s2, _ := e.mustLogin(t, "alice", testPassword)
		if s2.ID == s.ID {
			t.Errorf("second Login ID=%q, want a new session", s2.ID)
		}
	})

	t.Run("ErrUnauthorized", func(t *testing.T) {
		e := newTestEnv(t)
		e.mustRegister(t, "alice", testPassword)
		long := strings.Repeat("p", MaxPassword)
		e.mustRegister(t, "bob", long)
		_, refErr := e.sessions.Login(ctx, Login{Username: "alice", Password: "wrong password"})
		wantCode(t, refErr, EUnauthorized)
		for _, tc := range []struct{ name, username, password string }{
			{"WrongPassword", "alice", "wrong password"},
			{"UnknownUser", "carol", testPassword},
			{"PasswordCase", "alice", strings.ToUpper(testPassword)},
			{"PasswordPrefix", "alice", testPassword[:len(testPassword)-1]},
			{"LongPasswordLastByte", "bob", long[:MaxPassword-1] + "q"},
			{"LongPasswordPrefix", "bob", long[:MaxPassword-1]},
			{"LongPasswordExtended", "bob", long + "p"},
			{"EmptyUsername", "", testPassword},
			{"UppercaseUsername", "Alice", testPassword},
			{"ShortPassword", "alice", "short"},
			{"EmptyPassword", "alice", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := e.sessions.Login(ctx, Login{Username: tc.username, Password: tc.password})
				wantCode(t, err, EUnauthorized)
				// Unknown users, bad input and wrong passwords are indistinguishable.
				if got, want := ErrorMessage(err), ErrorMessage(refErr); got != want {
					t.Errorf("ErrorMessage=%q, want %q", got, want)
				}
			})
		}
		all, _ := e.store.UserSessions(ctx, "")
		if len(all) != 0 {
			t.Errorf("failed logins left %d session records, want 0", len(all))
		}
	})

	t.Run("ErrInternal", func(t *testing.T) {
		e := newTestEnv(t)
		e.mustRegister(t, "alice", testPassword)
		e.store.setErr(errBoom)
		_, err := e.sessions.Login(ctx, Login{Username: "alice", Password: testPassword})
		wantCode(t, err, EInternal)
	})
}

// TestSessionsLoginUsernameConflict registers one name in two partitions. Once the
// replicas meet, the earlier claim (by HLC, then node) owns the name and signs in; the
// later gets EUsernameConflict, whichever claim this replica heard of first.
func TestSessionsLoginUsernameConflict(t *testing.T) {
	ctx := context.Background()
	at := func(d time.Duration, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: testEpoch.Add(d).UnixNano(), Node: node}
	}
	type claim struct {
		id, password string
		ts           crdt.Timestamp
	}
	x := claim{"x", "password-x", at(-time.Second, 2)}
	y := claim{"y", "password-y", at(time.Second, 3)}
	tieLow := claim{"x", "password-x", at(0, 2)}
	tieHigh := claim{"y", "password-y", at(0, 3)}

	for _, tc := range []struct {
		name          string
		claims        []claim // in the order this replica receives them
		winner, loser claim
	}{
		{"EarlierReceivedFirst", []claim{x, y}, x, y},
		{"LaterReceivedFirst", []claim{y, x}, x, y},
		{"SameWall/LowerNodeReceivedFirst", []claim{tieLow, tieHigh}, tieLow, tieHigh},
		{"SameWall/HigherNodeReceivedFirst", []claim{tieHigh, tieLow}, tieLow, tieHigh},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			for _, c := range tc.claims {
				e.claimElsewhere(t, c.id, "alice", c.password, c.ts)
			}
			s, err := e.sessions.Login(ctx, Login{Username: "alice", Password: tc.winner.password})
			if err != nil {
				t.Fatalf("Login as the earlier claimant: %v", err)
			}
			if s.UserID != tc.winner.id {
				t.Errorf("UserID=%q, want %q", s.UserID, tc.winner.id)
			}
			_, err = e.sessions.Login(ctx, Login{Username: "alice", Password: tc.loser.password})
			wantCode(t, err, EUsernameConflict)
			_, err = e.sessions.Login(ctx, Login{Username: "alice", Password: "neither password"})
			wantCode(t, err, EUnauthorized)
			if u, err := e.users.Lookup(ctx, "alice"); err != nil || u.ID != tc.winner.id {
				t.Errorf("Lookup(alice)=%q, %v, want %q", u.ID, err, tc.winner.id)
			}
		})
	}

	// One claim made here through Register (at testEpoch on node 1), the other arriving by
	// replication afterwards.
	for _, tc := range []struct {
		name       string
		remote     crdt.Timestamp
		localWins  bool
		remoteCode string
	}{
		{"RegisteredHereFirst", at(time.Second, 2), true, EUsernameConflict},
		{"RegisteredElsewhereFirst", at(-time.Second, 2), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			local := e.mustRegister(t, "alice", "password-local")
			e.claimElsewhere(t, "remote", "alice", "password-remote", tc.remote)

			ls, lerr := e.sessions.Login(ctx, Login{Username: "alice", Password: "password-local"})
			rs, rerr := e.sessions.Login(ctx, Login{Username: "alice", Password: "password-remote"})
			winner, winErr, loseErr, wantID := ls, lerr, rerr, local.ID
			if !tc.localWins {
				winner, winErr, loseErr, wantID = rs, rerr, lerr, "remote"
			}
			if winErr != nil {
				t.Fatalf("Login as the earlier claimant: %v", winErr)
			}
			if winner.UserID != wantID {
				t.Errorf("UserID=%q, want %q", winner.UserID, wantID)
			}
			wantCode(t, loseErr, EUsernameConflict)
			_, err := e.users.Register(ctx, Register{Username: "alice", Password: testPassword})
			wantCode(t, err, EUsernameTaken)
		})
	}
}

// TestSessionsLoginWinnerRecordPending: this replica has heard of the earlier claim on a
// name but not yet of that user's record. The later claimant still loses: the first claim
// wins before its record arrives.
func TestSessionsLoginWinnerRecordPending(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	early := crdt.Timestamp{Wall: testEpoch.Add(-time.Second).UnixNano(), Node: 2}
	e.store.merge(crdt.ClaimKey("alice"), crdt.NewClaim("early", early))
	e.claimElsewhere(t, "late", "alice", "password-late", crdt.Timestamp{Wall: testEpoch.UnixNano(), Node: 3})
	_, err := e.sessions.Login(ctx, Login{Username: "alice", Password: "password-late"})
	wantCode(t, err, EUsernameConflict)
	if u, err := e.users.Lookup(ctx, "alice"); err != nil || u.ID != "early" {
		t.Errorf("Lookup(alice)=%q, %v, want %q", u.ID, err, "early")
	}
}

// TestSessionsMaxPerUserIdle: sessions that idled out count against the cap until they
// expire, so a sign-in beyond it revokes the oldest of them (which sheds its data);
// otherwise signing in at a pace that lets each session idle out would keep every one,
// with its data, for its whole absolute lifetime. A session that the user's sign-out
// everywhere revokes without carrying the flag (it arrived after) gets the flag.
func TestSessionsMaxPerUserIdle(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	var first Session
	for i := range MaxSessionsPerUser {
		s, _ := e.mustLogin(t, "alice", testPassword)
		if i == 0 {
			first = s
		}
	}
	e.now.Advance(testIdleTTL + time.Minute) // every one idled out; none expired
	_, p := e.mustLogin(t, "alice", testPassword)
	if !e.sessionRecord(t, first.ID).Revoked {
		t.Errorf("the oldest idle session is not revoked after sign-in %d", MaxSessionsPerUser+1)
	}
	held, err := e.store.UserSessions(ctx, p.UserID)
	if err != nil || len(held) != MaxSessionsPerUser {
		t.Errorf("UserSessions = %d sessions, %v; want %d", len(held), err, MaxSessionsPerUser)
	}

	// A session created before a sign-out everywhere that arrives after it.
	if err := e.sessions.RevokeAll(ctx, p); err != nil {
		t.Fatalf("RevokeAll: %v", err)
	}
	late := crdt.NewSession(p.UserID, testEpoch.Add(testTTL), testIdleTTL, crdt.Timestamp{Wall: e.now.Now().Add(-time.Hour).UnixNano(), Node: 9})
	e.store.merge(crdt.SessionKey("late"), late)
	e.mustLogin(t, "alice", testPassword)
	if !e.sessionRecord(t, "late").Revoked {
		t.Errorf("a session the sign-out everywhere revokes has no revoked flag after the next sign-in")
	}
}

func TestSessionsMaxPerUser(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	e.mustRegister(t, "bob", testPassword)
	_, bob := e.mustLogin(t, "bob", testPassword)

	var ids []string // oldest first
	var p Principal
	for range MaxSessionsPerUser {
		var s Session
		s, p = e.mustLogin(t, "alice", testPassword)
		ids = append(ids, s.ID)
	}
	list, err := e.sessions.List(ctx, p)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != MaxSessionsPerUser {
		t.Fatalf("len(List)=%d, want %d", len(list), MaxSessionsPerUser)
	}

	s, p := e.mustLogin(t, "alice", testPassword)
	list, err = e.sessions.List(ctx, p)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != MaxSessionsPerUser {
		t.Errorf("len(List)=%d after login %d, want %d", len(list), MaxSessionsPerUser+1, MaxSessionsPerUser)
	}
	if list[0].ID != s.ID {
		t.Errorf("List[0].ID=%q, want the newest session %q", list[0].ID, s.ID)
	}
	if slices.ContainsFunc(list, func(s Session) bool { return s.ID == ids[0] }) {
		t.Errorf("List holds the oldest session %q, want it revoked", ids[0])
	}
	_, err = e.sessions.Authenticate(ctx, p.UserID, ids[0])
	wantCode(t, err, EUnauthorized)
	if _, err := e.sessions.Authenticate(ctx, p.UserID, ids[1]); err != nil {
		t.Errorf("Authenticate the second oldest session: %v", err)
	}
	if _, err := e.sessions.Authenticate(ctx, bob.UserID, bob.SessionID); err != nil {
		t.Errorf("Authenticate another user's session: %v", err)
	}
}

func TestSessionsAuthenticate(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*testEnv, Principal) {
		e := newTestEnv(t)
		e.mustRegister(t, "alice", testPassword)
		_, p := e.mustLogin(t, "alice", testPassword)
		return e, p
	}
	auth := func(e *testEnv, p Principal) error {
		_, err := e.sessions.Authenticate(ctx, p.UserID, p.SessionID)
		return err
	}

	t.Run("OK", func(t *testing.T) {
		e, p := setup(t)
		got, err := e.sessions.Authenticate(ctx, p.UserID, p.SessionID)
		if err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		if got.UserID != p.UserID || got.Username != p.Username || got.SessionID != p.SessionID {
			t.Errorf("Authenticate=%+v, want %+v", got, p)
		}
	})

	t.Run("ErrUnauthorized/Revoked", func(t *testing.T) {
		e, p := setup(t)
		if err := e.sessions.Revoke(ctx, p, p.SessionID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("ErrUnauthorized/UnknownSession", func(t *testing.T) {
		e, p := setup(t)
		p.SessionID = "nope"
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("ErrUnauthorized/UnknownUser", func(t *testing.T) {
		e, p := setup(t)
		p.UserID = "nobody"
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("ErrUnauthorized/AnotherUsersSession", func(t *testing.T) {
		e, alice := setup(t)
		e.mustRegister(t, "bob", testPassword)
		_, bob := e.mustLogin(t, "bob", testPassword)
		wantCode(t, auth(e, Principal{UserID: bob.UserID, SessionID: alice.SessionID}), EUnauthorized)
		wantCode(t, auth(e, Principal{UserID: alice.UserID, SessionID: bob.SessionID}), EUnauthorized)
	})

	t.Run("ErrUnauthorized/IdleExpired", func(t *testing.T) {
		e, p := setup(t)
		e.now.Advance(testIdleTTL)
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("OK/UseSlidesIdleExpiry", func(t *testing.T) {
		e, p := setup(t)
		for i := range 3 {
			e.now.Advance(testIdleTTL - time.Nanosecond)
			if err := auth(e, p); err != nil {
				t.Fatalf("Authenticate after idling %d×(IdleTTL-1ns): %v", i+1, err)
			}
		}
		s, err := e.sessions.Current(ctx, p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		if want := e.now.Now(); !s.LastUsedAt.Equal(want) {
			t.Errorf("LastUsedAt=%v, want %v", s.LastUsedAt, want)
		}
		if want := e.now.Now().Add(testIdleTTL); !s.IdleExpiresAt.Equal(want) {
			t.Errorf("IdleExpiresAt=%v, want %v", s.IdleExpiresAt, want)
		}
		e.now.Advance(testIdleTTL)
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("ErrUnauthorized/Expired", func(t *testing.T) {
		e, p := setup(t)
		for elapsed := time.Hour; elapsed < testTTL; elapsed += time.Hour {
			e.now.Advance(time.Hour)
			if err := auth(e, p); err != nil {
				t.Fatalf("Authenticate %v after login: %v", elapsed, err)
			}
		}
		e.now.Advance(time.Hour - time.Nanosecond)
		if err := auth(e, p); err != nil {
			t.Fatalf("Authenticate 1ns before TTL: %v", err)
		}
		s, err := e.sessions.Current(ctx, p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		if want := testEpoch.Add(testTTL); !s.ExpiresAt.Equal(want) || !s.IdleExpiresAt.Equal(want) {
			t.Errorf("ExpiresAt=%v, IdleExpiresAt=%v, want both %v", s.ExpiresAt, s.IdleExpiresAt, want)
		}
		e.now.Advance(time.Nanosecond)
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("ErrUnauthorized/ErasedUser", func(t *testing.T) {
		e, p := setup(t)
		if err := e.users.Delete(ctx, p.UserID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantCode(t, auth(e, p), EUnauthorized)
	})

	t.Run("RevokeAll", func(t *testing.T) {
		e, p1 := setup(t)
		_, p2 := e.mustLogin(t, "alice", testPassword)
		e.mustRegister(t, "bob", testPassword)
		_, bob := e.mustLogin(t, "bob", testPassword)
		if err := e.sessions.RevokeAll(ctx, p1); err != nil {
			t.Fatalf("RevokeAll: %v", err)
		}
		wantCode(t, auth(e, p1), EUnauthorized)
		wantCode(t, auth(e, p2), EUnauthorized)
		if err := auth(e, bob); err != nil {
			t.Errorf("Authenticate another user's session: %v", err)
		}
		// The sessions held here carry the revocation themselves, so storage sheds their
		// data now, not when they expire; another user's do not.
		for id, want := range map[string]bool{p1.SessionID: true, p2.SessionID: true, bob.SessionID: false} {
			m := e.store.record(crdt.SessionKey(id))
			if _, revoked := m.Flag(crdt.FieldRevoked); revoked != want {
				t.Errorf("session %s revoked flag = %v, want %v", id, revoked, want)
			}
		}
		// A session created afterwards, even within the same physical instant, is usable.
		_, p3 := e.mustLogin(t, "alice", testPassword)
		if err := auth(e, p3); err != nil {
			t.Fatalf("Authenticate a session created after RevokeAll: %v", err)
		}
		list, err := e.sessions.List(ctx, p3)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(list) != 1 || list[0].ID != p3.SessionID {
			t.Errorf("List=%v, want only %q", sessionIDs(list), p3.SessionID)
		}
	})

	t.Run("TouchAtMostOncePerTouchEvery", func(t *testing.T) {
		e, p := setup(t)
		base := e.store.updateCount()
		check := func(what string, want int) {
			t.Helper()
			if err := auth(e, p); err != nil {
				t.Fatalf("Authenticate %s: %v", what, err)
			}
			if got := e.store.updateCount() - base; got != want {
				t.Errorf("%s: Update calls=%d, want %d", what, got, want)
			}
		}
		check("right after login", 0)
		check("again", 0)
		e.now.Advance(testTouchEvery - time.Nanosecond)
		check("1ns before TouchEvery", 0)
		e.now.Advance(time.Nanosecond)
		check("at TouchEvery", 1)
		check("right after the touch", 1)
		e.now.Advance(testTouchEvery / 2)
		check("half a TouchEvery after the touch", 1)
		e.now.Advance(testTouchEvery / 2)
		check("a TouchEvery after the touch", 2)
		if s, err := e.sessions.Current(ctx, p); err != nil || !s.LastUsedAt.Equal(testEpoch.Add(2*testTouchEvery)) {
			t.Errorf("LastUsedAt=%v, %v, want %v", s.LastUsedAt, err, testEpoch.Add(2*testTouchEvery))
		}
	})
}

func TestSessionsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		s                     Sessions
		ttl, idle, touchEvery time.Duration
	}{
		{"Zero", Sessions{}, 24 * time.Hour, 2 * time.Hour, time.Minute},
		{"ShortIdle", Sessions{IdleTTL: 10 * time.Minute}, 24 * time.Hour, 10 * time.Minute, 30 * time.Second},
		{"Set", Sessions{TTL: time.Hour, IdleTTL: time.Minute, TouchEvery: time.Second}, time.Hour, time.Minute, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.ttl(); got != tc.ttl {
				t.Errorf("ttl()=%v, want %v", got, tc.ttl)
			}
			if got := tc.s.idleTTL(); got != tc.idle {
				t.Errorf("idleTTL()=%v, want %v", got, tc.idle)
			}
			if got := tc.s.touchEvery(); got != tc.touchEvery {
				t.Errorf("touchEvery()=%v, want %v", got, tc.touchEvery)
			}
		})
	}
}

func TestSessionsCurrent(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	login, p := e.mustLogin(t, "alice", testPassword)
	t.Run("OK", func(t *testing.T) {
		s, err := e.sessions.Current(ctx, p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		if s.ID != login.ID || s.UserID != login.UserID || s.Username != "alice" || !s.CreatedAt.Equal(login.CreatedAt) {
			t.Errorf("Current=%+v, want %+v", s, login)
		}
	})
	t.Run("ErrUnauthorized", func(t *testing.T) {
		if err := e.sessions.Revoke(ctx, p, p.SessionID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		_, err := e.sessions.Current(ctx, p)
		wantCode(t, err, EUnauthorized)
	})
}

// TestSessionOfRecord: the session view Current builds from the record and its meta is
// the one sessionOf builds from crdt.ReadSession, for records with and without data,
// deleted keys and an origin.
func TestSessionOfRecord(t *testing.T) {
	ts := func(wall int64) crdt.Timestamp { return crdt.Timestamp{Wall: testEpoch.UnixNano() + wall, Node: 1} }
	base := crdt.NewSession("u1", testEpoch.Add(24*time.Hour), time.Hour, ts(1))
	withData := base.Clone()
	withData.Set(crdt.DataPrefix+"theme", []byte(`"dark"`), ts(2))
	withData.Set(crdt.DataPrefix+"cart", []byte(`[1,2]`), ts(2))
	withData.Delete(crdt.DataPrefix+"gone", ts(3))
	withData.Merge(crdt.SessionOrigin(crdt.Origin{Device: "Firefox on Linux", ClientAddr: "192.0.2.1", Region: "eu", Node: "eu-1"}, ts(1)))
	for name, m := range map[string]crdt.Map{"Bare": base, "DataAndOrigin": withData} {
		t.Run(name, func(t *testing.T) {
			u := crdt.User{ID: "u1", Username: "alice"}
			want := sessionOf(crdt.ReadSession("s1", &m), u)
			got := sessionOfRecord(crdt.ReadSessionMeta("s1", &m), &m, u)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("sessionOfRecord=%+v, want %+v", got, want)
			}
		})
	}
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

// jsonString returns a JSON string that encodes to exactly n bytes (n ≥ 2).
func jsonString(n int) json.RawMessage {
	return raw(`"` + strings.Repeat("x", n-2) + `"`)
}

func dataOf(s Session) map[string]string {
	out := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out
}

func TestSessionsPatchData(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*testEnv, Principal) {
		e := newTestEnv(t)
		e.mustRegister(t, "alice", testPassword)
		_, p := e.mustLogin(t, "alice", testPassword)
		return e, p
	}
	mustPatch := func(t *testing.T, e *testEnv, p Principal, patch DataPatch) Session {
		t.Helper()
		s, err := e.sessions.PatchData(ctx, p, patch)
		if err != nil {
			t.Fatalf("PatchData: %v", err)
		}
		return s
	}
	wantData := func(t *testing.T, s Session, want map[string]string) {
		t.Helper()
		if got := dataOf(s); !maps.Equal(got, want) {
			t.Errorf("Data=%v, want %v", got, want)
		}
	}

	t.Run("OK", func(t *testing.T) {
		e, p := setup(t)
		e.now.Advance(5 * time.Minute)
		s := mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"dark"`), "cart": raw(`[1,2]`)}})
		wantData(t, s, map[string]string{"theme": `"dark"`, "cart": `[1,2]`})
		if want := testEpoch.Add(5 * time.Minute); !s.LastUsedAt.Equal(want) {
			t.Errorf("LastUsedAt=%v, want %v (an update is a use)", s.LastUsedAt, want)
		}
		cur, err := e.sessions.Current(ctx, p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		wantData(t, cur, map[string]string{"theme": `"dark"`, "cart": `[1,2]`})

		s = mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"light"`)}})
		wantData(t, s, map[string]string{"theme": `"light"`, "cart": `[1,2]`})
	})

	t.Run("OK/Delete", func(t *testing.T) {
		e, p := setup(t)
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"dark"`), "cart": raw(`[1,2]`)}})
		s := mustPatch(t, e, p, DataPatch{Delete: []string{"theme", "never-set"}})
		wantData(t, s, map[string]string{"cart": `[1,2]`})
		m := e.store.record(crdt.SessionKey(p.SessionID))
		if f, ok := m.Field(crdt.DataPrefix + "theme"); !ok || !f.Deleted {
			t.Errorf("field %q=%+v, %v, want a tombstone", crdt.DataPrefix+"theme", f, ok)
		}
		// Deleting a key that has no value writes nothing: the record does not grow.
		if f, ok := m.Field(crdt.DataPrefix + "never-set"); ok {
			t.Errorf("field %q=%+v, want none", crdt.DataPrefix+"never-set", f)
		}
		cur, _ := e.sessions.Current(ctx, p)
		wantData(t, cur, map[string]string{"cart": `[1,2]`})
		// A later set brings the key back.
		s = mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"blue"`)}})
		wantData(t, s, map[string]string{"cart": `[1,2]`, "theme": `"blue"`})
	})

	t.Run("OK/Empty", func(t *testing.T) {
		e, p := setup(t)
		before := e.store.updateCount()
		s := mustPatch(t, e, p, DataPatch{})
		if s.ID != p.SessionID {
			t.Errorf("ID=%q, want %q", s.ID, p.SessionID)
		}
		if got := e.store.updateCount() - before; got != 0 {
			t.Errorf("Update calls=%d, want 0", got)
		}
	})

	t.Run("OK/Bounds", func(t *testing.T) {
		e, p := setup(t)
		key := strings.Repeat("k", MaxDataKey)
		s := mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{
			key:       raw(`1`),
			"big":     jsonString(MaxDataValue),
			"unicode": raw(`"ü"`),
			"ключ ✓":  raw(`{"nested":[true,false,{"a":1.5e3}]}`),
		}})
		if len(s.Data) != 4 || len(s.Data["big"]) != MaxDataValue {
			t.Errorf("Data has %d keys, big is %d bytes, want 4 and %d", len(s.Data), len(s.Data["big"]), MaxDataValue)
		}
	})

	for _, tc := range []struct {
		name  string
		patch DataPatch
		code  string
	}{
		{"ErrInvalid/NotJSON", DataPatch{Set: map[string]json.RawMessage{"k": raw(`{`)}}, EInvalid},
		{"ErrInvalid/BareWord", DataPatch{Set: map[string]json.RawMessage{"k": raw(`dark`)}}, EInvalid},
		{"ErrInvalid/EmptyValue", DataPatch{Set: map[string]json.RawMessage{"k": raw(``)}}, EInvalid},
		{"ErrInvalid/NilValue", DataPatch{Set: map[string]json.RawMessage{"k": nil}}, EInvalid},
		{"ErrInvalid/TwoValues", DataPatch{Set: map[string]json.RawMessage{"k": raw(`1 2`)}}, EInvalid},
		{"ErrInvalid/Null", DataPatch{Set: map[string]json.RawMessage{"k": raw(`null`)}}, EInvalid},
		{"ErrInvalid/NullWithSpace", DataPatch{Set: map[string]json.RawMessage{"k": raw(" null\n")}}, EInvalid},
		{"ErrInvalid/EmptyKey", DataPatch{Set: map[string]json.RawMessage{"": raw(`1`)}}, EInvalid},
		{"ErrInvalid/LongKey", DataPatch{Set: map[string]json.RawMessage{strings.Repeat("k", MaxDataKey+1): raw(`1`)}}, EInvalid},
		{"ErrInvalid/KeyControlChar", DataPatch{Set: map[string]json.RawMessage{"a\nb": raw(`1`)}}, EInvalid},
		{"ErrInvalid/KeyDEL", DataPatch{Set: map[string]json.RawMessage{"a\x7fb": raw(`1`)}}, EInvalid},
		{"ErrInvalid/KeyC1", DataPatch{Set: map[string]json.RawMessage{"a\u0085b": raw(`1`)}}, EInvalid},
		{"ErrInvalid/KeyInvalidUTF8", DataPatch{Set: map[string]json.RawMessage{"a\xffb": raw(`1`)}}, EInvalid},
		{"ErrInvalid/DeleteEmptyKey", DataPatch{Delete: []string{""}}, EInvalid},
		{"ErrInvalid/DeleteLongKey", DataPatch{Delete: []string{strings.Repeat("k", MaxDataKey+1)}}, EInvalid},
		{"ErrInvalid/OneBadKeyOfMany", DataPatch{Set: map[string]json.RawMessage{"a": raw(`1`), "b": raw(`{`)}}, EInvalid},
		{"ErrTooLarge/Value", DataPatch{Set: map[string]json.RawMessage{"k": jsonString(MaxDataValue + 1)}}, ETooLarge},
		{"ErrTooLarge/KeysInOneUpdate", DataPatch{Set: manyKeys("k", MaxDataKeys+1)}, ETooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, p := setup(t)
			mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"keep": raw(`true`)}})
			before := e.store.record(crdt.SessionKey(p.SessionID))
			_, err := e.sessions.PatchData(ctx, p, tc.patch)
			wantCode(t, err, tc.code)
			if after := e.store.record(crdt.SessionKey(p.SessionID)); !after.Equal(before) {
				t.Errorf("session record changed by a refused update")
			}
		})
	}

	// A flood of deletes of keys never set, then of keys set and deleted in turn: the
	// record holds at most MaxDataNames key names, tombstones included, and a write beyond
	// that is refused with nothing stored changed.
	t.Run("ErrTooLarge/DeletedNames", func(t *testing.T) {
		e, p := setup(t)
		var never []string
		for i := range MaxDataKeys {
			never = append(never, fmt.Sprintf("never-%d", i))
		}
		key := crdt.SessionKey(p.SessionID)
		before := e.store.record(key)
		for range 4 {
			mustPatch(t, e, p, DataPatch{Delete: never})
		}
		if after := e.store.record(key); after.Len() != before.Len() {
			t.Fatalf("record has %d fields after deleting keys never set, want %d", after.Len(), before.Len())
		}
		for round := 0; round < MaxDataNames/MaxDataKeys; round++ {
			keys := manyKeys(fmt.Sprintf("r%d-", round), MaxDataKeys)
			mustPatch(t, e, p, DataPatch{Set: keys})
			mustPatch(t, e, p, DataPatch{Delete: slices.Collect(maps.Keys(keys))})
		}
		full := e.store.record(key)
		if _, _, deleted := crdt.SessionDataSize(&full); deleted != MaxDataNames {
			t.Fatalf("%d tombstones, want %d", deleted, MaxDataNames)
		}
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"one-more": raw(`1`)}})
		wantCode(t, err, ETooLarge)
		if after := e.store.record(key); !after.Equal(full) {
			t.Errorf("session record changed by a refused update")
		}
		// A key deleted before can be set again: that adds no name.
		s := mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"r0-000": raw(`2`)}})
		wantData(t, s, map[string]string{"r0-000": `2`})
	})

	t.Run("ErrTooLarge/TotalSize", func(t *testing.T) {
		e, p := setup(t)
		// Four one-byte keys and their values fill MaxSessionData exactly.
		full := map[string]json.RawMessage{
			"a": jsonString(MaxDataValue), "b": jsonString(MaxDataValue), "c": jsonString(MaxDataValue),
			"d": jsonString(MaxSessionData - 4 - 3*MaxDataValue),
		}
		s := mustPatch(t, e, p, DataPatch{Set: full})
		if n := sessionDataSize(s); n != MaxSessionData {
			t.Fatalf("data size=%d, want %d", n, MaxSessionData)
		}
		before := e.store.record(crdt.SessionKey(p.SessionID))
		for name, patch := range map[string]DataPatch{
			"NewKey":              {Set: map[string]json.RawMessage{"e": raw(`1`)}},
			"GrowValue":           {Set: map[string]json.RawMessage{"d": jsonString(MaxSessionData - 4 - 3*MaxDataValue + 1)}},
			"NewKeyBesideADelete": {Set: map[string]json.RawMessage{"ee": raw(`1`)}, Delete: []string{"nope"}},
		} {
			_, err := e.sessions.PatchData(ctx, p, patch)
			if got := ErrorCode(err); got != ETooLarge {
				t.Errorf("%s: ErrorCode=%q, want %q", name, got, ETooLarge)
			}
		}
		if after := e.store.record(crdt.SessionKey(p.SessionID)); !after.Equal(before) {
			t.Errorf("session record changed by a refused update")
		}
		cur, _ := e.sessions.Current(ctx, p)
		if len(cur.Data) != 4 {
			t.Errorf("len(Data)=%d, want 4", len(cur.Data))
		}
		// Replacing a value with one of the same size, or freeing room first, is fine.
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"a": jsonString(MaxDataValue)}})
		s = mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"e": raw(`1`)}, Delete: []string{"a"}})
		if _, ok := s.Data["a"]; ok || string(s.Data["e"]) != "1" {
			t.Errorf("Data keys=%v, want a deleted and e set", slices.Sorted(maps.Keys(s.Data)))
		}
	})

	// Writes through two nodes at once each pass the bound on size, and their merge does
	// not (found by an outside review): every later patch was refused until keys were
	// deleted. A patch that gives no key a new or longer value now goes through; one that
	// does is still refused, with nothing changed.
	t.Run("OverAfterMerge", func(t *testing.T) {
		e, p := setup(t)
		key := crdt.SessionKey(p.SessionID)
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"a": jsonString(MaxDataValue), "b": jsonString(MaxDataValue / 2)}})
		var elsewhere crdt.Map                     // the other node's concurrent write, replicated here
		other := crdt.Timestamp{Wall: 1, Node: 99} // before anything this node stamps
		elsewhere.Set(crdt.DataPrefix+"c", jsonString(MaxDataValue), other)
		elsewhere.Set(crdt.DataPrefix+"d", jsonString(MaxDataValue), other)
		elsewhere.Set(crdt.DataPrefix+"e", jsonString(MaxDataValue), other)
		elsewhere.Set(crdt.DataPrefix+"g", jsonString(MaxDataValue), other)
		e.store.merge(key, elsewhere)
		over := e.store.record(key)
		if _, size, _ := crdt.SessionDataSize(&over); size <= MaxSessionData {
			t.Fatalf("data size %d after the merge, want over %d", size, MaxSessionData)
		}
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"f": raw(`1`)}})
		wantCode(t, err, ETooLarge)
		if after := e.store.record(key); !after.Equal(over) {
			t.Errorf("session record changed by a refused update")
		}
		// Nor a new key beside a value shrunk by more, though the total falls: two such
		// patches through two nodes at once would merge into more than either (each
		// shrinks a, each adds its own key).
		_, err = e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"a": raw(`1`), "f": raw(`1`)}})
		wantCode(t, err, ETooLarge)
		_, err = e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"b": jsonString(MaxDataValue/2 + 1)}}) // a longer value
		wantCode(t, err, ETooLarge)
		if after := e.store.record(key); !after.Equal(over) {
			t.Errorf("session record changed by a refused update")
		}
		s := mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"b": raw(`2`)}, Delete: []string{"a"}}) // shrinks, still over
		if _, ok := s.Data["a"]; ok || string(s.Data["b"]) != "2" {
			t.Errorf("Data keys=%v, want a deleted and b shrunk", slices.Sorted(maps.Keys(s.Data)))
		}
		mustPatch(t, e, p, DataPatch{Delete: []string{"c"}})
		// Back within the bound (three values of MaxDataValue and a small one), anything
		// within it goes.
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`1`)}})
	})

	t.Run("ErrTooLarge/Keys", func(t *testing.T) {
		e, p := setup(t)
		s := mustPatch(t, e, p, DataPatch{Set: manyKeys("k", MaxDataKeys)})
		if len(s.Data) != MaxDataKeys {
			t.Fatalf("len(Data)=%d, want %d", len(s.Data), MaxDataKeys)
		}
		before := e.store.record(crdt.SessionKey(p.SessionID))
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"one-more": raw(`1`)}})
		wantCode(t, err, ETooLarge)
		if after := e.store.record(crdt.SessionKey(p.SessionID)); !after.Equal(before) {
			t.Errorf("session record changed by a refused update")
		}
		// At the limit, overwriting a key or swapping one for another is fine.
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"k000": raw(`2`)}})
		s = mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"one-more": raw(`1`)}, Delete: []string{"k001"}})
		if len(s.Data) != MaxDataKeys {
			t.Errorf("len(Data)=%d, want %d", len(s.Data), MaxDataKeys)
		}
	})

	t.Run("ErrUnauthorized/Revoked", func(t *testing.T) {
		e, p := setup(t)
		mustPatch(t, e, p, DataPatch{Set: map[string]json.RawMessage{"keep": raw(`true`)}})
		if err := e.sessions.Revoke(ctx, p, p.SessionID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"dark"`)}})
		wantCode(t, err, EUnauthorized)
		m := e.store.record(crdt.SessionKey(p.SessionID))
		if _, ok := m.Field(crdt.DataPrefix + "theme"); ok {
			t.Errorf("a revoked session's data was written")
		}
	})

	t.Run("ErrUnauthorized/GoneSinceAuthenticate", func(t *testing.T) {
		// The record is swept between Authenticate and the update: the update must not
		// create a session record of data alone.
		e, p := setup(t)
		e.store.mu.Lock()
		delete(e.store.records, crdt.SessionKey(p.SessionID))
		e.store.mu.Unlock()
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"dark"`)}})
		wantCode(t, err, EUnauthorized)
		if m := e.store.record(crdt.SessionKey(p.SessionID)); m.Len() != 0 {
			t.Errorf("update of a vanished session stored %d fields", m.Len())
		}
	})

	t.Run("ErrUnauthorized/Expired", func(t *testing.T) {
		e, p := setup(t)
		e.now.Advance(testIdleTTL)
		_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"theme": raw(`"dark"`)}})
		wantCode(t, err, EUnauthorized)
	})

	t.Run("OK/Concurrent", func(t *testing.T) {
		// Updates of different keys from many requests at once all survive.
		e, p := setup(t)
		const n = 16
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range n {
			wg.Go(func() {
				_, err := e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{fmt.Sprintf("k%d", i): raw(fmt.Sprint(i))}})
				errs <- err
			})
			wg.Go(func() {
				_, err := e.sessions.Authenticate(ctx, p.UserID, p.SessionID)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("concurrent request: %v", err)
			}
		}
		cur, err := e.sessions.Current(ctx, p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		if len(cur.Data) != n {
			t.Errorf("len(Data)=%d, want %d", len(cur.Data), n)
		}
	})
}

// manyKeys returns n keys prefix000, prefix001, … set to 1.
func manyKeys(prefix string, n int) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, n)
	for i := range n {
		out[fmt.Sprintf("%s%03d", prefix, i)] = raw(`1`)
	}
	return out
}

// sessionDataSize returns the size of s's data as the MaxSessionData limit counts it.
func sessionDataSize(s Session) int {
	n := 0
	for k, v := range s.Data {
		n += len(k) + len(v)
	}
	return n
}

func sessionIDs(ss []Session) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	return out
}

func TestSessionsList(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	e.mustRegister(t, "bob", testPassword)
	idle, _ := e.mustLogin(t, "alice", testPassword)
	e.now.Advance(testIdleTTL - time.Minute)
	s1, p1 := e.mustLogin(t, "alice", testPassword)
	e.now.Advance(2 * time.Minute) // idle has now idled out, unused
	s2, _ := e.mustLogin(t, "alice", testPassword)
	e.now.Advance(time.Minute)
	s3, p3 := e.mustLogin(t, "alice", testPassword)
	e.now.Advance(time.Minute)
	e.mustLogin(t, "bob", testPassword)
	if err := e.sessions.Revoke(ctx, p3, s2.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}

	t.Run("OK", func(t *testing.T) {
		list, err := e.sessions.List(ctx, p3)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got, want := sessionIDs(list), []string{s3.ID, s1.ID}; !slices.Equal(got, want) {
			t.Fatalf("List=%q, want %q (active ones, newest first; not %q idled out or %q revoked)", got, want, idle.ID, s2.ID)
		}
		if !list[0].Current || list[1].Current {
			t.Errorf("Current=%v, %v, want true, false", list[0].Current, list[1].Current)
		}
		if list[0].Username != "alice" || list[0].UserID != p3.UserID {
			t.Errorf("List[0]=%+v, want alice's", list[0])
		}
	})

	t.Run("OK/CurrentFollowsCaller", func(t *testing.T) {
		list, err := e.sessions.List(ctx, p1)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(list) != 2 || list[0].Current || !list[1].Current {
			t.Errorf("List=%+v, want the second (%q) current", list, s1.ID)
		}
	})

	t.Run("ErrUnauthorized/ErasedUser", func(t *testing.T) {
		_, err := e.sessions.List(ctx, Principal{UserID: "nobody", SessionID: s1.ID})
		wantCode(t, err, EUnauthorized)
	})
}

func TestSessionsRevoke(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (e *testEnv, alice1, alice2, bob Principal) {
		e = newTestEnv(t)
		e.mustRegister(t, "alice", testPassword)
		e.mustRegister(t, "bob", testPassword)
		_, alice1 = e.mustLogin(t, "alice", testPassword)
		_, alice2 = e.mustLogin(t, "alice", testPassword)
		_, bob = e.mustLogin(t, "bob", testPassword)
		return e, alice1, alice2, bob
	}
	auth := func(e *testEnv, p Principal) error {
		_, err := e.sessions.Authenticate(ctx, p.UserID, p.SessionID)
		return err
	}

	t.Run("OK/Own", func(t *testing.T) {
		e, a1, a2, _ := setup(t)
		if err := e.sessions.Revoke(ctx, a1, a2.SessionID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		wantCode(t, auth(e, a2), EUnauthorized)
		if err := auth(e, a1); err != nil {
			t.Errorf("Authenticate the revoking session: %v", err)
		}
		// Revoking again is harmless, and no use brings it back.
		if err := e.sessions.Revoke(ctx, a1, a2.SessionID); err != nil {
			t.Errorf("Revoke again: %v", err)
		}
		wantCode(t, auth(e, a2), EUnauthorized)
	})

	t.Run("OK/Current", func(t *testing.T) {
		e, a1, a2, _ := setup(t)
		if err := e.sessions.Revoke(ctx, a1, a1.SessionID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		wantCode(t, auth(e, a1), EUnauthorized)
		if err := auth(e, a2); err != nil {
			t.Errorf("Authenticate another session of the user: %v", err)
		}
	})

	t.Run("ErrNotFound/AnotherUsersSession", func(t *testing.T) {
		e, a1, _, bob := setup(t)
		err := e.sessions.Revoke(ctx, a1, bob.SessionID)
		wantCode(t, err, ENotFound)
		if err := auth(e, bob); err != nil {
			t.Errorf("Authenticate the other user's session: %v", err)
		}
		m := e.store.record(crdt.SessionKey(bob.SessionID))
		if _, revoked := m.Flag(crdt.FieldRevoked); revoked {
			t.Errorf("the other user's session record is flagged revoked")
		}
	})

	t.Run("ErrNotFound/Unknown", func(t *testing.T) {
		e, a1, _, _ := setup(t)
		wantCode(t, e.sessions.Revoke(ctx, a1, "nope"), ENotFound)
		if _, ok, _ := e.store.Record(ctx, crdt.SessionKey("nope")); ok {
			t.Errorf("Revoke of an unknown session created a record")
		}
	})
}

// TestSessionsCheckSeesRevocation: the records a Principal carries are for one request;
// Check reads afresh, so a long-lived request notices a revocation made meanwhile.
func TestSessionsCheckSeesRevocation(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.mustRegister(t, "alice", testPassword)
	_, p := e.mustLogin(t, "alice", testPassword)
	if err := e.sessions.Check(ctx, p); err != nil {
		t.Fatalf("Check before revocation: %v", err)
	}
	if err := e.sessions.Revoke(ctx, p, p.SessionID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	wantCode(t, e.sessions.Check(ctx, p), EUnauthorized)
}

// TestSessionsUsernameRaceLoser: an account registered, signed in and chatting in one
// partition loses its name when the earlier claim from the other arrives. Its sessions
// stop working (EUsernameConflict, which says what happened and what to do), and its
// conversations stay distinct from the winner's: shown as alice#<id prefix>, and
// reachable under that name.
func TestSessionsUsernameRaceLoser(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t) // alice registered here, signed in
	loser := e.alice
	e.mustSend(t, loser, "bob", "from the alice that will lose")
	e.claimElsewhere(t, "winner0000000000000000000000000", "alice", "password-winner",
		crdt.Timestamp{Wall: testEpoch.Add(-time.Hour).UnixNano(), Node: 9})

	_, err := e.sessions.Authenticate(ctx, loser.UserID, loser.SessionID)
	wantCode(t, err, EUsernameConflict)
	if !strings.Contains(ErrorMessage(err), "register again") {
		t.Errorf("message %q does not say how to go on", ErrorMessage(err))
	}
	winner, err := e.sessions.Login(ctx, Login{Username: "alice", Password: "password-winner"})
	if err != nil {
		t.Fatalf("winner's Login: %v", err)
	}
	wp, err := e.sessions.Authenticate(ctx, winner.UserID, winner.ID)
	if err != nil {
		t.Fatalf("winner's Authenticate: %v", err)
	}
	e.mustSend(t, wp, "bob", "from the alice that won")

	convs, err := listConversations(ctx, e.messages, e.bob)
	if err != nil {
		t.Fatalf("Conversations: %v", err)
	}
	lostName := "alice#" + loser.UserID[:8]
	var withs []string
	for _, c := range convs {
		withs = append(withs, c.With)
	}
	slices.Sort(withs)
	if want := []string{"alice", lostName}; !slices.Equal(withs, want) {
		t.Fatalf("bob's conversations with %v, want %v", withs, want)
	}
	for name, body := range map[string]string{"alice": "from the alice that won", lostName: "from the alice that will lose"} {
		page, err := e.messages.List(ctx, e.bob, name, "", 0)
		if err != nil || len(page.Messages) != 1 || page.Messages[0].Body != body || page.Messages[0].From != name {
			t.Errorf("List(%q)=%+v, %v, want the one message %q from %q", name, page.Messages, err, body, name)
		}
	}
	for _, bad := range []string{"alice#" + winner.UserID[:8], "alice#zz", "alice#"} {
		_, err := e.messages.List(ctx, e.bob, bad, "", 0)
		wantCode(t, err, ENotFound)
	}
	// The loser may still go: sign out, or erase itself.
	lp, err := e.sessions.AuthenticateToken(ctx, loser.UserID, loser.SessionID, 0, true)
	if err != nil || lp.UserID != loser.UserID {
		t.Fatalf("AuthenticateToken(leaving) = %+v, %v; want the loser's principal", lp, err)
	}
	if err := e.users.Delete(ctx, lp.UserID); err != nil {
		t.Fatalf("the loser erases itself: %v", err)
	}
	convs, err = listConversations(ctx, e.messages, e.bob)
	if err != nil || len(convs) != 1 || convs[0].With != "alice" {
		t.Errorf("bob's conversations after the loser's erasure = %+v, %v; want the winner's alone", convs, err)
	}
}
