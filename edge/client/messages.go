package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/sessiond/sessiond/edge/api"
)

// SendMessage sends a message (POST /v1/messages). An unknown recipient is ErrNotFound.
// It is not retried after a 503 unavailable or a lost answer (the message would be sent
// twice); to order messages across nodes, set req.After to the previous message's ID.
func (c *Client) SendMessage(ctx context.Context, req api.SendMessageRequest) (api.Message, error) {
	var out api.MessageResponse
	_, err := c.Do(ctx, Request{Method: http.MethodPost, Path: "/v1/messages", Body: req}, &out)
	return out.Message, err
}

// Messages returns a page of the caller's conversation with the user named with
// (GET /v1/messages), in conversation order: those after the cursor after ("" from the
// start), at most limit of them (0: the node's default, 100; at most 500). Pass the
// page's Next as after to read on; it never skips a message that arrives late.
func (c *Client) Messages(ctx context.Context, with, after string, limit int) (api.Page, error) {
	q := url.Values{"with": {with}}
	if after != "" {
		q.Set("after", after)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out api.Page
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/messages", Query: q, Idempotent: true}, &out)
	return out, err
}

// Conversations returns a page of the caller's conversations, newest first (GET
// /v1/conversations): up to limit (the server's default when 0) after the page that
// cursor after ended (from the newest when empty). The page's Next is the cursor of the
// next page, empty after the last.
func (c *Client) Conversations(ctx context.Context, after string, limit int) (api.ConversationsResponse, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out api.ConversationsResponse
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/v1/conversations", Query: q, Idempotent: true}, &out)
	return out, err
}
