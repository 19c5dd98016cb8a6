package functions

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions/ijson"
)

// Session is a session as the API shows it (package api owns the JSON shape).
type Session = api.Session

// sessionOf returns the session s of user u as the API shows it.
func sessionOf(s crdt.Session, u crdt.User) Session {
	out := Session{
		ID: s.ID, UserID: s.UserID, Username: u.Username, Subject: u.Subject, CreatedAt: s.Created.Time(),
		LastUsedAt: s.LastUsed, ExpiresAt: s.Expires, IdleExpiresAt: s.IdleExpires(),
		Data:   make(map[string]json.RawMessage, len(s.Data)),
		Device: s.Origin.Device, ClientAddress: s.Origin.ClientAddr, Region: s.Origin.Region, Node: s.Origin.Node,
	}
	for k, v := range s.Data {
		out.Data[k] = json.RawMessage(v)
	}
	return out
}

// sessionOfRecord is sessionOf(crdt.ReadSession(meta.ID, m), u) given meta, the
// crdt.ReadSessionMeta of the session record m: it reads only the origin and the data,
// and builds one data map instead of two.
func sessionOfRecord(meta crdt.Session, m *crdt.Map, u crdt.User) Session {
	meta.Origin = crdt.ReadSessionOrigin(m)
	out := sessionOf(meta, u)
	for k, v := range crdt.SessionData(m) {
		out.Data[k] = json.RawMessage(v)
	}
	return out
}

// Principal is the authenticated caller of a request.
type Principal struct {
	UserID    string
	Username  string
	SessionID string
	TokenGen  uint64 // the generation of the token it presented (Renew)
	// App is, for a subject of an app (a session the app created through the service
	// API), the app; "" for a registered user.
	App string

	// loaded holds the session and user records Authenticate read for this request, so
	// the handler that follows does not read them again (hasLoaded). A Principal built
	// elsewhere has none; handlers then read the records themselves. Held by value: a
	// Principal is copied a few times per request, which costs less than allocating it.
	loaded    loadedRecords
	hasLoaded bool
}

// SessionRecord returns the caller's session record as authentication read it for this
// request, and false for a Principal that holds none. The Map is a copy of the store's:
// it may share its fields and views with the store's cache (crdt.Map.Share), so what a
// caller keeps with it (crdt.Map.SetMemo) serves every request that reads that state.
func (p Principal) SessionRecord() (crdt.Map, bool) {
	return p.loaded.session, p.hasLoaded
}

type loadedRecords struct {
	session crdt.Map     // the session record
	meta    crdt.Session // crdt.ReadSessionMeta of session
	user    crdt.User    // crdt.ReadUserMeta of the user record: no password hash, no profile
}

// Login is the request to sign in.
type Login struct {
	Username string
	Password string
	Origin   crdt.Origin // where and how the session begins, recorded with it
}

// DataPatch changes session data: Set writes keys (values are JSON), Delete removes them.
type DataPatch struct {
	Set    map[string]json.RawMessage
	Delete []string
}

// Sessions signs users in and reads, edits and revokes their sessions. It holds no state
// between calls and is safe for concurrent use.
type Sessions struct {
	Store     Store
	Clock     Clock
	Passwords *Passwords
	TTL       time.Duration // absolute lifetime of a session; default 24h
	IdleTTL   time.Duration // idle lifetime, slid by each use; default 2h
	// TouchEvery bounds how often a use is written down (a durable, replicated write), so
	// reads stay reads; idle expiry is exact to within it. Default min(IdleTTL/20, 1m).
	TouchEvery time.Duration
	// MaxSkew is how far apart nodes' clocks may be (the node's --max-skew): sign out
	// everywhere also revokes sessions that nodes unaware of it stamped up to MaxSkew
	// later (see crdt.User.Revokes). Default 1m.
	MaxSkew time.Duration
	// Quota bounds what each app's subjects and their sessions store (new subjects,
	// new sessions, session data that grows); nil: nothing.
	Quota *Quota
	// Subjects lists an app's subjects held here, for RevokeEnded; nil: it does nothing.
	Subjects SubjectLister
}

