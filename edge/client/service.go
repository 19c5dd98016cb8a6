package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/sessiond/sessiond/edge/api"
)

// APIKeyPrefix begins every app's API key (`sessiond apps create` prints one).
const APIKeyPrefix = "sdapp_"

// ServiceClient calls the service API (/v1/service/, docs/API.md) as an app, with its API
// key: it creates and manages sessions for the app's subjects — people the app
// authenticated itself — and checks session tokens. It is a Client (endpoints, retries,
// errors, bookmarks) whose bearer token is the API key; its bookmark covers what the app
// has written and seen, so the app reads its own writes on whichever node answers. Safe
// for concurrent use.
//
// To act as one of the subjects with a session's token (the user routes: the session's
// data, renewal, sign-out), use Client().Fork() and SetToken.
type ServiceClient struct {
	c *Client
}

// NewService returns a ServiceClient for cfg that authenticates with apiKey (cfg.Token is
// not used), or an error naming what is wrong.
func NewService(cfg Config, apiKey string) (*ServiceClient, error) {
	if !strings.HasPrefix(apiKey, APIKeyPrefix) {
		return nil, fmt.Errorf("client: API key: want one `sessiond apps create` printed (%s…)", APIKeyPrefix)
	}
	cfg.Token = apiKey
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return &ServiceClient{c: c}, nil
}

// Client returns the Client the ServiceClient sends with: for its bookmark, Do, Fork and
// CloseIdleConnections.
func (s *ServiceClient) Client() *Client { return s.c }

// App returns the app the key authenticates as (GET /v1/service/app): a check of the key.
// A wrong or revoked key is ErrUnauthorized.
func (s *ServiceClient) App(ctx context.Context) (api.App, error) {
	var out api.AppResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/service/app", Idempotent: true}, &out)
	return out.App, err
}

// CreateSession creates a session for req.Subject (POST /v1/service/sessions) and returns
// it with its token, which the user routes take for it. It is not retried after a 503
// unavailable or a lost answer (it would create a second session).
func (s *ServiceClient) CreateSession(ctx context.Context, req api.CreateServiceSessionRequest) (api.ServiceSessionResponse, error) {
	var out api.ServiceSessionResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/service/sessions", Body: req}, &out)
	return out, err
}

// Session returns session id of one of the app's subjects (GET
// /v1/service/sessions/{id}); one that is expired, revoked or not the app's is
// ErrNotFound.
func (s *ServiceClient) Session(ctx context.Context, id string) (api.Session, error) {
	var out api.SessionResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/service/sessions/" + url.PathEscape(id), Idempotent: true}, &out)
	return out.Session, err
}

// PatchSession merges data into session id's data (PATCH /v1/service/sessions/{id}), as
// Client.PatchSession does for the caller's own: each value encoded as JSON, nil deletes
// the key.
func (s *ServiceClient) PatchSession(ctx context.Context, id string, data map[string]any) (api.Session, error) {
	req, err := patchRequest(data)
	if err != nil {
		return api.Session{}, err
	}
	var out api.SessionResponse
	_, err = s.c.Do(ctx, Request{Method: http.MethodPatch, Path: "/v1/service/sessions/" + url.PathEscape(id), Body: req, Idempotent: true}, &out)
	return out.Session, err
}

// RevokeSession ends session id (DELETE /v1/service/sessions/{id}). A retry after a lost
// answer may find it ended already and report ErrNotFound.
func (s *ServiceClient) RevokeSession(ctx context.Context, id string) error {
	_, err := s.c.Do(ctx, Request{Method: http.MethodDelete, Path: "/v1/service/sessions/" + url.PathEscape(id), Idempotent: true}, nil)
	return err
}

// Introspect checks a session token (POST /v1/service/introspect): Active, with the
// session and its subject, when it is a usable token of one of the app's subjects; an
// invalid, expired, revoked or foreign token is not an error but Active false. A check
// counts as a use of the session (it slides idle expiry).
func (s *ServiceClient) Introspect(ctx context.Context, token string) (api.IntrospectResponse, error) {
	var out api.IntrospectResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/service/introspect", Body: api.IntrospectRequest{Token: token}, Idempotent: true}, &out)
	return out, err
}

// SubjectSessions returns the active sessions of the app's subject, newest first (GET
// /v1/service/subjects/{subject}/sessions): none for a subject with none.
func (s *ServiceClient) SubjectSessions(ctx context.Context, subject string) ([]api.Session, error) {
	var out api.SessionsResponse
	_, err := s.c.Do(ctx, Request{Method: http.MethodGet, Path: subjectPath(subject), Idempotent: true}, &out)
	return out.Sessions, err
}

// RevokeSubject ends every session of the app's subject (DELETE
// /v1/service/subjects/{subject}/sessions): "log out everywhere", including sessions
// created on nodes this one has not heard from yet.
func (s *ServiceClient) RevokeSubject(ctx context.Context, subject string) error {
	_, err := s.c.Do(ctx, Request{Method: http.MethodDelete, Path: subjectPath(subject), Idempotent: true}, nil)
	return err
}

func subjectPath(subject string) string {
	return "/v1/service/subjects/" + url.PathEscape(subject) + "/sessions"
}

// patchRequest encodes session data for a PATCH: each value as JSON, nil as null.
func patchRequest(data map[string]any) (api.PatchSessionRequest, error) {
	req := api.PatchSessionRequest{Data: make(map[string]json.RawMessage, len(data))}
	for k, v := range data {
		b, err := json.Marshal(v)
		if err != nil {
			return req, fmt.Errorf("client: session data %q: %w", k, err)
		}
		req.Data[k] = b
	}
	return req, nil
}
