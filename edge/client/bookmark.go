package client

import (
	"context"
	"sync"

	"github.com/sessiond/sessiond/crdt"
)

// bookmark is what a Client has seen, kept as nodes keep it: the merge (the later mark
// per origin node) of every bookmark received. A value that does not parse as a bookmark
// (a node of a newer format) is kept as it came, replacing the merge: a node merges what
// a request carried into its answer, so it covers what was sent. Safe for concurrent use.
type bookmark struct {
	mu     sync.Mutex
	b      crdt.Bookmark
	text   string // b's text form, or the opaque value; sent as it is
	opaque bool
}

// String returns the text to send: "" for none.
func (k *bookmark) String() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.text
}

// merge folds a response's bookmark into k. An empty s changes nothing.
func (k *bookmark) merge(s string) {
	if s == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if s == k.text {
		return // a read that showed nothing new: the common case
	}
	got, err := crdt.ParseBookmark(s)
	if err != nil || k.opaque {
		k.b, k.text, k.opaque = crdt.Bookmark{}, s, err != nil
		if err == nil {
			k.b, k.text = got, got.String()
		}
		return
	}
	if k.b.Merge(got) {
		k.text = k.b.String()
	}
}

// set replaces k with s; "" empties it. It returns the error of a value that is not a
// bookmark, leaving k as it was.
func (k *bookmark) set(s string) error {
	b, err := crdt.ParseBookmark(s)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.b, k.text, k.opaque = b, b.String(), false
	return nil
}

// Bookmark is the bookmark of one caller among the many a Client serves — one visitor of
// an app, say — carried through a request's context (WithBookmark), so that what one
// caller wrote through one instance of the app is what its next request, through any
// instance in any region, reads at least. The zero value is empty and ready; safe for
// concurrent use.
type Bookmark struct{ bm bookmark }

// ParseBookmark returns a Bookmark holding s, a value the API returned; "" is empty.
func ParseBookmark(s string) (*Bookmark, error) {
	b := new(Bookmark)
	if err := b.bm.set(s); err != nil {
		return nil, err
	}
	return b, nil
}

// String returns the bookmark's text, to keep (in a cookie, say): "" for none.
func (b *Bookmark) String() string { return b.bm.String() }

type bookmarkKey struct{}

// WithBookmark returns a context under which the Client's calls send b in place of the
// Client's own bookmark, and merge their answers' bookmarks into b (and the Client's).
func WithBookmark(ctx context.Context, b *Bookmark) context.Context {
	return context.WithValue(ctx, bookmarkKey{}, b)
}

// bookmarkIn returns the Bookmark of ctx, or nil.
func bookmarkIn(ctx context.Context) *Bookmark {
	b, _ := ctx.Value(bookmarkKey{}).(*Bookmark)
	return b
}
