package crdt_test

import (
	"encoding/binary"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// TestClaimants registers one name from several users in several partitions, some
// retrying, and lets replicas merge the claims in any order: every replica lists the same
// claimants, the winner first, and the winner is the user with the lowest (HLC, node)
// claim.
func TestClaimants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		type claim struct {
			user string
			ts   crdt.Timestamp
		}
		var claims []claim
		first := make(map[string]crdt.Timestamp) // per user, its lowest claim
		for i := range rapid.IntRange(1, 6).Draw(t, "users") {
			user := "user-" + strconv.Itoa(i)
			for range rapid.IntRange(1, 3).Draw(t, "tries") {
				ts := genTS().Draw(t, "ts")
				claims = append(claims, claim{user, ts})
				if f, ok := first[user]; !ok || ts.Less(f) {
					first[user] = ts
				}
			}
		}
		want := slices.SortedFunc(maps.Keys(first), func(a, b string) int {
			if c := first[a].Compare(first[b]); c != 0 {
				return c
			}
			return cmpString(a, b)
		})
		n := rapid.IntRange(2, 4).Draw(t, "replicas")
		replicas := make([]crdt.Map, n)
		for i := range replicas {
			for _, c := range rapid.Permutation(slices.Concat(claims, claims[:rapid.IntRange(0, len(claims)).Draw(t, "dups")])).Draw(t, "order") {
				if i > 0 && rapid.IntRange(0, 4).Draw(t, "gossip") == 0 {
					replicas[i].Merge(replicas[rapid.IntRange(0, i-1).Draw(t, "peer")])
				}
				replicas[i].Merge(crdt.NewClaim(c.user, c.ts))
			}
			if got := crdt.Claimants(&replicas[i]); !slices.Equal(got, want) {
				t.Fatalf("replica %d: Claimants()=%q, want %q (first claims %v)", i, got, want, first)
			}
		}
	})
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestClaimantsEmpty(t *testing.T) {
	var m crdt.Map
	m.Set("c/not-a-claim", []byte("x"), crdt.Timestamp{Wall: 1}) // wrong kind: ignored
	if got := crdt.Claimants(&m); len(got) != 0 {
		t.Fatalf("Claimants()=%q, want none", got)
	}
}

func TestUser(t *testing.T) {
	ts := func(wall int64, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: epoch2026 + wall, Node: node}
	}
	profile := map[string]string{crdt.FieldFirstName: "Ada", crdt.FieldLastName: "Lovelace", crdt.FieldEmail: "ada@example.com"}
	t.Run("OK", func(t *testing.T) {
		m := crdt.NewUser("ada", "$argon2id$hash", profile, ts(1, 1))
		u := crdt.ReadUser("u1", &m)
		if u.ID != "u1" || u.Username != "ada" || u.PasswordHash != "$argon2id$hash" || u.Created != ts(1, 1) || u.Deleted {
			t.Fatalf("ReadUser=%+v, want ada created at %v", u, ts(1, 1))
		}
		for _, f := range crdt.ProfileFields {
			if u.Profile[f] != profile[f] {
				t.Errorf("Profile[%q]=%q, want %q", f, u.Profile[f], profile[f])
			}
		}
	})
	t.Run("ConcurrentEdits", func(t *testing.T) {
		base := crdt.NewUser("ada", "h", profile, ts(1, 1))
		var a, b crdt.Map
		a.Set(crdt.FieldEmail, []byte("new@example.com"), ts(2, 1))
		b.Set(crdt.FieldAddress, []byte("London"), ts(2, 2))
		for _, order := range [][]crdt.Map{{base, a, b}, {b, a, base}, {a, base, b}} {
			m := merged(order...)
			u := crdt.ReadUser("u1", &m)
			if u.Profile[crdt.FieldEmail] != "new@example.com" || u.Profile[crdt.FieldAddress] != "London" {
				t.Fatalf("Profile=%q, want both concurrent edits", u.Profile)
			}
		}
	})
	t.Run("Erase", func(t *testing.T) {
		m := merged(crdt.NewUser("ada", "h", profile, ts(1, 1)), crdt.EraseUser(ts(5, 2)))
		u := crdt.ReadUser("u1", &m)
		if !u.Deleted || u.PasswordHash != "" || u.Profile[crdt.FieldEmail] != "" {
			t.Fatalf("ReadUser after EraseUser=%+v, want deleted, no password or profile", u)
		}
		var late crdt.Map // an edit from before the erase, arriving late
		late.Set(crdt.FieldEmail, []byte("late@example.com"), ts(4, 1))
		m.Merge(late)
		if u := crdt.ReadUser("u1", &m); !u.Deleted || u.Profile[crdt.FieldEmail] != "" {
			t.Fatalf("ReadUser after a late edit=%+v, want still erased", u)
		}
	})
	t.Run("SessionsUntil", func(t *testing.T) {
		m := merged(crdt.RevokeSessionsUntil(ts(9, 1), 5), crdt.RevokeSessionsUntil(ts(3, 2), 100), crdt.RevokeSessionsUntil(ts(9, 0), 0))
		u := crdt.ReadUser("u1", &m)
		if u.SessionsUntil != ts(9, 1) || u.SessionsWindow != epoch2026+103 {
			t.Fatalf("SessionsUntil=%v, SessionsWindow=%d, want %v and 103", u.SessionsUntil, u.SessionsWindow, ts(9, 1))
		}
	})
	// ReadUserMeta is ReadUser without the password hash and the profile, for every
	// state above.
	t.Run("Meta", func(t *testing.T) {
		for _, m := range []crdt.Map{
			crdt.NewUser("ada", "h", profile, ts(1, 1)),
			merged(crdt.NewUser("ada", "h", profile, ts(1, 1)), crdt.EraseUser(ts(5, 2))),
			merged(crdt.NewUser("ada", "h", profile, ts(1, 1)), crdt.RevokeSessionsUntil(ts(9, 1), 5)),
			{},
		} {
			want := crdt.ReadUser("u1", &m)
			want.PasswordHash, want.Profile = "", nil
			if got := crdt.ReadUserMeta("u1", &m); !reflect.DeepEqual(got, want) {
				t.Fatalf("ReadUserMeta=%+v, want %+v", got, want)
			}
		}
	})
}

