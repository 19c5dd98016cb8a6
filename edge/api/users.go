package api

import "time"

// User is an account as the API shows it: POST /v1/users, GET and PATCH /v1/users/me.
type User struct {
	ID        string    `json:"id"` // 32 hex digits
	Username  string    `json:"username"`
	CreatedAt time.Time `json:"created_at"`
	Profile   Profile   `json:"profile"`
}

// Profile is a user's editable profile. Bounds: FirstName and LastName ≤ 100 bytes, Email
// ≤ 254 bytes with one @, Address ≤ 500 bytes; UTF-8 without control characters.
type Profile struct {
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
	Email     string `json:"email"`
	Address   string `json:"address"`
}

// RegisterRequest is the body of POST /v1/users. Username: 3–32 of [a-z0-9_.-];
// Password: 8–256 bytes.
type RegisterRequest struct {
	Username string  `json:"username"`
	Password string  `json:"password"`
	Profile  Profile `json:"profile"`
}

// UserResponse is the body of POST /v1/users (201), GET and PATCH /v1/users/me.
type UserResponse struct {
	User User `json:"user"`
}

// PatchProfileRequest is the body of PATCH /v1/users/me. Profile is required.
type PatchProfileRequest struct {
	Profile *ProfilePatch `json:"profile"`
}

// ProfilePatch names the profile fields to change: nil (absent) leaves a field as it is,
// a pointer to "" clears it.
type ProfilePatch struct {
	FirstName *string `json:"first_name,omitempty"`
	LastName  *string `json:"last_name,omitempty"`
	Email     *string `json:"email,omitempty"`
	Address   *string `json:"address,omitempty"`
}

// Export is the body of GET /v1/users/me/export: the caller's account as one document.
type Export struct {
	ExportedAt    time.Time            `json:"exported_at"`
	User          User                 `json:"user"`
	Sessions      []Session            `json:"sessions"`
	Conversations []ExportConversation `json:"conversations"`
}

// ExportConversation is one conversation of an Export, its messages in conversation
// order.
type ExportConversation struct {
	With     string    `json:"with"`
	Count    int       `json:"count"`
	Messages []Message `json:"messages"`
}
