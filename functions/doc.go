// Package functions holds sessiond's stateless request handlers: users, sessions (an
// app's subjects' too: service.go), app credentials, messages and cluster information. A
// handler takes a context, a typed request and the caller's identity, validates, reads
// and writes replicated records through the small interfaces in store.go, and returns a
// value or an *Error. Handlers keep nothing between requests, so any node can serve any
// request.
//
// The types it returns are package api's (aliases), so the node shows exactly the JSON
// the Go client decodes. It imports api, crdt and the standard library (plus golang.org/x/crypto for password
// hashing). It must not import Fiber, bbolt, storage or edge: edge adapts these functions to
// HTTP and wires them to storage.
package functions