func (s *Sessions) maxSkew() time.Duration {
	if s.MaxSkew > 0 {
		return s.MaxSkew
	}
	return time.Minute
}

func (s *Sessions) ttl() time.Duration {
	if s.TTL > 0 {
		return s.TTL
	}
	return 24 * time.Hour
}

func (s *Sessions) idleTTL() time.Duration {
	if s.IdleTTL > 0 {
		return s.IdleTTL
	}
	return 2 * time.Hour
}

func (s *Sessions) touchEvery() time.Duration {
	if s.TouchEvery > 0 {
		return s.TouchEvery
	}
	return min(s.idleTTL()/20, time.Minute)
}

var errBadCredentials = Errorf(EUnauthorized, "wrong username or password")

// Login checks credentials and creates a session. Unknown users and wrong passwords give
// the same error after the same work. An account that lost a concurrent registration of
// its name (another partition claimed it first) gets EUsernameConflict. When no password
// worker is free in time (see PasswordLimits) the error is EUnavailable, whatever the
// credentials: never EUnauthorized for a check that did not run.
func (s *Sessions) Login(ctx context.Context, req Login) (Session, error) {
	if validUsername(req.Username) != nil || validPassword(req.Password) != nil {
		// The same work and the same queue as any other login, so a refusal (the
		// hashing queue is full) does not single these out either.
		if _, err := s.Passwords.Verify(ctx, req.Password, ""); err != nil {
			return Session{}, err
		}
		return Session{}, errBadCredentials
	}
	users, err := claimants(ctx, s.Store, req.Username)
	if err != nil {
		return Session{}, err
	}
	if len(users) == 0 {
		if _, err := s.Passwords.Verify(ctx, req.Password, ""); err != nil {
			return Session{}, err
		}
		return Session{}, errBadCredentials
	}
	for i, u := range users {
		ok, err := s.Passwords.Verify(ctx, req.Password, u.PasswordHash)
		if err != nil {
			return Session{}, err
		}
		if !ok {
			continue
		}
		if i > 0 {
			return Session{}, errNameLost(req.Username)
		}
		return s.create(ctx, u, newSession{origin: req.Origin, ttl: s.ttl(), idle: s.idleTTL()})
	}
	return Session{}, errBadCredentials
}

// newSession is what create makes a session with.
type newSession struct {
	origin    crdt.Origin
	ttl, idle time.Duration
	// For a subject of an app (CreateForSubject): the app, whose subject's record create
	// writes when this node holds none, and the session's first data (validated).
	app           string
	data          map[string]json.RawMessage
	subjectWrites bool // crdt.FieldSubjectWrites
}