// TestUserRevokes: sign out everywhere at wall 100 with a window of 50 revokes what was
// created before it in HLC order, and what was created concurrently (by a node that had
// not received it) and stamped up to 150 — a session a fast node created before the
// sign-out in real time — but nothing created after its node received it.
func TestUserRevokes(t *testing.T) {
	ts := func(wall int64, node crdt.NodeID) crdt.Timestamp { return crdt.Timestamp{Wall: wall, Node: node} }
	rev := ts(100, 1)
	m := crdt.RevokeSessionsUntil(rev, 50)
	u := crdt.ReadUser("u1", &m)
	for _, tc := range []struct {
		name    string
		created crdt.Timestamp
		seen    crdt.Timestamp
		want    bool
	}{
		{"Before", ts(90, 2), crdt.Timestamp{}, true},
		{"BeforeAfterAnEarlierSignOut", ts(90, 2), ts(40, 1), true},
		{"SameTime", rev, crdt.Timestamp{}, true},
		{"ConcurrentFastNode", ts(140, 2), crdt.Timestamp{}, true},
		{"ConcurrentFastNodeAtWindowEnd", ts(150, 2), ts(40, 1), true},
		{"ConcurrentBeyondWindow", ts(151, 2), crdt.Timestamp{}, false},
		{"AfterReceivingIt", ts(101, 2), rev, false},
		{"AfterReceivingALaterOne", ts(120, 2), ts(110, 3), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sm := crdt.NewSession("u1", time.Unix(0, 1e18), time.Hour, tc.created)
			sm.Merge(crdt.SessionSaw(tc.seen, tc.created))
			s := crdt.ReadSession("s1", &sm)
			if s.SeenUntil != tc.seen {
				t.Fatalf("SeenUntil=%v, want %v", s.SeenUntil, tc.seen)
			}
			if got := u.Revokes(s); got != tc.want {
				t.Errorf("Revokes=%v, want %v", got, tc.want)
			}
		})
	}
}

