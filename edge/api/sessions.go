package api

import (
	"encoding/json"
	"time"
)

// Session is a session as the API shows it: POST /v1/sessions, GET and PATCH
// /v1/sessions/current, GET /v1/sessions.
type Session struct {
	ID            string    `json:"id"` // 32 hex digits: 128 random bits
	UserID        string    `json:"user_id"`
	Username      string    `json:"username"`
	CreatedAt     time.Time `json:"created_at"`
	LastUsedAt    time.Time `json:"last_used_at"`
	ExpiresAt     time.Time `json:"expires_at"`      // absolute, fixed at creation
	IdleExpiresAt time.Time `json:"idle_expires_at"` // slides with use
	// Data is the session's data: each value is any JSON value but null, compacted.
	Data map[string]json.RawMessage `json:"data"`
	// Current marks the caller's own session, in GET /v1/sessions only.
	Current bool `json:"current,omitempty"`
	// Where and how it began, each absent when not recorded: a label of the client
	// ("Firefox on Linux"), the client's address, and the region and node that created it.
	Device        string `json:"device,omitempty"`
	ClientAddress string `json:"client_address,omitempty"`
	Region        string `json:"region,omitempty"`
	Node          string `json:"node,omitempty"`
	// Subject is, for a session an app created through the service API, the subject it
	// named (Username is then ""); absent for a registered user's session.
	Subject string `json:"subject,omitempty"`
}

// RenewResponse is the body of POST /v1/sessions/current/renew: a new token for the
// same session, which replaces the one sent.
type RenewResponse struct {
	Session Session `json:"session"`
	Token   string  `json:"token"`
}

// LoginRequest is the body of POST /v1/sessions. Device is the device token of an
// earlier login to the same account, if any: that login is then exempt from the
// account-wide failure limit.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Device   string `json:"device,omitempty"`
}

// LoginResponse is the body of POST /v1/sessions (201). Token is the bearer token of the
// new session; Device is a device token to send with the next login to this account (no
// access token; valid 90 days). The fields are in the order the node writes them.
type LoginResponse struct {
	Device  string  `json:"device"`
	Session Session `json:"session"`
	Token   string  `json:"token"`
}

// SessionResponse is the body of GET and PATCH /v1/sessions/current.
type SessionResponse struct {
	Session Session `json:"session"`
}

// SessionsResponse is the body of GET /v1/sessions: the caller's active sessions, newest
// first.
type SessionsResponse struct {
	Sessions []Session `json:"sessions"`
}

// PatchSessionRequest is the body of PATCH /v1/sessions/current: each key of Data is set
// to its value, or deleted when the value is JSON null. Data is required.
type PatchSessionRequest struct {
	Data map[string]json.RawMessage `json:"data"`
}