// create creates a session of user u. Over MaxSessionsPerUser, the oldest is revoked.
func (s *Sessions) create(ctx context.Context, u crdt.User, ns newSession) (Session, error) {
	existing, err := s.Store.UserSessions(ctx, u.ID)
	if err != nil {
		return Session{}, err
	}
	revoke := toRevoke(existing, u, s.Clock.PhysicalNow())
	id := newID(crdt.IDPartition(u.ID)) // with its user: see crdt.KeyHomes
	var rec crdt.Map
	var quota *claim // a subject's session counts against its app's Quota
	if ns.app != "" {
		quota = s.Quota.claim(ns.app)
		defer quota.release()
	}
	err = s.Store.Update(ctx, func(tx Tx) error {
		ts := s.Clock.Next()
		for _, ss := range revoke {
			if _, err := tx.Merge(crdt.SessionKey(ss.ID), crdt.RevokeSession(ts)); err != nil {
				return err
			}
		}
		// The new session notes the sign-out everywhere this node holds, read here, where
		// nothing can come between: one it has not received yet may revoke it.
		um, ok, err := tx.Record(crdt.UserKey(u.ID))
		if err != nil {
			return err
		}
		var growth int64 // what the app's subject and session add (Quota)
		if ns.app != "" {
			var before int64
			switch cur := crdt.ReadUser(u.ID, &um); {
			case !ok:
			case cur.App != ns.app || cur.Subject != u.Subject || cur.Deleted:
				return errSubjectClash
			default:
				before = storedSize(crdt.UserKey(u.ID), &um, true)
			}
			// The subject's record is kept as long as this session may live (KeepSubject).
			update := crdt.NewSubject(ns.app, u.Subject, ts)
			update.Merge(crdt.KeepSubjectUntil(s.keepSubject(ts), ts))
			subject, err := tx.Merge(crdt.UserKey(u.ID), update)
			if err != nil {
				return err
			}
			growth = storedSize(crdt.UserKey(u.ID), &subject, true) - before
		}
		rec = crdt.NewSession(u.ID, ts.Time().Add(ns.ttl), ns.idle, ts)
		rec.Merge(crdt.SessionSaw(crdt.ReadUser(u.ID, &um).SessionsUntil, ts))
		rec.Merge(crdt.SessionOrigin(ns.origin, ts))
		if ns.app != "" {
			// Likewise the end of the app's sessions this node holds (App.Ends).
			am, _, err := tx.Record(crdt.AppKey(ns.app))
			if err != nil {
				return err
			}
			rec.Merge(crdt.SessionApp(ns.app, crdt.ReadAppSessionsEnd(ns.app, &am).SessionsUntil, ns.subjectWrites, ts))
		}
		for k, v := range ns.data {
			rec.Set(crdt.DataPrefix+k, v, ts)
		}
		rec, err = tx.Merge(crdt.SessionKey(id), rec)
		if err != nil {
			return err
		}
		if err := checkSessionData(&rec); err != nil {
			return err
		}
		if ns.app == "" {
			return nil
		}
		return quota.allows(growth + storedSize(crdt.SessionKey(id), &rec, true))
	})
	if err != nil {
		return Session{}, err
	}
	return sessionOf(crdt.ReadSession(id, &rec), u), nil
}

// keepSubject returns until when a subject's record must be kept after a session of it
// is created, or its sessions are revoked, at ts: until every session that write may
// concern has expired — one created then (MaxServiceTTL), or, for a revocation, created
// within its window of ts on a node that had not heard of it (maxSkew). An app's
// subjects' records thus go a year after their latest session (crdt.FieldSubjectKeep),
// and with them what they count against the app's Quota.
func (s *Sessions) keepSubject(ts crdt.Timestamp) time.Time {
	return ts.Time().Add(MaxServiceTTL + s.maxSkew())
}

// errSubjectClash is a subject ID whose record is another's: a registered user's (their
// IDs are random, so with negligible probability) or one that is erased.
var errSubjectClash = Errorf(EConflict, "this subject's record belongs to someone else; name the subject differently")

// checkSessionData checks the session record m after a merge against the bounds on its
// data; an error discards the merge.
func checkSessionData(m *crdt.Map) error {
	keys, size, deleted := crdt.SessionDataSize(m)
	switch {
	case !crdt.IsSession(m): // swept since it was read: the merge created nothing stored
		return errSessionEnded
	case keys > MaxDataKeys:
		return Errorf(ETooLarge, "session data would have %d keys, at most %d", keys, MaxDataKeys)
	case size > MaxSessionData:
		return Errorf(ETooLarge, "session data would be %d bytes, at most %d", size, MaxSessionData)
	case keys+deleted > MaxDataNames:
		return Errorf(ETooLarge, "session data would hold %d key names, deleted ones included, at most %d: a deleted key is remembered until the session ends; set keys deleted before, or sign in again for a new session", keys+deleted, MaxDataNames)
	}
	return nil
}

