package crdt

import (
	"encoding/binary"
	"iter"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The replicated key space. Every record is a Map under one of these keys; message logs
// are keyed by conversation. Both storage and the handlers read records through the typed
// views below, so field names live in one place.
const (
	UserPrefix    = "u/" // u/<user id> → user record
	ClaimPrefix   = "n/" // n/<username> → the claims on a username
	SessionPrefix = "s/" // s/<session id> → session record
)

// UserKey returns the record key of user id.
func UserKey(id string) string { return UserPrefix + id }

// ClaimKey returns the record key of the claims on username.
func ClaimKey(username string) string { return ClaimPrefix + username }

// SessionKey returns the record key of session id.
func SessionKey(id string) string { return SessionPrefix + id }

// ConversationID returns the log that holds the messages between users a and b: the same
// for (a, b) and (b, a).
func ConversationID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return a + ":" + b
}

// Participants returns the two user IDs of a conversation.
func Participants(conv string) (a, b string, ok bool) {
	return strings.Cut(conv, ":")
}

// User record fields.
const (
	FieldUsername      = "username"       // FWW: the name registered with
	FieldPassword      = "password"       // LWW: argon2id hash in PHC string form
	FieldFirstName     = "first_name"     // LWW
	FieldLastName      = "last_name"      // LWW
	FieldEmail         = "email"          // LWW
	FieldAddress       = "address"        // LWW
	FieldDeleted       = "deleted"        // Flag: the account is erased
	FieldSessionsUntil = "sessions_until" // Max: sessions created at or before its TS are revoked
	// FieldSessionsWindow (Max, wall nanoseconds) extends the latest sign-out everywhere
	// to sessions created concurrently with it, by nodes that had not received it, and
	// stamped up to this wall time: see User.Revokes.
	FieldSessionsWindow = "sessions_window"
	// FieldApp and FieldSubject (FWW) mark the record of an app's subject (see
	// SubjectID): a person the app authenticated itself, who has no username, no password
	// and no profile. The same two values are written wherever the record is created.
	FieldApp     = "app"
	FieldSubject = "subject"
	// FieldSubjectKeep (Max, Unix nanoseconds) is until when a subject's record is kept:
	// raised, whenever a session is created for the subject or its sessions are revoked,
	// past the time every session that write concerns has expired. Past it, every node
	// deletes the record on its own, as it does an expired session (it holds nothing a
	// session still needs), and drops a copy that arrives later. A subject's record
	// without it (made by an earlier release) is kept for good, until its next session.
	FieldSubjectKeep = "keep_until"
)

// ProfileFields are the user record fields a user edits.
var ProfileFields = []string{FieldFirstName, FieldLastName, FieldEmail, FieldAddress}

// User is the typed view of a user record.
type User struct {
	ID           string
	Username     string
	PasswordHash string
	Created      Timestamp // when the username field was written
	Profile      map[string]string
	Deleted      bool
	// SessionsUntil revokes every session created at or before it ("sign out everywhere").
	SessionsUntil Timestamp
	// SessionsWindow (wall nanoseconds) revokes, besides, sessions stamped up to it by a
	// node that had not received SessionsUntil when it created them.
	SessionsWindow int64
	// App and Subject name, for an app's subject (NewSubject), the app and the subject;
	// both are "" for a registered user.
	App, Subject string
}

// Revokes reports whether the user's sign-out everywhere revokes session s: s was
// created at or before SessionsUntil in HLC order, or concurrently with it — by a node
// that had not yet received it (s.SeenUntil is older) — and stamped no later than
// SessionsWindow. A node whose clock runs ahead stamps a session it creates before a
// sign-out, in real time, later than the sign-out's own stamp; the window (the revoking
// node's --max-skew) still covers it. A session created after its node received the
// sign-out is never revoked by it.
func (u User) Revokes(s Session) bool {
	if !u.SessionsUntil.Less(s.Created) {
		return true
	}
	return s.SeenUntil.Less(u.SessionsUntil) && s.Created.Wall <= u.SessionsWindow
}

// ReadUser returns the typed view of the user record m.
func ReadUser(id string, m *Map) User {
	u := ReadUserMeta(id, m)
	u.Profile = make(map[string]string, len(ProfileFields))
	if v, ok := m.Get(FieldPassword); ok {
		u.PasswordHash = string(v)
	}
	for _, name := range ProfileFields {
		v, _ := m.Get(name)
		u.Profile[name] = string(v)
	}
	return u
}

