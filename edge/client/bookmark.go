package client

import (
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
