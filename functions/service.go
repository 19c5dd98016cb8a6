package functions

import (
	"context"
	"encoding/json"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sessiond/sessiond/crdt"
)

// Sessions of an app's subjects (the service API). An app — a website's backend,
// authenticated by its API key — creates sessions for people it authenticated itself
// (its own accounts, OIDC, SSO), each named by a subject: any string the app chooses.
// A subject is a user with no username, no password and no profile, whose ID is a hash
// of the app and the subject (crdt.SubjectID), so that every node finds its records
// without a lookup, its records live together in one partition, and no username can
// name it. Its sessions are sessions like any other: the same tokens, revocation,
// expiry, bounds and bookmarks; the user routes take their tokens for the session routes.
//
// An app sees and touches only its own subjects' sessions: another app's, and a
// registered user's, are ENotFound (introspection: inactive), never EUnauthorized, so
// that nothing tells an app whether an id exists.

// Limits of the service API.
const (
	MaxSubject    = 255                  // bytes
	MinServiceTTL = time.Minute          // the shortest lifetime, absolute or idle, an app may ask for
	MaxServiceTTL = 365 * 24 * time.Hour // the longest absolute lifetime
)

// SubjectLogin is an app's request to create a session for a subject.
type SubjectLogin struct {
	Subject string
	// Data is the session's first data: each value a JSON value but null.
	Data map[string]json.RawMessage
	// TTL is the absolute lifetime, MinServiceTTL to MaxServiceTTL; 0: the node's.
	TTL time.Duration
	// IdleTTL is how long the session may go unused, MinServiceTTL to TTL; 0: the
	// node's, at most TTL.
	IdleTTL time.Duration
	// SubjectWrites lets the session's own token write its data (PATCH
	// /v1/sessions/current); otherwise only the app writes it (PatchServiceSession), so
	// that what the app stores there can be trusted as the app's.
	SubjectWrites bool
	Origin        crdt.Origin
}

// ValidSubject checks a subject: 1 to MaxSubject bytes of UTF-8 without control
// characters.
func ValidSubject(subject string) error {
	if subject == "" || len(subject) > MaxSubject {
		return Errorf(EInvalid, "subject must be 1 to %d bytes", MaxSubject)
	}
	if !utf8.ValidString(subject) {
		return Errorf(EInvalid, "subject must be valid UTF-8")
	}
	for _, c := range subject {
		if unicode.IsControl(c) {
			return Errorf(EInvalid, "subject must not contain control characters")
		}
	}
	return nil
}

var errNoServiceSession = Errorf(ENotFound, "no such session (expired, revoked, or not one of this app's)")

// CreateForSubject creates a session of app's subject req.Subject, with its first data,
// and the subject's record if this node holds none. As for a sign-in, beyond
// MaxSessionsPerUser active sessions the oldest is revoked.
func (s *Sessions) CreateForSubject(ctx context.Context, app string, req SubjectLogin) (Session, error) {
	if err := ValidAppName(app); err != nil {
		return Session{}, err
	}
	if err := ValidSubject(req.Subject); err != nil {
		return Session{}, err
	}
	ttl, idle := req.TTL, req.IdleTTL
	if ttl == 0 {
		ttl = s.ttl()
	}
	if ttl < MinServiceTTL || ttl > MaxServiceTTL {
		return Session{}, Errorf(EInvalid, "ttl must be %d to %d seconds", int64(MinServiceTTL.Seconds()), int64(MaxServiceTTL.Seconds()))
	}
	if idle == 0 {
		idle = min(s.idleTTL(), ttl)
	}
	if idle < MinServiceTTL || idle > ttl {
		return Session{}, Errorf(EInvalid, "idle_ttl must be %d seconds to ttl", int64(MinServiceTTL.Seconds()))
	}
	patch := DataPatch{Set: req.Data}
	if err := validPatch(patch); err != nil {
		return Session{}, err
	}
	id := crdt.SubjectID(app, req.Subject)
	m, ok, err := s.Store.Record(ctx, crdt.UserKey(id))
	if err != nil {
		return Session{}, err
	}
	u := crdt.User{ID: id, App: app, Subject: req.Subject}
	if ok {
		if u = crdt.ReadUser(id, &m); u.App != app || u.Subject != req.Subject || u.Deleted {
			return Session{}, errSubjectClash
		}
	}
	return s.create(ctx, u, newSession{origin: req.Origin, ttl: ttl, idle: idle, app: app, data: req.Data, subjectWrites: req.SubjectWrites})
}