// ReadUserMeta returns the view of the user record m that checking its sessions needs:
// ReadUser's without the password hash and the profile (empty and nil).
func ReadUserMeta(id string, m *Map) User {
	var u User
	switch v := m.views; {
	case v == nil:
		u = readUserMeta(m)
	case v.user.Load() != nil:
		u = *v.user.Load()
	default:
		u = readUserMeta(m)
		kept := u
		v.user.Store(&kept)
	}
	u.ID = id
	return u
}

func readUserMeta(m *Map) User {
	var u User
	if f, ok := m.Field(FieldUsername); ok {
		u.Username, u.Created = string(f.Value), f.TS
	}
	_, u.Deleted = m.Flag(FieldDeleted)
	if f, ok := m.Field(FieldSessionsUntil); ok && f.Kind == KindMax {
		u.SessionsUntil = f.TS
	}
	u.SessionsWindow = m.MaxOf(FieldSessionsWindow)
	if f, ok := m.Field(FieldApp); ok && f.Kind == KindFWW {
		u.App = string(f.Value)
		if f, ok := m.Field(FieldSubject); ok && f.Kind == KindFWW {
			u.Subject, u.Created = string(f.Value), f.TS
		}
	}
	return u
}

// NewSubject returns the record of subject of app (SubjectID), created at ts.
func NewSubject(app, subject string, ts Timestamp) Map {
	var m Map
	m.Claim(FieldApp, []byte(app), ts)
	m.Claim(FieldSubject, []byte(subject), ts)
	return m
}

// SubjectKeepNanos returns until when the user record m is to be kept, Unix nanoseconds:
// 0 (for good) but for a subject's record that has a FieldSubjectKeep.
func SubjectKeepNanos(m *Map) int64 { return m.MaxOf(FieldSubjectKeep) }

// KeepSubjectUntil returns the update, at ts, that keeps a subject's record at least until
// until.
func KeepSubjectUntil(until time.Time, ts Timestamp) Map {
	var m Map
	m.Raise(FieldSubjectKeep, until.UnixNano(), ts)
	return m
}

// NewUser returns the record of a new user, every field written at ts.
func NewUser(username, passwordHash string, profile map[string]string, ts Timestamp) Map {
	var m Map
	m.Claim(FieldUsername, []byte(username), ts)
	m.Set(FieldPassword, []byte(passwordHash), ts)
	for _, name := range ProfileFields {
		m.Set(name, []byte(profile[name]), ts)
	}
	return m
}

// EraseUser returns the update that erases a user at ts: the deleted flag, and every
// profile field and the password overwritten with tombstones.
func EraseUser(ts Timestamp) Map {
	var m Map
	m.SetFlag(FieldDeleted, ts)
	m.Delete(FieldPassword, ts)
	for _, name := range ProfileFields {
		m.Delete(name, ts)
	}
	return m
}

// RevokeSessionsUntil returns the update that revokes every session of a user created at
// or before ts, and those created concurrently and stamped up to window after it (see
// User.Revokes).
func RevokeSessionsUntil(ts Timestamp, window time.Duration) Map {
	var m Map
	m.Raise(FieldSessionsUntil, ts.Wall, ts)
	m.Raise(FieldSessionsWindow, ts.Wall+int64(window), ts)
	return m
}

// claimFieldPrefix prefixes, in a claim record, one first-writer-wins field per user that
// registered the name.
const claimFieldPrefix = "c/"

// NewClaim returns the claim of username by userID at ts.
func NewClaim(userID string, ts Timestamp) Map {
	var m Map
	m.Claim(claimFieldPrefix+userID, nil, ts)
	return m
}

// Claimants returns the users that registered a name, the winner first: ordered by the
// timestamp of their claim (lowest HLC, then node ID, wins).
func Claimants(m *Map) []string {
	type claim struct {
		user string
		ts   Timestamp
	}
	var cs []claim
	for name, f := range m.fields {
		if user, ok := strings.CutPrefix(name, claimFieldPrefix); ok && f.Kind == KindFWW {
			cs = append(cs, claim{user, f.TS})
		}
	}
	slices.SortFunc(cs, func(a, b claim) int {
		if c := a.ts.Compare(b.ts); c != 0 {
			return c
		}
		return strings.Compare(a.user, b.user)
	})
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.user
	}
	return out
}