// toRevoke returns the sessions of all (u's, not revoked by their own flag) that a new
// session of u revokes, so that a script that signs in in a loop cannot grow what an
// account stores without bound: the oldest beyond MaxSessionsPerUser-1 of those not past
// their absolute expiry, idle ones included (unusable, they would keep their data until
// they expire), and those u's sign-out everywhere revokes without their flag (the flag
// makes storage shed their data, and UserSessions pass over them).
func toRevoke(all []crdt.Session, u crdt.User, now time.Time) []crdt.Session {
	var out, counted []crdt.Session
	for _, ss := range all {
		switch {
		case ss.Revoked || ss.UserID != u.ID || !now.Before(ss.Expires):
		case u.Revokes(ss):
			out = append(out, ss)
		default:
			counted = append(counted, ss)
		}
	}
	slices.SortFunc(counted, func(a, b crdt.Session) int { return b.Created.Compare(a.Created) })
	if len(counted) >= MaxSessionsPerUser {
		out = append(out, counted[MaxSessionsPerUser-1:]...)
	}
	return out
}

// activeSessions returns the sessions usable at now, newest first.
func activeSessions(all []crdt.Session, u crdt.User, now time.Time) []crdt.Session {
	var out []crdt.Session
	for _, ss := range all {
		if usable(ss, u, now) {
			out = append(out, ss)
		}
	}
	slices.SortFunc(out, func(a, b crdt.Session) int { return b.Created.Compare(a.Created) })
	return out
}

func usable(ss crdt.Session, u crdt.User, now time.Time) bool {
	return ss.ActiveAt(now) && ss.UserID == u.ID && !u.Deleted && !u.Revokes(ss)
}

// Authenticate checks that session sessionID of userID is usable now with a token of
// generation 0, the one sign-in returns — it exists here, is not revoked (by itself or by
// its user's sign-out-everywhere), not expired, its token not renewed, and its user is not
// erased — and records the use, sliding idle expiry. Any failure is EUnauthorized.
func (s *Sessions) Authenticate(ctx context.Context, userID, sessionID string) (Principal, error) {
	return s.AuthenticateToken(ctx, userID, sessionID, 0, false)
}

// AuthenticateToken is Authenticate for a token of generation gen (Renew). With leaving,
// it is for the two requests that an account which lost its username to a concurrent
// registration (EUsernameConflict everywhere else) may still make, so that it can go:
// signing out and erasing itself; every other check holds.
func (s *Sessions) AuthenticateToken(ctx context.Context, userID, sessionID string, gen uint64, leaving bool) (Principal, error) {
	now := s.Clock.PhysicalNow()
	l, err := s.load(ctx, userID, sessionID, !leaving, now)
	if err == nil && l.meta.TokenGen > gen {
		err = errTokenRenewed
	}
	if err != nil {
		return Principal{}, err
	}
	if l, err = s.touch(ctx, sessionID, l, now); err != nil {
		return Principal{}, err
	}
	return Principal{
		UserID: userID, Username: l.user.Username, SessionID: sessionID, TokenGen: gen, App: l.user.App,
		loaded: l, hasLoaded: true,
	}, nil
}

// touch records a use of session sessionID, whose records l holds, sliding its idle
// expiry — at most every TouchEvery, judged at now — and returns l as it now is.
func (s *Sessions) touch(ctx context.Context, sessionID string, l loadedRecords, now time.Time) (loadedRecords, error) {
	if now.Sub(l.meta.LastUsed) < s.touchEvery() {
		return l, nil
	}
	var touched crdt.Map // not l, which the closure would move to the heap on every call
	err := s.Store.Update(ctx, func(tx Tx) error {
		var err error
		touched, err = tx.Merge(crdt.SessionKey(sessionID), crdt.TouchSession(s.Clock.Next()))
		return err
	})
	if err != nil {
		return loadedRecords{}, err
	}
	l.session, l.meta = touched, crdt.ReadSessionMeta(sessionID, &touched)
	return l, nil
}

