package main

import (
	"sync"
	"time"
)

// OpKind names what an operation did.
type OpKind string

const (
	OpRegister OpKind = "register" // POST /v1/users
	OpLogin    OpKind = "login"    // POST /v1/sessions
	OpSet      OpKind = "set"      // PATCH /v1/sessions/current {data:{k:v}}
	OpDel      OpKind = "del"      // PATCH /v1/sessions/current {data:{k:null}}
	OpProfile  OpKind = "profile"  // PATCH /v1/users/me
	OpSend     OpKind = "send"     // POST /v1/messages
	OpLogout   OpKind = "logout"   // DELETE /v1/sessions/current
	OpRevoke   OpKind = "revoke"   // DELETE /v1/sessions/{id}
	OpErase    OpKind = "erase"    // DELETE /v1/users/me

	// Reads by the client that made the writes, carrying its bookmark: each is checked
	// against the writes it had acknowledged (read your writes).
	OpRead         OpKind = "read"          // GET /v1/sessions/current
	OpReadProfile  OpKind = "read-profile"  // GET /v1/users/me
	OpReadMessages OpKind = "read-messages" // GET /v1/messages?with=partner, every page
	OpReadEnded    OpKind = "read-ended"    // GET /v1/sessions/current with an ended session's token: must be 401
	OpReadFresh    OpKind = "read-fresh"    // GET /v1/sessions/current with a new token and no bookmark: the token's own must do
)

// isRead reports whether k only reads.
func (k OpKind) isRead() bool {
	switch k {
	case OpRead, OpReadProfile, OpReadMessages, OpReadEnded, OpReadFresh:
		return true
	}
	return false
}

// Op is one operation of the workload as it was invoked and acknowledged (or not).
type Op struct {
	ID       int       `json:"id"`
	Kind     OpKind    `json:"kind"`
	User     string    `json:"user"`
	Session  string    `json:"session,omitempty"`
	Key      string    `json:"key,omitempty"`   // data key or profile field
	Value    string    `json:"value,omitempty"` // data value, profile value or message body
	Peer     string    `json:"peer,omitempty"`  // message recipient
	MsgID    string    `json:"msg_id,omitempty"`
	Target   string    `json:"target"` // "lb" or a node name
	ServedBy string    `json:"served_by,omitempty"`
	Status   int       `json:"status,omitempty"`
	Outcome  Outcome   `json:"outcome"`
	Err      string    `json:"err,omitempty"`
	Invoke   time.Time `json:"invoke"`
	Ack      time.Time `json:"ack"`
	Scenario string    `json:"scenario"`
	// Skewed: served by a node whose clock ran ahead (or that still issues timestamps
	// from that time): peers refuse it until real time catches up.
	Skewed bool `json:"skewed,omitempty"`
	// ClockAhead: invoked while some node's clock was (or its timestamps were) ahead. Once
	// peers accept such timestamps (less than --max-skew ahead), their hybrid clocks run
	// ahead too, so last-writer-wins may order this write before one made earlier in real
	// time on a node that did not see them (a partitioned one).
	ClockAhead bool `json:"clock_ahead,omitempty"`
	// Bookmark is the X-Sessiond-Bookmark the request carried ("" none).
	Bookmark string `json:"bookmark,omitempty"`
	// Behind: answered 503 "behind" (the node could not meet the bookmark in time).
	Behind bool `json:"behind,omitempty"`
	// Spurious401: answered 401 for a session nobody had ended (or, at login, for an
	// account whose registration was acknowledged): a refusal caused by lag.
	Spurious401 bool `json:"spurious_401,omitempty"`
	// TokenAhead401: a 401 for a token issued by a node while its clock ran ahead, before
	// real time reached the token's issue time: the fault's doing, counted apart.
	TokenAhead401 bool `json:"token_ahead_401,omitempty"`
	// RYW says how a response carrying the client's bookmark failed to show the client's
	// own acknowledged writes ("" when it showed them, or was not checked).
	RYW string `json:"ryw_violation,omitempty"`
	// RYWChecked: the response was checked against the client's acknowledged writes.
	RYWChecked bool `json:"ryw_checked,omitempty"`
	// Visible: acknowledgement → visible on every node (0: not measured); LastNode is the
	// node that showed it last.
	Visible  time.Duration `json:"visible_ns,omitempty"`
	LastNode string        `json:"last_node,omitempty"`
	// ForwardedBy: the node that received the request and relayed it to ServedBy, which
	// holds its data (--replicas).
	ForwardedBy string `json:"forwarded_by,omitempty"`
}

