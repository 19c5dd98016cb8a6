package api

import "time"

// App is an app's credentials as the admin routes show them (never its key, which only
// its creation returns).
type App struct {
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	Revoked   bool       `json:"revoked"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// SessionsEndedAt is when the app's subjects' sessions were last ended (rotate with
	// end_sessions, or POST /v1/admin/apps/{name}/end-sessions): every session made
	// before it stopped working.
	SessionsEndedAt *time.Time `json:"sessions_ended_at,omitempty"`
	// Stored is what the app stores, cluster-wide as the answering node estimates it
	// (one copy of each record): what --app-quota bounds.
	Stored *AppStored `json:"stored,omitempty"`
	// QuotaMiB is the app's own quota, MiB (negative: no bound), set with PUT
	// /v1/admin/apps/{name}/quota; absent, the nodes' --app-quota applies.
	QuotaMiB *int64 `json:"quota_mib,omitempty"`
	// Keys are the app's keys that still work or will stop working (retired ones are
	// left out), oldest first.
	Keys []AppKey `json:"keys"`
}

// AppKey is one of an app's API keys (never the key itself).
type AppKey struct {
	ID        string     `json:"id"` // "0" for the key the app was created with
	CreatedAt time.Time  `json:"created_at"`
	RetiresAt *time.Time `json:"retires_at,omitempty"` // set once a rotation replaced it
}

// AppQuotaRequest is the body of PUT /v1/admin/apps/{name}/quota: the app's own quota,
// MiB (negative: no bound; 0: it may add nothing); null (or absent) takes it away, so
// that the nodes' --app-quota applies again.
type AppQuotaRequest struct {
	QuotaMiB *int64 `json:"quota_mib"`
}

// RotateAppRequest is the body of POST /v1/admin/apps/{name}/rotate: how long the app's
// older keys keep working (seconds, 0 to 30 days; 0: they stop at once).
type RotateAppRequest struct {
	GraceSeconds int64 `json:"grace_seconds"`
	// EndSessions also ends every session of the app's subjects made so far (the answer
	// to a leaked key, whose holder may have made some).
	EndSessions bool `json:"end_sessions,omitempty"`
}

// CreateAppRequest is the body of POST /v1/admin/apps. Name: 2–32 of [a-z0-9-], beginning
// with a letter or digit.
type CreateAppRequest struct {
	Name string `json:"name"`
}

// CreateAppResponse is the body of POST /v1/admin/apps (201) and of POST
// /v1/admin/apps/{name}/rotate (200): the app and its new API key, shown this once (the
// node keeps only a hash of it).
type CreateAppResponse struct {
	App App    `json:"app"`
	Key string `json:"key"`
}

// AppResponse is the body of DELETE /v1/admin/apps/{name}: the app as its revocation left it.
type AppResponse struct {
	App App `json:"app"`
}

// AppsResponse is the body of GET /v1/admin/apps: every app this node knows of, revoked
// ones included, by name.
type AppsResponse struct {
	Apps []App `json:"apps"`
}

// AppStored is what an app stores: its key-value records, subjects and their sessions.
type AppStored struct {
	Records int64 `json:"records"`
	Bytes   int64 `json:"bytes"`
}