// records returns the caller's session record and user: those Authenticate loaded for
// this request, or freshly read and checked.
func (s *Sessions) records(ctx context.Context, p Principal) (loadedRecords, error) {
	if p.hasLoaded {
		return p.loaded, nil
	}
	return s.load(ctx, p.UserID, p.SessionID, true, s.Clock.PhysicalNow())
}

var (
	errSessionEnded = Errorf(EUnauthorized, "session expired or revoked")
	errTokenRenewed = Errorf(EUnauthorized, "this token was replaced by a renewal of its session; use the new one")
	// ErrTokenRenewed is errTokenRenewed for callers that tell it apart (the message
	// stream names it when it ends).
	ErrTokenRenewed = errTokenRenewed
)

// load returns the record of a session of userID usable at now, and its user; with
// ownName, only if the user owns its username (else EUsernameConflict).
func (s *Sessions) load(ctx context.Context, userID, sessionID string, ownName bool, now time.Time) (loadedRecords, error) {
	// crdt.SessionKey(sessionID) and crdt.UserKey(userID), cut from one string: one
	// allocation instead of two, on every request.
	keys := crdt.SessionPrefix + sessionID + crdt.UserPrefix + userID
	n := len(crdt.SessionPrefix) + len(sessionID)
	// Two reads, not one Records: every check below only ever turns a yes into a no as
	// the records change (flags set, generations and sign-outs raised, expiry passed), so
	// the two need not be read at one point in time; and two reads that hit the record
	// cache allocate nothing.
	rec, ok, err := s.Store.Record(ctx, keys[:n])
	if err != nil || !ok {
		return loadedRecords{}, cmp.Or[error](err, errSessionEnded)
	}
	urec, ok, err := s.Store.Record(ctx, keys[n:])
	if err != nil || !ok {
		return loadedRecords{}, cmp.Or[error](err, errSessionEnded)
	}
	l := loadedRecords{session: rec, meta: crdt.ReadSessionMeta(sessionID, &rec), user: crdt.ReadUserMeta(userID, &urec)}
	if l.user.Deleted || !usable(l.meta, l.user, now) {
		return loadedRecords{}, errSessionEnded
	}
	if l.user.App != "" {
		if ended, err := s.appEnded(ctx, l.user.App, l.meta); err != nil || ended {
			return loadedRecords{}, cmp.Or[error](err, errSessionEnded)
		}
	}
	// An account that lost a concurrent registration of its name keeps no session that
	// works under it: its sessions stop working once the winning claim arrives.
	if !ownName || l.user.App != "" { // a subject has no username to lose
		return l, nil
	}
	if own, err := ownsName(ctx, s.Store, l.user); err != nil || !own {
		if err == nil {
			err = errNameLost(l.user.Username)
		}
		return loadedRecords{}, err
	}
	return l, nil
}

// appEnded reports whether app's end of its subjects' sessions (EndAppSessions) ends
// session s. The app's record is cluster-wide: every node holds it.
func (s *Sessions) appEnded(ctx context.Context, app string, ss crdt.Session) (bool, error) {
	m, ok, err := s.Store.Record(ctx, crdt.AppKey(app))
	if err != nil || !ok {
		return false, err
	}
	return crdt.ReadAppSessionsEnd(app, &m).Ends(ss), nil
}

// Check reports whether the caller's session is still usable with the token p presented:
// EUnauthorized once the session has ended (signed out, revoked, expired, erased) or a
// renewal replaced that token (p.TokenGen), else nil. It records no use. A live stream
// calls it to end when its session does.
func (s *Sessions) Check(ctx context.Context, p Principal) error {
	l, err := s.load(ctx, p.UserID, p.SessionID, true, s.Clock.PhysicalNow())
	if err == nil && l.meta.TokenGen > p.TokenGen {
		err = errTokenRenewed
	}
	return err
}