// History is every operation of a run. Safe for concurrent use.
type History struct {
	mu  sync.Mutex
	ops []*Op
}

// Add records a finished operation and gives it an id.
func (h *History) Add(op *Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	op.ID = len(h.ops) + 1
	h.ops = append(h.ops, op)
}

// Ops returns the operations so far (the slice is a copy; the ops are shared).
func (h *History) Ops() []*Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Op(nil), h.ops...)
}

// Model is what the workload believes the cluster holds: the users, their sessions and
// conversations, with the operations that shaped them. Workers own disjoint users; the
// mutex guards against the checker and the nemesis reading while they write.
type Model struct {
	mu    sync.Mutex
	Users []*User
}

// User is a registered account of the workload.
type User struct {
	Name      string
	Password  string
	ID        string
	Register  *Op
	Partner   *User // the one user this one messages (regular users only)
	Anchor    *Session
	Sessions  []*Session
	Initial   map[string]string // profile at registration
	Profile   map[string][]*Op  // field → writes, in invocation order
	Sent      []*Op             // messages sent, in order
	Erase     *Op               // the account deletion, if any
	Ephemeral bool              // registered, used and deleted again
	Worker    int
	// SetupAddr, when set, is the client address its sign-up and first login come from
	// (else its worker's): the observers placement needs, which may take a dozen
	// sign-ups, come from addresses of their own, within the sign-ups allowed per address.
	SetupAddr string
	// RoundRobin: every request of this user goes through the load balancer's plain
	// round-robin entry point, so consecutive requests land on different nodes.
	RoundRobin bool
	// Bookmark is the latest X-Sessiond-Bookmark a response to this user's requests
	// carried; every request sends it back. Only the user's worker touches it.
	Bookmark string
	// Device is the device token the latest login returned; the next login sends it, as
	// the UI does, which exempts it from the account-wide failed-login limit that a flood
	// of wrong passwords from elsewhere fills. Guarded by the model's mutex.
	Device string
}

// Session is a login of a user.
type Session struct {
	ID      string
	Token   string
	User    *User
	Login   *Op
	Revoke  *Op // logout or revoke (any outcome)
	Keys    map[string]*KeyState
	NextKey int
}

// KeyState is one data key of a session.
type KeyState struct {
	Set *Op
	Del *Op
	// Uncertain: an operation on the key had an unknown outcome, or was served by a
	// skewed node (its timestamp may order it after later writes).
	Uncertain bool
}

// revoked reports whether the session's end was acknowledged.
func (s *Session) revoked() bool { return s.Revoke != nil && s.Revoke.Outcome == OK }

// endUncertain reports whether the session may or may not have ended.
func (s *Session) endUncertain() bool {
	if s.Revoke != nil && s.Revoke.Outcome == Info {
		return true
	}
	u := s.User
	return u.Erase != nil && u.Erase.Outcome == Info
}

// ended reports whether the session certainly ended (logout, revoke, account erased).
func (s *Session) ended() bool {
	return s.revoked() || (s.User.Erase != nil && s.User.Erase.Outcome == OK)
}

// live reports whether the session certainly still works.
func (s *Session) live() bool {
	return s.Login != nil && s.Login.Outcome == OK && !s.ended() && !s.endUncertain()
}
