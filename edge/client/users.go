package client

import (
	"context"
	"net/http"

	"github.com/sessiond/sessiond/edge/api"
)

// Register creates an account (POST /v1/users). A taken name is ErrUsernameTaken; too
// many sign-ups from the address, ErrRateLimited. It is not retried after a 503
// unavailable or a lost answer: a second registration of a name that the first one
// claimed would fail with ErrUsernameTaken.
func (c *Client) Register(ctx context.Context, req api.RegisterRequest) (api.User, error) {
	var out api.UserResponse
	_, err := c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/users", Body: req, NoAuth: true}, &out)
	return out.User, err
}

// Me returns the caller's account (GET /v1/users/me).
func (c *Client) Me(ctx context.Context) (api.User, error) {
	var out api.UserResponse
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/users/me", Idempotent: true}, &out)
	return out.User, err
}

// UpdateProfile changes the profile fields p names (PATCH /v1/users/me) and returns the
// account as it now is.
func (c *Client) UpdateProfile(ctx context.Context, p api.ProfilePatch) (api.User, error) {
	var out api.UserResponse
	_, err := c.Do(ctx, Request{Method: http.MethodPatch, Path: "/v1/users/me", Body: api.PatchProfileRequest{Profile: &p}, Idempotent: true}, &out)
	return out.User, err
}

// DeleteAccount erases the caller's account, its sessions and its messages everywhere
// (DELETE /v1/users/me), and forgets the Client's token. A retry after a lost answer may
// find the account gone already and report ErrUnauthorized.
func (c *Client) DeleteAccount(ctx context.Context) error {
	tok := c.Token()
	_, err := c.Do(ctx, Request{Method: http.MethodDelete, Path: "/v1/users/me", Idempotent: true}, nil)
	if err == nil {
		c.forgetToken(tok)
	}
	return err
}

// Export returns the caller's whole account (GET /v1/users/me/export): profile, sessions
// and every message, as one JSON document that out (an *api.Export, or anything the
// document decodes into) receives. A large account is a large document.
func (c *Client) Export(ctx context.Context, out any) error {
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/users/me/export", Idempotent: true}, out)
	return err
}