// appSession returns the records of session id and its user, when the session is
// usable and belongs to a subject of app; else errNoServiceSession.
func (s *Sessions) appSession(ctx context.Context, app, id string) (loadedRecords, error) {
	m, ok, err := s.Store.Record(ctx, crdt.SessionKey(id))
	if err != nil {
		return loadedRecords{}, err
	}
	meta := crdt.ReadSessionMeta(id, &m)
	if !ok || meta.App != app || meta.UserID == "" {
		return loadedRecords{}, errNoServiceSession
	}
	l, err := s.load(ctx, meta.UserID, id, true, s.Clock.PhysicalNow())
	if ErrorCode(err) == EUnauthorized {
		return loadedRecords{}, errNoServiceSession
	}
	if err != nil {
		return loadedRecords{}, err
	}
	if l.user.App != app {
		return loadedRecords{}, errNoServiceSession
	}
	return l, nil
}

// ServiceSession returns session id of one of app's subjects.
func (s *Sessions) ServiceSession(ctx context.Context, app, id string) (Session, error) {
	l, err := s.appSession(ctx, app, id)
	if err != nil {
		return Session{}, err
	}
	return sessionOf(crdt.ReadSession(id, &l.session), l.user), nil
}

// PatchServiceSession merges patch into the data of session id of one of app's subjects,
// as PatchData does for a session's own token.
func (s *Sessions) PatchServiceSession(ctx context.Context, app, id string, patch DataPatch) (Session, error) {
	if err := validPatch(patch); err != nil {
		return Session{}, err
	}
	l, err := s.appSession(ctx, app, id)
	if err != nil {
		return Session{}, err
	}
	return s.patchData(ctx, Principal{UserID: l.user.ID, SessionID: id, App: app, loaded: l, hasLoaded: true}, patch, true)
}

// RevokeServiceSession revokes session id of one of app's subjects: also one no longer
// usable (idle past its expiry, ended with its app's or subject's sessions), which stays
// stored until its absolute expiry, so that revoking it drops its data and the app gets
// the room back (Quota). A session revoked already, or one not the app's (or not held
// here), is errNoServiceSession.
func (s *Sessions) RevokeServiceSession(ctx context.Context, app, id string) error {
	m, ok, err := s.Store.Record(ctx, crdt.SessionKey(id))
	if err != nil {
		return err
	}
	if meta := crdt.ReadSessionMeta(id, &m); !ok || meta.App != app || meta.UserID == "" || meta.Revoked {
		return errNoServiceSession
	}
	return s.Store.Update(ctx, func(tx Tx) error {
		_, err := tx.Merge(crdt.SessionKey(id), crdt.RevokeSession(s.Clock.Next()))
		return err
	})
}

// Introspect returns the session a token names — userID, sessionID and generation gen,
// as the token's verified claims say — when it is usable now and belongs to a subject
// of app, and records the use as an authenticated request does (sliding idle expiry).
// Any other session, or none, is EUnauthorized, whatever the reason: the token is not
// active for this app.
func (s *Sessions) Introspect(ctx context.Context, app, userID, sessionID string, gen uint64) (Session, error) {
	now := s.Clock.PhysicalNow()
	l, err := s.load(ctx, userID, sessionID, true, now)
	if err != nil {
		return Session{}, err
	}
	if l.user.App != app || l.meta.App != app {
		return Session{}, errSessionEnded
	}
	if l.meta.TokenGen > gen {
		return Session{}, errTokenRenewed
	}
	if l, err = s.touch(ctx, sessionID, l, now); err != nil {
		return Session{}, err
	}
	return sessionOf(crdt.ReadSession(sessionID, &l.session), l.user), nil
}

// SubjectSessions returns the usable sessions of app's subject, newest first: none for a
// subject this node has no record of.
func (s *Sessions) SubjectSessions(ctx context.Context, app, subject string) ([]Session, error) {
	u, ok, err := s.subject(ctx, app, subject)
	if err != nil || !ok {
		return []Session{}, err
	}
	live, err := s.liveSessions(ctx, u)
	if err != nil {
		return nil, err
	}
	out := []Session{}
	for _, ss := range live {
		out = append(out, sessionOf(ss, u))
	}
	return out, nil
}