// Session record fields.
const (
	FieldUser     = "user"      // FWW: the owner's user ID; its TS is the creation time
	FieldExpires  = "expires"   // FWW: absolute expiry, Unix nanoseconds
	FieldIdleTTL  = "idle_ttl"  // FWW: idle lifetime in nanoseconds
	FieldLastUsed = "last_used" // Max: last use, Unix nanoseconds
	FieldRevoked  = "revoked"   // Flag
	// FieldSeenUntil (FWW) is the owner's sessions_until timestamp that the creating node
	// held, encoded; absent when it held none. See User.Revokes.
	FieldSeenUntil = "seen_until"
	// FieldTokenGen (Max) is the generation of the session's token: a token of an earlier
	// generation is refused (RenewSessionToken). Absent: 0, the generation of the token
	// its sign-in returned.
	FieldTokenGen = "token_gen"
	// Where and how the session began, for its owner to recognise it (FWW, set at
	// creation, each absent when unknown or not recorded): a label of the client's user
	// agent ("Firefox on Linux"), the client's address, and the region and name of the
	// node that created it.
	FieldDevice     = "device"
	FieldClientAddr = "client_addr"
	FieldRegion     = "region"
	FieldNode       = "node"
	// FieldSessionApp (FWW, set at creation) names the app whose subject owns the
	// session; absent for a registered user's.
	FieldSessionApp = "app"
	// FieldAppSeenUntil (FWW) is the app's sessions_until timestamp that the creating
	// node held, encoded; absent when it held none. See App.Ends.
	FieldAppSeenUntil = "app_seen_until"
	// FieldSubjectWrites (FWW, set at creation) marks a subject's session whose data its
	// own token may write; absent, only the app writes it (through the service API).
	FieldSubjectWrites = "subject_writes"
	DataPrefix         = "d/" // d/<key> LWW: session data, a JSON value
)

// MaxOriginField is the longest value SessionOrigin records in each of its fields;
// longer ones are cut (at a UTF-8 boundary).
const MaxOriginField = 64

// Session is the typed view of a session record.
type Session struct {
	ID       string
	UserID   string
	Created  Timestamp
	Expires  time.Time
	IdleTTL  time.Duration
	LastUsed time.Time
	Revoked  bool
	// SeenUntil is the owner's User.SessionsUntil that the creating node held.
	SeenUntil Timestamp
	TokenGen  uint64 // the current token's generation (FieldTokenGen)
	App       string // the app whose subject owns it; "" for a registered user's
	// AppSeenUntil is the app's App.SessionsUntil that the creating node held.
	AppSeenUntil Timestamp
	// SubjectWrites: the session's own token may write its data (FieldSubjectWrites).
	SubjectWrites bool
	Origin        Origin            // set by ReadSession, not ReadSessionMeta
	Data          map[string][]byte // live data keys; values alias the Map
}

// Origin is where and how a session began (SessionOrigin).
type Origin struct {
	Device, ClientAddr, Region, Node string
}

// IdleExpires returns when the session expires unless it is used before.
func (s Session) IdleExpires() time.Time {
	t := s.LastUsed.Add(s.IdleTTL)
	if t.After(s.Expires) {
		return s.Expires
	}
	return t
}

// ActiveAt reports whether the session, as this replica knows it, is usable at now: not
// revoked, past neither expiry. It does not know about its user's revocations; see
// User.SessionsUntil.
func (s Session) ActiveAt(now time.Time) bool {
	return !s.Revoked && s.UserID != "" && now.Before(s.IdleExpires())
}

// ReadSession returns the typed view of the session record m.
func ReadSession(id string, m *Map) Session {
	s := ReadSessionMeta(id, m)
	s.Origin = ReadSessionOrigin(m)
	for key, v := range SessionData(m) {
		if s.Data == nil {
			s.Data = make(map[string][]byte)
		}
		s.Data[key] = v
	}
	return s
}

// ReadSessionOrigin returns the origin of the session record m (ReadSession's Origin):
// each field cut to MaxOriginField, as a peer's record may hold more.
func ReadSessionOrigin(m *Map) Origin {
	switch v := m.views; {
	case v == nil:
		return readSessionOrigin(m)
	case v.origin.Load() != nil:
		return *v.origin.Load()
	default:
		o := readSessionOrigin(m)
		v.origin.Store(&o)
		return o
	}
}

func readSessionOrigin(m *Map) Origin {
	return Origin{
		Device:     originField(m, FieldDevice),
		ClientAddr: originField(m, FieldClientAddr),
		Region:     originField(m, FieldRegion),
		Node:       originField(m, FieldNode),
	}
}

