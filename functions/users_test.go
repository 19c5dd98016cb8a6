package functions

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

func validProfile() Profile {
	return Profile{FirstName: "Alice", LastName: "Liddell", Email: "alice@example.com", Address: "Daresbury\nCheshire"}
}

// emailOf returns a well-formed address of exactly n bytes.
func emailOf(n int) string {
	const domain = "@example.com"
	return strings.Repeat("a", n-len(domain)) + domain
}

func TestUsersRegister(t *testing.T) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		e := newTestEnv(t)
		u, err := e.users.Register(ctx, Register{Username: "alice", Password: testPassword, Profile: validProfile()})
		if err != nil {
			t.Fatalf("Register: %v", err)
		}
		if u.Username != "alice" {
			t.Errorf("Username=%q, want %q", u.Username, "alice")
		}
		if len(u.ID) != 32 {
			t.Errorf("ID=%q, want 32 hex digits", u.ID)
		}
		if !u.CreatedAt.Equal(testEpoch) {
			t.Errorf("CreatedAt=%v, want %v", u.CreatedAt, testEpoch)
		}
		if u.Profile != validProfile() {
			t.Errorf("Profile=%+v, want %+v", u.Profile, validProfile())
		}
		m := e.store.record(crdt.UserKey(u.ID))
		if stored := crdt.ReadUser(u.ID, &m); strings.Contains(stored.PasswordHash, testPassword) ||
			!strings.HasPrefix(stored.PasswordHash, "$argon2id$") {
			t.Errorf("stored PasswordHash=%q, want an argon2id hash", stored.PasswordHash)
		}
		got, err := e.users.Me(ctx, u.ID)
		if err != nil {
			t.Fatalf("Me: %v", err)
		}
		if got != u {
			t.Errorf("Me=%+v, want %+v", got, u)
		}
		if got, err := e.users.Lookup(ctx, "alice"); err != nil || got.ID != u.ID {
			t.Errorf("Lookup(alice)=%q, %v, want %q", got.ID, err, u.ID)
		}
	})

	type tc struct {
		name string
		req  func(r *Register)
		code string
	}
	tcs := []tc{
		{"OK/MinUsername", func(r *Register) { r.Username = "abc" }, ""},
		{"OK/MaxUsername", func(r *Register) { r.Username = strings.Repeat("z", MaxUsername) }, ""},
		{"OK/UsernameCharset", func(r *Register) { r.Username = "a.b-c_d0-9" }, ""},
		{"OK/MinPassword", func(r *Register) { r.Password = strings.Repeat("p", MinPassword) }, ""},
		{"OK/MaxPassword", func(r *Register) { r.Password = strings.Repeat("p", MaxPassword) }, ""},
		{"OK/PasswordCountsBytes", func(r *Register) { r.Password = "ééé" + "aa" }, ""}, // 5 characters, 8 bytes
		{"OK/EmptyProfile", func(r *Register) { r.Profile = Profile{} }, ""},
		{"OK/MaxFirstName", func(r *Register) { r.Profile.FirstName = strings.Repeat("é", MaxNameField/2) }, ""},
		{"OK/MaxLastName", func(r *Register) { r.Profile.LastName = strings.Repeat("x", MaxNameField) }, ""},
		{"OK/MaxEmail", func(r *Register) { r.Profile.Email = emailOf(MaxEmail) }, ""},
		{"OK/MaxAddress", func(r *Register) { r.Profile.Address = strings.Repeat("x", MaxAddress) }, ""},
		{"OK/AddressMultiline", func(r *Register) { r.Profile.Address = "1 Main St\r\n\tSpringfield" }, ""},
		{"OK/Unicode", func(r *Register) { r.Profile.FirstName = "Zoë 李" }, ""},

		{"ErrInvalid/EmptyUsername", func(r *Register) { r.Username = "" }, EInvalid},
		{"ErrInvalid/ShortUsername", func(r *Register) { r.Username = "ab" }, EInvalid},
		{"ErrInvalid/LongUsername", func(r *Register) { r.Username = strings.Repeat("z", MaxUsername+1) }, EInvalid},
		{"ErrInvalid/UppercaseUsername", func(r *Register) { r.Username = "Alice" }, EInvalid},
		{"ErrInvalid/SpaceInUsername", func(r *Register) { r.Username = "al ice" }, EInvalid},
		{"ErrInvalid/SlashInUsername", func(r *Register) { r.Username = "al/ice" }, EInvalid},
		{"ErrInvalid/ColonInUsername", func(r *Register) { r.Username = "al:ice" }, EInvalid},
		{"ErrInvalid/AtInUsername", func(r *Register) { r.Username = "al@ice" }, EInvalid},
		{"ErrInvalid/NonASCIIUsername", func(r *Register) { r.Username = "ålice" }, EInvalid},
		{"ErrInvalid/InvalidUTF8Username", func(r *Register) { r.Username = "ali\xffce" }, EInvalid},
		{"ErrInvalid/EmptyPassword", func(r *Register) { r.Password = "" }, EInvalid},
		{"ErrInvalid/ShortPassword", func(r *Register) { r.Password = strings.Repeat("p", MinPassword-1) }, EInvalid},
		{"ErrInvalid/ShortPasswordInBytes", func(r *Register) { r.Password = "éé" + "aaa" }, EInvalid}, // 7 bytes
		{"ErrInvalid/LongPassword", func(r *Register) { r.Password = strings.Repeat("p", MaxPassword+1) }, EInvalid},
		{"ErrInvalid/LongFirstName", func(r *Register) { r.Profile.FirstName = strings.Repeat("x", MaxNameField+1) }, EInvalid},
		{"ErrInvalid/LongFirstNameInBytes", func(r *Register) { r.Profile.FirstName = strings.Repeat("é", MaxNameField/2) + "x" }, EInvalid},
		{"ErrInvalid/LongLastName", func(r *Register) { r.Profile.LastName = strings.Repeat("x", MaxNameField+1) }, EInvalid},
		{"ErrInvalid/LongEmail", func(r *Register) { r.Profile.Email = emailOf(MaxEmail + 1) }, EInvalid},
		{"ErrInvalid/LongAddress", func(r *Register) { r.Profile.Address = strings.Repeat("x", MaxAddress+1) }, EInvalid},
		{"ErrInvalid/EmailWithoutAt", func(r *Register) { r.Profile.Email = "alice.example.com" }, EInvalid},
		{"ErrInvalid/EmailTwoAts", func(r *Register) { r.Profile.Email = "alice@example@com" }, EInvalid},
		{"ErrInvalid/EmailNoLocal", func(r *Register) { r.Profile.Email = "@example.com" }, EInvalid},
		{"ErrInvalid/EmailNoDomain", func(r *Register) { r.Profile.Email = "alice@" }, EInvalid},
		{"ErrInvalid/EmailSpace", func(r *Register) { r.Profile.Email = "ali ce@example.com" }, EInvalid},
		{"ErrInvalid/EmailNewline", func(r *Register) { r.Profile.Email = "alice@example.com\n" }, EInvalid},
		{"ErrInvalid/EmailNoBreakSpace", func(r *Register) { r.Profile.Email = "alice@exam\u00a0ple.com" }, EInvalid},
		{"ErrInvalid/EmailZeroWidth", func(r *Register) { r.Profile.Email = "ali\u200bce@example.com" }, EInvalid},
		{"ErrInvalid/FirstNameRTLOverride", func(r *Register) { r.Profile.FirstName = "Al\u202eecila" }, EInvalid},
		{"ErrInvalid/LastNameIsolate", func(r *Register) { r.Profile.LastName = "\u2067Lid" }, EInvalid},
		{"ErrInvalid/FirstNameNUL", func(r *Register) { r.Profile.FirstName = "Al\x00ice" }, EInvalid},
		{"ErrInvalid/FirstNameNewline", func(r *Register) { r.Profile.FirstName = "Al\nice" }, EInvalid},
		{"ErrInvalid/FirstNameTab", func(r *Register) { r.Profile.FirstName = "Al\tice" }, EInvalid},
		{"ErrInvalid/LastNameEscape", func(r *Register) { r.Profile.LastName = "\x1b[31mred" }, EInvalid},
		{"ErrInvalid/LastNameDEL", func(r *Register) { r.Profile.LastName = "Lid\x7fdell" }, EInvalid},
		{"ErrInvalid/LastNameC1", func(r *Register) { r.Profile.LastName = "Lid\u0085dell" }, EInvalid},
		{"ErrInvalid/AddressCSI", func(r *Register) { r.Profile.Address = "\u009b31mred" }, EInvalid},
		{"ErrInvalid/AddressNUL", func(r *Register) { r.Profile.Address = "1 Main\x00St" }, EInvalid},
		{"ErrInvalid/AddressInvalidUTF8", func(r *Register) { r.Profile.Address = "1 Main \xff" }, EInvalid},
		{"ErrInvalid/FirstNameInvalidUTF8", func(r *Register) { r.Profile.FirstName = "\xc3" }, EInvalid},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			req := Register{Username: "alice", Password: testPassword, Profile: validProfile()}
			tc.req(&req)
			u, err := e.users.Register(ctx, req)
			wantCode(t, err, tc.code)
			if tc.code != "" {
				if got, err := e.users.Lookup(ctx, req.Username); ErrorCode(err) != ENotFound {
					t.Errorf("after a refused Register, Lookup=%+v, %v, want %q", got, err, ENotFound)
				}
				return
			}
			if u.Username != req.Username || u.Profile != req.Profile {
				t.Errorf("Register=%+v, want username %q and profile %+v", u, req.Username, req.Profile)
			}
			if _, err := e.sessions.Login(ctx, Login{Username: req.Username, Password: req.Password}); err != nil {
				t.Errorf("Login after Register: %v", err)
			}
		})
	}

	t.Run("ErrUsernameTaken", func(t *testing.T) {
		e := newTestEnv(t)
		first := e.mustRegister(t, "alice", testPassword)
		_, err := e.users.Register(ctx, Register{Username: "alice", Password: "another password"})
		wantCode(t, err, EUsernameTaken)
		if got, err := e.users.Lookup(ctx, "alice"); err != nil || got.ID != first.ID {
			t.Errorf("Lookup(alice)=%q, %v, want %q", got.ID, err, first.ID)
		}
		if _, err := e.sessions.Login(ctx, Login{Username: "alice", Password: "another password"}); ErrorCode(err) != EUnauthorized {
			t.Errorf("Login with the refused password: ErrorCode=%q, want %q", ErrorCode(err), EUnauthorized)
		}
	})

	t.Run("ErrUsernameTaken/ClaimBeforeUserRecord", func(t *testing.T) {
		// Replication delivered another node's claim on the name but not yet its user
		// record: the name is taken all the same.
		e := newTestEnv(t)
		e.store.merge(crdt.ClaimKey("alice"), crdt.NewClaim("remote", crdt.Timestamp{Wall: testEpoch.UnixNano(), Node: 2}))
		_, err := e.users.Register(ctx, Register{Username: "alice", Password: testPassword})
		wantCode(t, err, EUsernameTaken)
	})

	t.Run("OK/NameOfErasedAccount", func(t *testing.T) {
		e := newTestEnv(t)
		old := e.mustRegister(t, "alice", "old password")
		if err := e.users.Delete(ctx, old.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		u, err := e.users.Register(ctx, Register{Username: "alice", Password: "new password"})
		if err != nil {
			t.Fatalf("Register after the owner was erased: %v", err)
		}
		if u.ID == old.ID {
			t.Errorf("ID=%q, want a new account", u.ID)
		}
		if got, err := e.users.Lookup(ctx, "alice"); err != nil || got.ID != u.ID {
			t.Errorf("Lookup(alice)=%q, %v, want %q", got.ID, err, u.ID)
		}
		s, _ := e.mustLogin(t, "alice", "new password")
		if s.UserID != u.ID {
			t.Errorf("Login UserID=%q, want %q", s.UserID, u.ID)
		}
		_, err = e.sessions.Login(ctx, Login{Username: "alice", Password: "old password"})
		wantCode(t, err, EUnauthorized)
		_, err = e.users.Register(ctx, Register{Username: "alice", Password: "third password"})
		wantCode(t, err, EUsernameTaken)
	})

	t.Run("ErrInternal", func(t *testing.T) {
		e := newTestEnv(t)
		e.store.setErr(errBoom)
		_, err := e.users.Register(ctx, Register{Username: "alice", Password: testPassword})
		wantCode(t, err, EInternal)
	})
}