// Current returns the caller's own session.
func (s *Sessions) Current(ctx context.Context, p Principal) (Session, error) {
	l, err := s.records(ctx, p)
	if err != nil {
		return Session{}, err
	}
	return sessionOfRecord(l.meta, &l.session, l.user), nil
}

// PatchData merges patch into the caller's session data: each key is a last-writer-wins
// register, so concurrent edits of different keys both survive. The result must stay within
// MaxDataKeys keys and MaxSessionData bytes, else ETooLarge and nothing changes. A
// session an app created for its subject is EForbidden, unless it was created with
// SubjectWrites: its data is the app's to write.
func (s *Sessions) PatchData(ctx context.Context, p Principal, patch DataPatch) (Session, error) {
	return s.patchData(ctx, p, patch, false)
}

var errSubjectWrites = Errorf(EForbidden, "this session's data is written by the app that created it (the service API), not with its token; the app may allow it when it creates the session (subject_writes)")

// patchData is PatchData; byApp: the app patches its subject's session.
func (s *Sessions) patchData(ctx context.Context, p Principal, patch DataPatch, byApp bool) (Session, error) {
	l, err := s.records(ctx, p)
	if err != nil {
		return Session{}, err
	}
	if len(patch.Set)+len(patch.Delete) == 0 {
		return sessionOfRecord(l.meta, &l.session, l.user), nil
	}
	if l.meta.App != "" && !byApp && !l.meta.SubjectWrites {
		return Session{}, errSubjectWrites
	}
	if err := validPatch(patch); err != nil {
		return Session{}, err
	}
	key := crdt.SessionKey(p.SessionID) // p itself in the closure would move to the heap
	app := p.App                        // a subject's session counts against its app's Quota
	var quota *claim
	if app != "" {
		quota = s.Quota.claim(app)
		defer quota.release()
	}
	var merged crdt.Map
	// lenient: the session's data may be over its bounds already (writes through other
	// nodes at once each passed them, and their merge does not), so the patch is judged
	// by checkSessionDataGrowth; run only after a strict check refused it.
	patchFn := func(lenient bool) func(tx Tx) error {
		return func(tx Tx) error {
			var before crdt.Map
			var beforeSize int64
			if lenient || app != "" {
				var err error
				if before, _, err = tx.Record(key); err != nil {
					return err
				}
				beforeSize = storedSize(key, &before, true)
				before = before.Copy()
			}
			ts := s.Clock.Next()
			var update crdt.Map
			for k, v := range patch.Set {
				update.Set(crdt.DataPrefix+k, v, ts)
			}
			if len(patch.Delete) > 0 {
				// A tombstone is kept until the session ends: write one only for a key that
				// has a value here, so deleting keys never set grows nothing.
				cur, ok, err := tx.Record(key)
				if err != nil {
					return err
				}
				for _, k := range patch.Delete {
					if ok && crdt.SessionDataLive(&cur, k) {
						update.Delete(crdt.DataPrefix+k, ts)
					}
				}
			}
			update.Raise(crdt.FieldLastUsed, ts.Wall, ts)
			// The merge is checked after the fact: returning an error discards it. This
			// runs on the store's single committer, so it checks without building anything.
			var err error
			if merged, err = tx.Merge(key, update); err != nil {
				return err
			}
			if lenient {
				err = checkSessionDataGrowth(&before, &merged)
			} else {
				err = checkSessionData(&merged)
			}
			if err != nil || app == "" {
				return err
			}
			return quota.allows(storedSize(key, &merged, true) - beforeSize)
		}
	}
	err = s.Store.Update(ctx, patchFn(false))
	if ErrorCode(err) == ETooLarge {
		err = s.Store.Update(ctx, patchFn(true))
	}
	if err != nil {
		return Session{}, err
	}
	return sessionOf(crdt.ReadSession(p.SessionID, &merged), l.user), nil
}