func originField(m *Map, name string) string {
	v, _ := m.Get(name)
	return cutUTF8(string(v), MaxOriginField)
}

// SessionData yields the live data keys of the session record m (ReadSession's Data) and
// their values, which alias the Map, in no particular order.
func SessionData(m *Map) iter.Seq2[string, []byte] {
	return func(yield func(string, []byte) bool) {
		for name, f := range m.fields {
			if key, ok := dataKey(name, f); ok && !yield(key, f.Value) {
				return
			}
		}
	}
}

// dataKey returns the session data key a field holds: a live last-writer-wins field named
// DataPrefix + key.
func dataKey(name string, f Field) (string, bool) {
	key, ok := strings.CutPrefix(name, DataPrefix)
	return key, ok && f.Kind == KindLWW && !f.Deleted
}

// SessionDataSize returns the number of live data keys of the session record m and their
// size: the bytes of their names (without DataPrefix) and values, and the number of
// deleted keys (tombstones) it keeps. It allocates nothing.
func SessionDataSize(m *Map) (keys, size, deleted int) {
	for name, f := range m.fields {
		if key, ok := dataKey(name, f); ok {
			keys++
			size += len(key) + len(f.Value)
		} else if f.Deleted && strings.HasPrefix(name, DataPrefix) {
			deleted++
		}
	}
	return keys, size, deleted
}

// SessionDataLive reports whether the session record m has a live value for data key.
func SessionDataLive(m *Map, key string) bool {
	f, ok := m.fields[DataPrefix+key]
	return ok && f.Kind == KindLWW && !f.Deleted
}

// IsSession reports whether m has an owner, as every stored session record does; a
// record made only of updates to a session never stored, or since deleted, has none.
func IsSession(m *Map) bool {
	f, ok := m.Field(FieldUser)
	return ok && f.Kind == KindFWW && len(f.Value) > 0
}

// ReadSessionMeta returns the typed view of the session record m without its data (Data
// is nil): enough to decide whether the session is usable.
func ReadSessionMeta(id string, m *Map) Session {
	var s Session
	switch v := m.views; {
	case v == nil:
		s = readSessionMeta(m)
	case v.session.Load() != nil:
		s = *v.session.Load()
	default:
		s = readSessionMeta(m)
		kept := s
		v.session.Store(&kept)
	}
	s.ID = id
	return s
}

func readSessionMeta(m *Map) Session {
	var s Session
	if f, ok := m.Field(FieldUser); ok {
		s.UserID, s.Created = string(f.Value), f.TS
	}
	s.Expires = time.Unix(0, int64Field(m, FieldExpires)).UTC()
	s.IdleTTL = time.Duration(int64Field(m, FieldIdleTTL))
	s.LastUsed = time.Unix(0, m.MaxOf(FieldLastUsed)).UTC()
	_, s.Revoked = m.Flag(FieldRevoked)
	if v, ok := m.Get(FieldSeenUntil); ok {
		s.SeenUntil, _ = DecodeTimestamp(v)
	}
	if g := m.MaxOf(FieldTokenGen); g > 0 {
		s.TokenGen = uint64(g)
	}
	if f, ok := m.Field(FieldSessionApp); ok && f.Kind == KindFWW {
		s.App = string(f.Value)
		if v, ok := m.Get(FieldAppSeenUntil); ok {
			s.AppSeenUntil, _ = DecodeTimestamp(v)
		}
		_, s.SubjectWrites = m.Get(FieldSubjectWrites)
	}
	return s
}

// SessionApp returns the update, merged into a new session's record at its creation ts,
// that records the app whose subject owns it, the app's sessions_until the creating node
// held (appUntil; not recorded when zero), and whether the subject's own token may write
// the session's data.
func SessionApp(app string, appUntil Timestamp, subjectWrites bool, ts Timestamp) Map {
	var m Map
	m.Claim(FieldSessionApp, []byte(app), ts)
	if !appUntil.IsZero() {
		m.Claim(FieldAppSeenUntil, appUntil.AppendBinary(nil), ts)
	}
	if subjectWrites {
		m.Claim(FieldSubjectWrites, []byte{1}, ts)
	}
	return m
}

// SessionExpires returns the absolute expiry of the session record m, or the zero time
// (long past) when m lacks one.
func SessionExpires(m *Map) time.Time {
	return time.Unix(0, int64Field(m, FieldExpires)).UTC()
}