// RevokeSubject revokes every session of app's subject created up to now, on every
// replica, as a sign-out everywhere does (RevokeAll): also those this node has not heard
// of yet. It writes the subject's record if this node holds none, so that the
// revocation waits there for sessions created elsewhere, and flags each session it holds
// revoked, as RevokeAll does, so that their data goes (the app gets the room back).
func (s *Sessions) RevokeSubject(ctx context.Context, app, subject string) error {
	if err := ValidAppName(app); err != nil {
		return err
	}
	if err := ValidSubject(subject); err != nil {
		return err
	}
	id := crdt.SubjectID(app, subject)
	held, err := s.Store.UserSessions(ctx, id)
	if err != nil {
		return err
	}
	quota := s.Quota.claim(app)
	defer quota.release()
	return s.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.UserKey(id))
		if err != nil {
			return err
		}
		ts := s.Clock.Next()
		if ok {
			if u := crdt.ReadUser(id, &m); u.App != app || u.Subject != subject {
				return errSubjectClash
			}
		} else if _, err := tx.Merge(crdt.UserKey(id), crdt.NewSubject(app, subject, ts)); err != nil {
			return err
		}
		update := crdt.RevokeSessionsUntil(ts, s.maxSkew())
		update.Merge(crdt.KeepSubjectUntil(s.keepSubject(ts), ts))
		after, err := tx.Merge(crdt.UserKey(id), update)
		if err != nil {
			return err
		}
		for _, ss := range held {
			if ss.UserID == id && !ss.Revoked {
				if _, err := tx.Merge(crdt.SessionKey(ss.ID), crdt.RevokeSession(ts)); err != nil {
					return err
				}
			}
		}
		if ok {
			return nil // a known subject's sessions can always be revoked
		}
		// A subject this node has no record of gets one: bounded like any other record.
		return quota.allows(storedSize(crdt.UserKey(id), &after, true))
	})
}

// SubjectLister lists the subjects of an app whose records this node holds;
// *storage.DB implements it (see its AppSubjects).
type SubjectLister interface {
	AppSubjects(ctx context.Context, app, after string) (ids []string, next string, err error)
}

// RevokeEnded writes a revocation to every session held here that app's end of its
// subjects' sessions (Apps.EndSessions) ended, and returns how many. Ended sessions
// already stop working; written again, storage drops them (it keeps no session its app
// ended, and drops any copy that arrives later), so that the app gets the room back
// (Quota) instead of waiting up to a year for them to expire. Each node runs it over
// what it holds when an end reaches it (and when it starts); running it again finds
// nothing. Without Subjects it does nothing.
func (s *Sessions) RevokeEnded(ctx context.Context, app string) (int, error) {
	if s.Subjects == nil {
		return 0, nil
	}
	m, ok, err := s.Store.Record(ctx, crdt.AppKey(app))
	if err != nil || !ok {
		return 0, err
	}
	end := crdt.ReadAppSessionsEnd(app, &m)
	if end.SessionsUntil.IsZero() {
		return 0, nil
	}
	flagged, after := 0, ""
	for {
		ids, next, err := s.Subjects.AppSubjects(ctx, app, after)
		if err != nil {
			return flagged, err
		}
		for _, id := range ids {
			held, err := s.Store.UserSessions(ctx, id)
			if err != nil {
				return flagged, err
			}
			held = slices.DeleteFunc(held, func(ss crdt.Session) bool { return ss.Revoked || ss.App != app || !end.Ends(ss) })
			if len(held) == 0 {
				continue
			}
			err = s.Store.Update(ctx, func(tx Tx) error {
				ts := s.Clock.Next()
				for _, ss := range held {
					if _, err := tx.Merge(crdt.SessionKey(ss.ID), crdt.RevokeSession(ts)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return flagged, err
			}
			flagged += len(held)
		}
		if next == "" {
			return flagged, nil
		}
		after = next
	}
}

// subject returns the record of app's subject, and whether this node holds one.
func (s *Sessions) subject(ctx context.Context, app, subject string) (crdt.User, bool, error) {
	if err := ValidAppName(app); err != nil {
		return crdt.User{}, false, err
	}
	if err := ValidSubject(subject); err != nil {
		return crdt.User{}, false, err
	}
	id := crdt.SubjectID(app, subject)
	m, ok, err := s.Store.Record(ctx, crdt.UserKey(id))
	if err != nil || !ok {
		return crdt.User{}, false, err
	}
	u := crdt.ReadUser(id, &m)
	if u.App != app || u.Subject != subject {
		return crdt.User{}, false, errSubjectClash
	}
	return u, true, nil
}
