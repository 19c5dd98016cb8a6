package api

import "time"

// Message is a message as the API shows it; From and To are usernames (an account that
// lost a concurrent registration of its name shows as NAME#1234abcd).
type Message struct {
	ID     string    `json:"id"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Body   string    `json:"body"`
	SentAt time.Time `json:"sent_at"`
}

// SendMessageRequest is the body of POST /v1/messages. Body: 1–4096 bytes of UTF-8.
// After, when set, is the ID of the sender's previous message in this conversation: the
// new one then orders after it on every node.
type SendMessageRequest struct {
	To    string `json:"to"`
	Body  string `json:"body"`
	After string `json:"after,omitempty"`
}

// MessageResponse is the body of POST /v1/messages (201).
type MessageResponse struct {
	Message Message `json:"message"`
}

// Page is the body of GET /v1/messages: a page of a conversation in order, and the cursor
// to pass as after for what comes next.
type Page struct {
	Messages []Message `json:"messages"`
	Next     string    `json:"next"`
}

// Conversation summarises one of the caller's conversations.
type Conversation struct {
	With        string  `json:"with"`
	LastMessage Message `json:"last_message"`
	Count       int     `json:"count"`
}

// ConversationsResponse is the body of GET /v1/conversations: a page of the caller's
// conversations, newest first, and the cursor of the next page (its after parameter),
// empty after the last page.
type ConversationsResponse struct {
	Conversations []Conversation `json:"conversations"`
	Next          string         `json:"next"`
}

// Event types of GET /v1/messages/stream (Server-Sent Events).
const (
	// EventMessage's data is a Message to or from the caller.
	EventMessage = "message"
	// EventEnd's data is a StreamEnd; the node closes the stream after it.
	EventEnd = "end"
)

// StreamEnd is the data of an EventEnd: why the stream ended ("session ended").
type StreamEnd struct {
	Reason string `json:"reason"`
}
