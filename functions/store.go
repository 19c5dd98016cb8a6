package functions

import (
	"context"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// Store is the replicated state the handlers read and write: the node's local replica.
// storage.DB provides it (edge adapts it). Implementations are safe for concurrent use.
type Store interface {
	// Record returns the state of the record at key; ok is false when there is none.
	Record(ctx context.Context, key string) (m crdt.Map, ok bool, err error)
	// Records returns several records as Record does, read at one point in time.
	Records(ctx context.Context, keys ...string) (ms []crdt.Map, ok []bool, err error)
	// Update runs fn in a write transaction and returns after its writes are durable. fn's
	// writes take effect only if it returns nil; its error is returned as is. fn must be
	// quick: no hashing, no network.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// UserSessions returns the session records of a user held locally that are not
	// revoked by their own flag, in any other state (storage.DB.UserSessions).
	UserSessions(ctx context.Context, userID string) ([]crdt.Session, error)
	// ReadLog pages through a conversation as crdt.Log.Read does.
	ReadLog(ctx context.Context, conv string, after crdt.Cursor, limit int) ([]crdt.Entry, crdt.Cursor, error)
	// Contested reports whether the claim record of username names more than one
	// account. It may report true for a name that is not (yet) contested, never false
	// for one whose contested claim record this replica holds. It must be cheap: it is
	// asked on every authenticated request.
	Contested(username string) bool
	// Conversations returns a user's conversations, newest first.
	Conversations(ctx context.Context, userID string) ([]ConversationInfo, error)
}

// Tx is a write transaction of Store.Update. It is used by one goroutine only.
type Tx interface {
	// Record returns the current state of the record at key, including this
	// transaction's earlier writes.
	Record(key string) (crdt.Map, bool, error)
	// Merge merges update into the record at key and returns the merged state.
	Merge(key string, update crdt.Map) (crdt.Map, error)
	// Append appends a message to a conversation log, stamping a new entry ID.
	Append(conv string, msg crdt.Message) (crdt.Entry, error)
	// Entry returns the entry id of conversation conv, and whether this node holds it.
	Entry(conv string, id crdt.EntryID) (crdt.Entry, bool, error)
}

// ConversationInfo summarises one conversation of a user.
type ConversationInfo struct {
	ID    string     // crdt.ConversationID
	With  string     // the other participant's user ID
	Last  crdt.Entry // the newest entry
	Count int        // entries held locally
}

// Clock issues hybrid logical clock timestamps; *crdt.Clock implements it.
type Clock interface {
	Next() crdt.Timestamp
	PhysicalNow() time.Time
}