func TestSession(t *testing.T) {
	created := crdt.Timestamp{Wall: epoch2026, Node: 1}
	start := time.Unix(0, epoch2026).UTC()
	expires := start.Add(24 * time.Hour)
	at := func(d time.Duration, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: epoch2026 + int64(d), Node: node}
	}
	t.Run("OK", func(t *testing.T) {
		m := crdt.NewSession("u1", expires, time.Hour, created)
		m.Set(crdt.DataPrefix+"theme", []byte(`"dark"`), at(time.Second, 1))
		m.Delete(crdt.DataPrefix+"gone", at(time.Second, 1))
		s := crdt.ReadSession("s1", &m)
		if s.ID != "s1" || s.UserID != "u1" || s.Created != created || !s.Expires.Equal(expires) || s.IdleTTL != time.Hour || !s.LastUsed.Equal(start) || s.Revoked {
			t.Fatalf("ReadSession=%+v, want a fresh session of u1", s)
		}
		if len(s.Data) != 1 || string(s.Data["theme"]) != `"dark"` {
			t.Fatalf("Data=%q, want theme only", s.Data)
		}
		if got := s.IdleExpires(); !got.Equal(start.Add(time.Hour)) {
			t.Fatalf("IdleExpires()=%v, want %v", got, start.Add(time.Hour))
		}
		if !s.ActiveAt(start.Add(59*time.Minute)) || s.ActiveAt(start.Add(time.Hour)) {
			t.Fatal("ActiveAt disagrees with the idle expiry")
		}
		if got := crdt.SessionExpires(&m); !got.Equal(expires) {
			t.Fatalf("SessionExpires()=%v, want %v", got, expires)
		}
	})
	t.Run("TouchSlides", func(t *testing.T) {
		m := merged(crdt.NewSession("u1", expires, time.Hour, created), crdt.TouchSession(at(50*time.Minute, 2)), crdt.TouchSession(at(10*time.Minute, 3)))
		s := crdt.ReadSession("s1", &m)
		if want := start.Add(50 * time.Minute); !s.LastUsed.Equal(want) {
			t.Fatalf("LastUsed=%v, want %v", s.LastUsed, want)
		}
		if !s.ActiveAt(start.Add(100 * time.Minute)) {
			t.Fatal("ActiveAt(+100m)=false, want true after a touch at +50m")
		}
		m.Merge(crdt.TouchSession(at(23*time.Hour+30*time.Minute, 1)))
		if got := crdt.ReadSession("s1", &m).IdleExpires(); !got.Equal(expires) {
			t.Fatalf("IdleExpires()=%v, want capped at %v", got, expires)
		}
	})
	t.Run("ErrMissing", func(t *testing.T) {
		var m crdt.Map
		s := crdt.ReadSession("s1", &m)
		if s.ActiveAt(start) || !crdt.SessionExpires(&m).Equal(time.Unix(0, 0)) {
			t.Fatalf("ReadSession(empty)=%+v, want inactive", s)
		}
	})
	// Revocation is monotonic: whatever touches and data updates arrive, concurrently or
	// later, in any order, a session that was revoked anywhere stays revoked.
	t.Run("RevocationMonotonic", func(t *testing.T) {
		rapid.Check(t, func(t *rapid.T) {
			updates := []crdt.Map{crdt.NewSession("u1", expires, time.Hour, created)}
			revoked := false
			for i := range rapid.IntRange(0, 12).Draw(t, "updates") {
				ts := at(time.Duration(rapid.Int64Range(0, int64(2*time.Hour)).Draw(t, "at")), crdt.NodeID(rapid.Uint64Range(1, 3).Draw(t, "node")))
				var u crdt.Map
				switch rapid.IntRange(0, 2).Draw(t, "kind") {
				case 0:
					u = crdt.TouchSession(ts)
				case 1:
					u.Set(crdt.DataPrefix+"k", []byte(fmt.Sprint(i)), ts)
				case 2:
					u, revoked = crdt.RevokeSession(ts), true
				}
				updates = append(updates, u)
			}
			for range 3 {
				var m crdt.Map
				for _, u := range rapid.Permutation(updates).Draw(t, "order") {
					m.Merge(u)
					if s := crdt.ReadSession("s1", &m); s.Revoked && s.ActiveAt(start) {
						t.Fatal("a revoked session is active")
					}
				}
				if got := crdt.ReadSession("s1", &m).Revoked; got != revoked {
					t.Fatalf("Revoked=%v, want %v", got, revoked)
				}
			}
		})
	})
}

func TestSessionWrongKinds(t *testing.T) {
	// A record whose int64 fields are malformed reads as zero, not as a panic.
	var m crdt.Map
	m.Claim(crdt.FieldExpires, []byte("short"), crdt.Timestamp{Wall: 1})
	m.Set(crdt.FieldLastUsed, binary.BigEndian.AppendUint64(nil, 5), crdt.Timestamp{Wall: 1})
	s := crdt.ReadSession("s1", &m)
	if !s.Expires.Equal(time.Unix(0, 0)) || !s.LastUsed.Equal(time.Unix(0, 0)) {
		t.Fatalf("ReadSession=%+v, want zero times", s)
	}
}

func TestConversationID(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		id := crdt.ConversationID("bob", "alice")
		if id != crdt.ConversationID("alice", "bob") || id != "alice:bob" {
			t.Fatalf("ConversationID(bob, alice)=%q, want %q either way round", id, "alice:bob")
		}
		a, b, ok := crdt.Participants(id)
		if !ok || a != "alice" || b != "bob" {
			t.Fatalf("Participants(%q)=%q, %q, %v, want alice, bob", id, a, b, ok)
		}
	})
	t.Run("Keys", func(t *testing.T) {
		if crdt.UserKey("1") != "u/1" || crdt.ClaimKey("ada") != "n/ada" || crdt.SessionKey("s") != "s/s" {
			t.Fatal("record keys do not carry their prefixes")
		}
	})
}