// NewSession returns the record of a new session of userID, created at ts.
func NewSession(userID string, expires time.Time, idleTTL time.Duration, ts Timestamp) Map {
	var m Map
	m.Claim(FieldUser, []byte(userID), ts)
	m.Claim(FieldExpires, binary.BigEndian.AppendUint64(nil, uint64(expires.UnixNano())), ts)
	m.Claim(FieldIdleTTL, binary.BigEndian.AppendUint64(nil, uint64(idleTTL)), ts)
	m.Raise(FieldLastUsed, ts.Wall, ts)
	return m
}

// SessionSaw returns the update, merged into a new session's record at its creation ts,
// that records the owner's sessions_until the creating node held (nothing when zero).
func SessionSaw(until, ts Timestamp) Map {
	var m Map
	if !until.IsZero() {
		m.Claim(FieldSeenUntil, until.AppendBinary(nil), ts)
	}
	return m
}

// SessionOrigin returns the update, merged into a new session's record at its creation
// ts, that records where and how it began; empty fields are not recorded, and each is
// cut to MaxOriginField bytes.
func SessionOrigin(o Origin, ts Timestamp) Map {
	var m Map
	for _, f := range []struct{ name, v string }{
		{FieldDevice, o.Device}, {FieldClientAddr, o.ClientAddr}, {FieldRegion, o.Region}, {FieldNode, o.Node},
	} {
		if f.v != "" {
			m.Claim(f.name, []byte(cutUTF8(f.v, MaxOriginField)), ts)
		}
	}
	return m
}

// cutUTF8 returns s cut to at most n bytes, not inside a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// RenewSessionToken returns the update, at ts, that makes gen the generation of a
// session's token: tokens of earlier generations stop working. Concurrent renewals to
// the same generation both stand; the generation only rises.
func RenewSessionToken(gen uint64, ts Timestamp) Map {
	var m Map
	m.Raise(FieldTokenGen, int64(min(gen, math.MaxInt64)), ts) // #nosec G115 -- bounded by min
	return m
}

// TouchSession returns the update that records a use of a session at ts.
func TouchSession(ts Timestamp) Map {
	var m Map
	m.Raise(FieldLastUsed, ts.Wall, ts)
	return m
}

// RevokeSession returns the update that revokes a session at ts.
func RevokeSession(ts Timestamp) Map {
	var m Map
	m.SetFlag(FieldRevoked, ts)
	return m
}

func int64Field(m *Map, name string) int64 {
	v, ok := m.Get(name)
	if !ok || len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// views are the typed views of a Map that Share made (Map.views), each computed by a
// reader that finds it missing and kept: the Map's fields do not change while the views
// are attached. They hold no ID (the caller's) and nothing a caller could change in place
// (no maps; the one slice, latest, only Bookmark.AddMap reads), so every reader may be
// handed a copy of the same one.
type views struct {
	session atomic.Pointer[Session]     // readSessionMeta
	origin  atomic.Pointer[Origin]      // readSessionOrigin
	user    atomic.Pointer[User]        // readUserMeta
	latest  atomic.Pointer[[]Timestamp] // Map.latestByNode, for Bookmark.AddMap
	memo    atomic.Pointer[memo]        // Map.SetMemo's
}

// memo is a value a caller keeps with a shared Map's state (Map.SetMemo).
type memo struct{ key, value any }

// Memo returns the value kept with SetMemo under key with m's state, and whether there is
// one.
func (m *Map) Memo(key any) (any, bool) {
	if m.views == nil {
		return nil, false
	}
	if e := m.views.memo.Load(); e != nil && e.key == key {
		return e.value, true
	}
	return nil, false
}

// SetMemo keeps value under key with m's state when m is shared (Share): every copy of
// that state then finds it with Memo, until the state changes; with a Map that is not
// shared, it does nothing. One value is kept per state: a SetMemo under another key
// replaces it. value must follow from m's fields (and whatever the caller checks when it
// finds it), must not be changed afterwards, and may be read by many goroutines at once.
func (m *Map) SetMemo(key, value any) {
	if m.views != nil {
		m.views.memo.Store(&memo{key, value})
	}
}

// latestByNode returns m.latestByNode(), m being the Map v belongs to: memoized, as a
// decoded Map keeps it (Map.origins), for a cached record the committer changed.
func (v *views) latestByNode(m *Map) []Timestamp {
	if p := v.latest.Load(); p != nil {
		return *p
	}
	o := m.latestByNode()
	v.latest.Store(&o)
	return o
}