// checkSessionDataGrowth is checkSessionData for a session whose data before the merge,
// before, may be over its bounds already. Over a bound, it lets through only a merge
// that gives no key a value it lacked and none a longer one (deleting keys is fine): two
// such patches through two nodes at once cannot grow anything when they merge, so the
// owner can bring the session back within its bounds and nobody can take it further past
// them (an outside review found that a rule judged on totals let concurrent patches
// climb to the record's size bound).
func checkSessionDataGrowth(before, m *crdt.Map) error {
	err := checkSessionData(m)
	if ErrorCode(err) != ETooLarge {
		return err
	}
	for _, name := range m.Names() {
		f, _ := m.Field(name)
		if !strings.HasPrefix(name, crdt.DataPrefix) || f.Deleted || f.Kind != crdt.KindLWW {
			continue
		}
		if old, ok := before.Field(name); !ok || old.Deleted || old.Kind != crdt.KindLWW || len(f.Value) > len(old.Value) {
			return err
		}
	}
	return nil
}

// validPatch checks a data patch against the bounds of a session's data.
func validPatch(patch DataPatch) error {
	if len(patch.Set)+len(patch.Delete) > MaxDataKeys {
		return Errorf(ETooLarge, "at most %d keys per update", MaxDataKeys)
	}
	size := 0
	for k, v := range patch.Set {
		if size += len(k) + len(v); size > MaxSessionData {
			return Errorf(ETooLarge, "the data set is over %d bytes", MaxSessionData)
		}
	}
	for k, v := range patch.Set {
		if err := validDataKey(k); err != nil {
			return err
		}
		if err := printableName("data key", k); err != nil {
			return err
		}
		if len(v) > MaxDataValue {
			return Errorf(ETooLarge, "value of %q is %d bytes, at most %d", k, len(v), MaxDataValue)
		}
		if err := ijson.Check(v); err != nil {
			return Errorf(EInvalid, "value of %q: %v (values are I-JSON, RFC 7493)", k, err)
		}
		if string(bytes.TrimSpace(v)) == "null" {
			return Errorf(EInvalid, "value of %q is null; delete the key instead", k)
		}
	}
	for _, k := range patch.Delete {
		if err := validDataKey(k); err != nil {
			return err
		}
	}
	return nil
}

// printableName refuses a new name (a data key, a key-value field) with a character
// that is not printable: a format character (U+200B, U+202E, U+FEFF) would make two names
// look alike, or turn text around it. Names already stored are read and deleted as they are.
func printableName(what, name string) error {
	// Graphic: letters, marks, numbers, punctuation, symbols, spaces; and the joiners
	// that emoji sequences and some scripts need (U+200C, U+200D).
	if strings.ContainsFunc(name, func(r rune) bool { return !unicode.IsGraphic(r) && r != '\u200c' && r != '\u200d' }) {
		return Errorf(EInvalid, "%s %q holds a character that is not printable (a format character such as U+200B, say)", what, name)
	}
	return nil
}

func validDataKey(k string) error {
	if len(k) == 0 || len(k) > MaxDataKey || !utf8.ValidString(k) || strings.ContainsFunc(k, unicode.IsControl) {
		return Errorf(EInvalid, "data keys must be 1 to %d bytes of printable UTF-8", MaxDataKey)
	}
	return nil
}

// List returns the caller's usable sessions, newest first, marking the current one.
func (s *Sessions) List(ctx context.Context, p Principal) ([]Session, error) {
	l, err := s.records(ctx, p)
	if err != nil {
		return nil, err
	}
	u := l.user
	live, err := s.liveSessions(ctx, u)
	if err != nil {
		return nil, err
	}
	out := []Session{}
	for _, ss := range live {
		v := sessionOf(ss, u)
		v.Current = ss.ID == p.SessionID
		out = append(out, v)
	}
	return out, nil
}