// TestSessionDataSize checks the allocation-free counts against the typed view.
func TestSessionDataSize(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := crdt.NewSession("u1", time.Unix(100, 0), time.Hour, crdt.Timestamp{Wall: 1, Node: 1})
		if !crdt.IsSession(&m) {
			t.Fatal("IsSession(new session) = false")
		}
		for i := range rapid.IntRange(0, 20).Draw(t, "ops") {
			key := crdt.DataPrefix + rapid.StringN(0, 4, 8).Draw(t, "key")
			ts := crdt.Timestamp{Wall: int64(i + 2), Node: 1}
			switch rapid.IntRange(0, 2).Draw(t, "op") {
			case 0:
				m.Set(key, []byte(rapid.StringN(0, 10, 20).Draw(t, "value")), ts)
			case 1:
				m.Delete(key, ts)
			default:
				m.SetFlag(key, ts) // a data-looking name of the wrong kind is not data
			}
		}
		data := crdt.ReadSession("s1", &m).Data
		want := 0
		for k, v := range data {
			want += len(k) + len(v)
			if !crdt.SessionDataLive(&m, k) {
				t.Fatalf("SessionDataLive(%q) = false, ReadSession shows it", k)
			}
		}
		wantDeleted := 0
		for _, name := range m.Names() {
			if f, _ := m.Field(name); f.Deleted && strings.HasPrefix(name, crdt.DataPrefix) {
				wantDeleted++
				if crdt.SessionDataLive(&m, strings.TrimPrefix(name, crdt.DataPrefix)) {
					t.Fatalf("SessionDataLive(%q) = true for a tombstone", name)
				}
			}
		}
		if keys, size, deleted := crdt.SessionDataSize(&m); keys != len(data) || size != want || deleted != wantDeleted {
			t.Fatalf("SessionDataSize = %d keys, %d bytes, %d deleted; ReadSession has %d keys, %d bytes; %d tombstones", keys, size, deleted, len(data), want, wantDeleted)
		}
	})
	var updateOnly crdt.Map
	updateOnly.Set(crdt.DataPrefix+"k", []byte("1"), crdt.Timestamp{Wall: 1})
	if crdt.IsSession(&updateOnly) {
		t.Error("IsSession(data without an owner) = true")
	}
}

func TestSessionOriginAndTokenGen(t *testing.T) {
	c := crdt.NewClock(1, time.Now, 0)
	ts := c.Next()
	m := crdt.NewSession("u1", ts.Time().Add(time.Hour), time.Hour, ts)
	long := strings.Repeat("é", crdt.MaxOriginField) // two bytes each
	m.Merge(crdt.SessionOrigin(crdt.Origin{Device: "Firefox on Linux", ClientAddr: "203.0.113.7", Region: "eu", Node: long}, ts))
	s := crdt.ReadSession("s1", &m)
	if s.Origin.Device != "Firefox on Linux" || s.Origin.ClientAddr != "203.0.113.7" || s.Origin.Region != "eu" {
		t.Fatalf("origin = %+v", s.Origin)
	}
	if len(s.Origin.Node) > crdt.MaxOriginField || !utf8.ValidString(s.Origin.Node) || len(s.Origin.Node) < crdt.MaxOriginField-1 {
		t.Fatalf("node cut to %d bytes (valid UTF-8: %v), want at most %d", len(s.Origin.Node), utf8.ValidString(s.Origin.Node), crdt.MaxOriginField)
	}
	// A record from elsewhere may hold longer fields than SessionOrigin writes: they are
	// read cut as well.
	var big crdt.Map
	big.Claim(crdt.FieldDevice, []byte(strings.Repeat("x", 10_000)), ts)
	if d := crdt.ReadSession("s2", &big).Origin.Device; len(d) != crdt.MaxOriginField {
		t.Fatalf("a 10,000-byte device field reads as %d bytes, want %d", len(d), crdt.MaxOriginField)
	}
	// Origin is first-writer-wins: a later claim does not replace it.
	m.Merge(crdt.SessionOrigin(crdt.Origin{Device: "curl"}, c.Next()))
	if got := crdt.ReadSession("s1", &m).Origin.Device; got != "Firefox on Linux" {
		t.Fatalf("device after a later claim = %q", got)
	}
	if g := crdt.ReadSessionMeta("s1", &m).TokenGen; g != 0 {
		t.Fatalf("fresh session's token generation = %d, want 0", g)
	}
	// Renewals only raise the generation, in any order of arrival.
	a, b := crdt.RenewSessionToken(2, c.Next()), crdt.RenewSessionToken(1, c.Next())
	m1, m2 := m.Copy(), m.Copy()
	m1.Merge(a)
	m1.Merge(b)
	m2.Merge(b)
	m2.Merge(a)
	for _, x := range []*crdt.Map{&m1, &m2} {
		if g := crdt.ReadSessionMeta("s1", x).TokenGen; g != 2 {
			t.Fatalf("token generation = %d, want 2", g)
		}
	}
}
