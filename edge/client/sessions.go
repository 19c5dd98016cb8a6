package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/sessiond/sessiond/edge/api"
)

// Login signs in (POST /v1/sessions) and keeps the new session's token, which the
// Client then sends with every request, and the device token, which it sends with its
// next login to the same account (that login is exempt from the account-wide failure
// limit) unless req.Device is set. Wrong credentials are ErrUnauthorized; too many failed
// logins, ErrRateLimited with RetryAfter. It is not retried after a 503 unavailable or a
// lost answer (it would open a second session).
func (c *Client) Login(ctx context.Context, req api.LoginRequest) (api.LoginResponse, error) {
	if req.Device == "" {
		c.mu.Lock()
		if c.deviceUser == req.Username {
			req.Device = c.device
		}
		c.mu.Unlock()
	}
	var out api.LoginResponse
	if _, err := c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/sessions", Body: req, NoAuth: true}, &out); err != nil {
		return out, err
	}
	c.mu.Lock()
	c.token, c.device, c.deviceUser = out.Token, out.Device, req.Username
	c.mu.Unlock()
	return out, nil
}

// CurrentSession returns the caller's session (GET /v1/sessions/current).
func (c *Client) CurrentSession(ctx context.Context) (api.Session, error) {
	var out api.SessionResponse
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/sessions/current", Idempotent: true}, &out)
	return out.Session, err
}

// PatchSession merges data into the caller's session data (PATCH /v1/sessions/current)
// and returns the session as it now is: each key is set to its value encoded as JSON (a
// json.RawMessage as it is), and a nil value deletes the key.
func (c *Client) PatchSession(ctx context.Context, data map[string]any) (api.Session, error) {
	req, err := patchRequest(data)
	if err != nil {
		return api.Session{}, err
	}
	var out api.SessionResponse
	_, err = c.Do(ctx, Request{Method: http.MethodPatch, Path: "/v1/sessions/current", Body: req, Idempotent: true}, &out)
	return out.Session, err
}

// Logout ends the caller's session (DELETE /v1/sessions/current) and forgets the
// Client's token. A retry after a lost answer may find the session ended already and
// report ErrUnauthorized.
func (c *Client) Logout(ctx context.Context) error {
	tok := c.Token()
	_, err := c.Do(ctx, Request{Method: http.MethodDelete, Path: "/v1/sessions/current", Idempotent: true}, nil)
	if err == nil {
		c.forgetToken(tok)
	}
	return err
}

// Sessions returns the caller's active sessions, newest first (GET /v1/sessions); the
// caller's own has Current set.
func (c *Client) Sessions(ctx context.Context) ([]api.Session, error) {
	var out api.SessionsResponse
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/sessions", Idempotent: true}, &out)
	return out.Sessions, err
}

// RevokeSession ends one of the caller's sessions by id (DELETE /v1/sessions/{id});
// another user's, or none, is ErrNotFound.
func (c *Client) RevokeSession(ctx context.Context, id string) error {
	_, err := c.Do(ctx, Request{Method: http.MethodDelete, Path: "/v1/sessions/" + url.PathEscape(id), Idempotent: true}, nil)
	return err
}

// RevokeAllSessions signs the caller out everywhere (DELETE /v1/sessions): every session
// of the caller created before it, the Client's own included, whose token it forgets.
func (c *Client) RevokeAllSessions(ctx context.Context) error {
	tok := c.Token()
	_, err := c.Do(ctx, Request{Method: http.MethodDelete, Path: "/v1/sessions", Idempotent: true}, nil)
	if err == nil {
		c.forgetToken(tok)
	}
	return err
}

// forgetToken drops the Client's token if it is still tok (another Login may have
// replaced it meanwhile).
func (c *Client) forgetToken(tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == tok {
		c.token = ""
	}
}

// RenewSession replaces the caller's token with a new one for the same session (POST
// /v1/sessions/current/renew; do it after a change of privilege) and keeps the new token:
// the old one stops working, the session and its data stay. It is not retried after a lost
// answer: the renewal may have retired the token the retry would send.
func (c *Client) RenewSession(ctx context.Context) (api.Session, error) {
	var out api.RenewResponse
	if _, err := c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/sessions/current/renew"}, &out); err != nil {
		return out.Session, err
	}
	c.mu.Lock()
	c.token = out.Token
	c.mu.Unlock()
	return out.Session, nil
}