// liveSessions returns u's sessions held here that are usable now, newest first:
// activeSessions, less, for a subject, those its app ended (crdt.App.Ends).
func (s *Sessions) liveSessions(ctx context.Context, u crdt.User) ([]crdt.Session, error) {
	all, err := s.Store.UserSessions(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	live := activeSessions(all, u, s.Clock.PhysicalNow())
	if u.App == "" {
		return live, nil
	}
	m, ok, err := s.Store.Record(ctx, crdt.AppKey(u.App))
	if err != nil || !ok {
		return live, err
	}
	app := crdt.ReadAppSessionsEnd(u.App, &m)
	return slices.DeleteFunc(live, app.Ends), nil
}

// Renew replaces the caller's token: it raises the session's token generation past the
// caller's, so that the token the caller presented, and every earlier one, stops
// working, and returns the session and the new generation to sign a token with. The
// session and its data stay. A renewal replicates like any write: until it reaches a
// node, that node still accepts the old token. Two renewals of one token made on nodes
// that have not seen each other's both stand (the same generation).
func (s *Sessions) Renew(ctx context.Context, p Principal) (Session, uint64, error) {
	l, err := s.records(ctx, p)
	if err != nil {
		return Session{}, 0, err
	}
	var (
		rec crdt.Map
		gen uint64
	)
	err = s.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.SessionKey(p.SessionID))
		if err != nil {
			return err
		}
		meta := crdt.ReadSessionMeta(p.SessionID, &m)
		if !ok || meta.UserID != p.UserID {
			return errSessionEnded
		}
		if meta.TokenGen > p.TokenGen {
			return errTokenRenewed // renewed meanwhile, by this token's holder or a thief
		}
		gen = max(meta.TokenGen, p.TokenGen) + 1
		rec, err = tx.Merge(crdt.SessionKey(p.SessionID), crdt.RenewSessionToken(gen, s.Clock.Next()))
		return err
	})
	if err != nil {
		return Session{}, 0, err
	}
	return sessionOf(crdt.ReadSession(p.SessionID, &rec), l.user), gen, nil
}

// Revoke revokes one of the caller's sessions. Revocation is a monotonic flag: no
// concurrent use or update brings the session back. Another user's session, or one that
// does not exist, is ENotFound.
func (s *Sessions) Revoke(ctx context.Context, p Principal, sessionID string) error {
	return s.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.SessionKey(sessionID))
		if err != nil {
			return err
		}
		if !ok || crdt.ReadSession(sessionID, &m).UserID != p.UserID {
			return Errorf(ENotFound, "no such session")
		}
		_, err = tx.Merge(crdt.SessionKey(sessionID), crdt.RevokeSession(s.Clock.Next()))
		return err
	})
}

// RevokeAll revokes every session of the caller created up to now in real time, on
// every replica, including sessions this node has not yet heard of, created on nodes
// whose clocks are within MaxSkew of this one's (see crdt.User.Revokes).
//
// The sessions this node holds are revoked one by one too, so that storage sheds their
// data at once rather than keeping it until they expire (an outside review: signing in
// with data and out everywhere in a loop piled it up); those it does not hold yet are
// revoked all the same by the mark.
func (s *Sessions) RevokeAll(ctx context.Context, p Principal) error {
	held, err := s.Store.UserSessions(ctx, p.UserID)
	if err != nil {
		return err
	}
	return s.Store.Update(ctx, func(tx Tx) error {
		ts := s.Clock.Next()
		if _, err := tx.Merge(crdt.UserKey(p.UserID), crdt.RevokeSessionsUntil(ts, s.maxSkew())); err != nil {
			return err
		}
		for _, ss := range held {
			if !ss.Revoked {
				if _, err := tx.Merge(crdt.SessionKey(ss.ID), crdt.RevokeSession(ts)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