func TestUsersUpdateProfile(t *testing.T) {
	ctx := context.Background()
	ptr := func(s string) *string { return &s }

	t.Run("OK", func(t *testing.T) {
		e := newTestEnv(t)
		u := e.mustRegister(t, "alice", testPassword)
		got, err := e.users.UpdateProfile(ctx, u.ID, ProfilePatch{FirstName: ptr("Alicia")})
		if err != nil {
			t.Fatalf("UpdateProfile: %v", err)
		}
		want := u.Profile
		want.FirstName = "Alicia"
		if got.Profile != want {
			t.Errorf("Profile=%+v, want %+v", got.Profile, want)
		}
		if got.Username != u.Username || !got.CreatedAt.Equal(u.CreatedAt) {
			t.Errorf("UpdateProfile=%+v, want username %q and created_at %v kept", got, u.Username, u.CreatedAt)
		}
		// Clear one field, set two others; the untouched one stays.
		got, err = e.users.UpdateProfile(ctx, u.ID, ProfilePatch{Email: ptr(""), LastName: ptr("L."), Address: ptr("2 High St")})
		if err != nil {
			t.Fatalf("UpdateProfile: %v", err)
		}
		want = Profile{FirstName: "Alicia", LastName: "L.", Email: "", Address: "2 High St"}
		if got.Profile != want {
			t.Errorf("Profile=%+v, want %+v", got.Profile, want)
		}
		if me, err := e.users.Me(ctx, u.ID); err != nil || me.Profile != want {
			t.Errorf("Me.Profile=%+v, %v, want %+v", me.Profile, err, want)
		}
		// An empty patch changes nothing.
		if got, err := e.users.UpdateProfile(ctx, u.ID, ProfilePatch{}); err != nil || got.Profile != want {
			t.Errorf("UpdateProfile({})=%+v, %v, want %+v", got.Profile, err, want)
		}
	})

	for _, tc := range []struct {
		name  string
		patch ProfilePatch
	}{
		{"ErrInvalid/Email", ProfilePatch{Email: ptr("not-an-email")}},
		{"ErrInvalid/LongFirstName", ProfilePatch{FirstName: ptr(strings.Repeat("x", MaxNameField+1))}},
		{"ErrInvalid/LongLastName", ProfilePatch{LastName: ptr(strings.Repeat("x", MaxNameField+1))}},
		{"ErrInvalid/LongAddress", ProfilePatch{Address: ptr(strings.Repeat("x", MaxAddress+1))}},
		{"ErrInvalid/ControlChar", ProfilePatch{FirstName: ptr("A\x07")}},
		{"ErrInvalid/OneBadFieldOfTwo", ProfilePatch{FirstName: ptr("Fine"), Email: ptr("a@b@c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			u := e.mustRegister(t, "alice", testPassword)
			_, err := e.users.UpdateProfile(ctx, u.ID, tc.patch)
			wantCode(t, err, EInvalid)
			if me, _ := e.users.Me(ctx, u.ID); me.Profile != u.Profile {
				t.Errorf("Profile=%+v after a refused update, want %+v", me.Profile, u.Profile)
			}
		})
	}

	t.Run("ErrNotFound", func(t *testing.T) {
		e := newTestEnv(t)
		_, err := e.users.UpdateProfile(ctx, "nobody", ProfilePatch{FirstName: ptr("X")})
		wantCode(t, err, ENotFound)
		u := e.mustRegister(t, "alice", testPassword)
		if err := e.users.Delete(ctx, u.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		_, err = e.users.UpdateProfile(ctx, u.ID, ProfilePatch{FirstName: ptr("X")})
		wantCode(t, err, ENotFound)
	})
}

func TestUsersDelete(t *testing.T) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		e := newTestEnv(t)
		u := e.mustRegister(t, "alice", testPassword)
		e.mustRegister(t, "bob", testPassword)
		_, p := e.mustLogin(t, "alice", testPassword)
		if err := e.users.Delete(ctx, u.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}

		_, err := e.users.Me(ctx, u.ID)
		wantCode(t, err, ENotFound)
		_, err = e.users.Lookup(ctx, "alice")
		wantCode(t, err, ENotFound)
		_, err = e.sessions.Authenticate(ctx, p.UserID, p.SessionID)
		wantCode(t, err, EUnauthorized)
		_, err = e.sessions.Current(ctx, p)
		wantCode(t, err, EUnauthorized)
		_, err = e.sessions.List(ctx, p)
		wantCode(t, err, EUnauthorized)
		_, err = e.sessions.PatchData(ctx, p, DataPatch{Set: map[string]json.RawMessage{"k": json.RawMessage("1")}})
		wantCode(t, err, EUnauthorized)
		_, err = e.sessions.Login(ctx, Login{Username: "alice", Password: testPassword})
		wantCode(t, err, EUnauthorized)
		_, err = e.messages.Send(ctx, p, Send{To: "bob", Body: "still here?"})
		wantCode(t, err, EUnauthorized)
		_, err = e.messages.Send(ctx, Principal{UserID: "x", Username: "bob"}, Send{To: "alice", Body: "hi"})
		wantCode(t, err, ENotFound)

		// The record keeps the name (for its claim) but nothing personal.
		m := e.store.record(crdt.UserKey(u.ID))
		stored := crdt.ReadUser(u.ID, &m)
		if !stored.Deleted {
			t.Errorf("Deleted=%v, want true", stored.Deleted)
		}
		if stored.PasswordHash != "" {
			t.Errorf("PasswordHash=%q, want erased", stored.PasswordHash)
		}
		for name, v := range stored.Profile {
			if v != "" {
				t.Errorf("Profile[%q]=%q, want erased", name, v)
			}
		}
	})

	t.Run("OK/MarksEveryConversation", func(t *testing.T) {
		e := newChatEnv(t)
		e.mustSend(t, e.alice, "bob", "hi bob")
		e.mustSend(t, e.bob, "alice", "hi alice")
		e.mustSend(t, e.carol, "alice", "hi")
		e.mustSend(t, e.bob, "carol", "not alice's")
		updates := e.store.updateCount()
		if err := e.users.Delete(ctx, e.alice.UserID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if n := e.store.updateCount() - updates; n != 1 {
			t.Errorf("Delete ran %d transactions, want 1: the markers are written with the erasure", n)
		}
		for _, tc := range []struct {
			with    Principal
			markers int
		}{{e.bob, 1}, {e.carol, 1}} {
			conv := crdt.ConversationID(e.alice.UserID, tc.with.UserID)
			var markers []crdt.Message
			for _, en := range e.store.entries(conv) {
				if m, err := crdt.DecodeMessage(en.Data); err == nil && m.Erased {
					markers = append(markers, m)
				}
			}
			if want := crdt.ErasureMarker(e.alice.UserID, tc.with.UserID); len(markers) != tc.markers || markers[0] != want {
				t.Errorf("markers of alice's conversation with %s = %+v, want %+v", tc.with.Username, markers, want)
			}
		}
		for _, en := range e.store.entries(crdt.ConversationID(e.bob.UserID, e.carol.UserID)) {
			if crdt.IsErasureMarker(en.Data) {
				t.Errorf("a marker in bob and carol's conversation")
			}
		}
	})

	t.Run("ErrNotFound", func(t *testing.T) {
		e := newTestEnv(t)
		wantCode(t, e.users.Delete(ctx, "nobody"), ENotFound)
		u := e.mustRegister(t, "alice", testPassword)
		if err := e.users.Delete(ctx, u.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantCode(t, e.users.Delete(ctx, u.ID), ENotFound)
	})
}

func TestUsersLookup(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	u := e.mustRegister(t, "alice", testPassword)
	t.Run("OK", func(t *testing.T) {
		got, err := e.users.Lookup(ctx, "alice")
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		if got != u {
			t.Errorf("Lookup=%+v, want %+v", got, u)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		for _, name := range []string{"bob", "", "Alice", "alice "} {
			_, err := e.users.Lookup(ctx, name)
			if got := ErrorCode(err); got != ENotFound {
				t.Errorf("Lookup(%q): ErrorCode=%q, want %q", name, got, ENotFound)
			}
		}
	})
	t.Run("ErrNotFound/Me", func(t *testing.T) {
		_, err := e.users.Me(ctx, "nobody")
		wantCode(t, err, ENotFound)
	})
}

// TestUsersRegisterEraseCycles: registering a name and erasing the account again and
// again leaves a claim per account in the name's record. The accounts a name may ever
// have are bounded, so that the record and every lookup of the name (which reads each
// claimant) stay bounded whatever a client repeats.
func TestUsersRegisterEraseCycles(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	for range MaxNameClaims {
		u := e.mustRegister(t, "cycle", testPassword)
		if err := e.users.Delete(ctx, u.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	_, err := e.users.Register(ctx, Register{Username: "cycle", Password: testPassword})
	wantCode(t, err, EUsernameTaken)
	m := e.store.record(crdt.ClaimKey("cycle"))
	if n := len(crdt.Claimants(&m)); n != MaxNameClaims {
		t.Errorf("the name's record holds %d claims, want %d", n, MaxNameClaims)
	}
	e.mustRegister(t, "other", testPassword) // other names are not affected
}
