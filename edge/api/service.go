package api

import "encoding/json"

// The service API (/v1/service/): an app, authenticated by its API key, creates and
// manages sessions for its subjects — people it authenticated itself (its own accounts,
// OIDC, SSO) — and checks tokens.

// CreateServiceSessionRequest is the body of POST /v1/service/sessions. Subject: 1–255
// bytes of UTF-8 without control characters, any string the app names a person by. Data:
// the session's first data, as PatchSessionRequest's but without nulls. TTL: the
// session's absolute lifetime in seconds, 60 to 31536000 (a year); 0 or absent: the
// node's --session-ttl. IdleTTL: how long it may go unused, in seconds, 60 to TTL; 0 or
// absent: the node's --idle-ttl, at most TTL.
type CreateServiceSessionRequest struct {
	Subject string                     `json:"subject"`
	Data    map[string]json.RawMessage `json:"data,omitempty"`
	TTL     int64                      `json:"ttl,omitempty"`
	IdleTTL int64                      `json:"idle_ttl,omitempty"`
	// SubjectWrites lets the session's own token write its data (PATCH
	// /v1/sessions/current); by default only the app writes it.
	SubjectWrites bool `json:"subject_writes,omitempty"`
}

// ServiceSessionResponse is the body of POST /v1/service/sessions (201): the new session
// and its bearer token, which the user routes take for it (GET and PATCH
// /v1/sessions/current and the other session routes) like any session's token.
type ServiceSessionResponse struct {
	Session Session `json:"session"`
	Token   string  `json:"token"`
}

// IntrospectRequest is the body of POST /v1/service/introspect.
type IntrospectRequest struct {
	Token string `json:"token"`
}

// IntrospectResponse is the body of POST /v1/service/introspect (RFC 7662 in spirit):
// Active, with the session and its subject, when the token is a usable session token of
// one of the app's subjects; else only {"active":false} — a token that is invalid,
// expired, revoked, replaced by a renewal, or not the app's to see.
type IntrospectResponse struct {
	Active  bool         `json:"active"`
	Session *Session     `json:"session,omitempty"`
	User    *SubjectUser `json:"user,omitempty"`
}

// SubjectUser is the subject a session belongs to, as introspection shows it: its user
// ID (the session's user_id) and the subject the app named.
type SubjectUser struct {
	ID      string `json:"id"`
	Subject string `json:"subject"`
}
