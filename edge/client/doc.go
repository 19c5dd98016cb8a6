// Package client is the Go client of sessiond's HTTP API (docs/API.md): every route, as
// typed methods over the request and response types of package api.
//
// A Client acts for one caller. It keeps the caller's bearer token (set by Login) and
// bookmark (X-Sessiond-Bookmark): every response's bookmark is merged into the one the
// Client holds, as a node merges them, and sent with every request, so the caller reads
// its own writes and never goes back in time on whichever node answers. A Client is safe
// for concurrent use; Fork makes another for another caller that shares the connections.
//
// Calls retry, with backoff, only where that cannot apply a request twice: after a 429
// (rate_limited) or a 503 behind, which the node answers before acting, and after a
// connection that was never made; after a timeout, a reset connection or a 503
// unavailable only requests marked idempotent (GET, PATCH and DELETE routes). A
// Retry-After is waited for when it is within Config.MaxRetryWait; a longer one ends the
// call with the error, which carries it. Over several endpoints, the retry goes to the
// next one, and an endpoint that refused a connection or timed out is passed over for a
// while (Config.EndpointCooldown).
//
// Errors from the node are *Error, with the code, status, message and Retry-After;
// errors.Is matches them against ErrNotFound, ErrUnauthorized and the other per-code
// values. A request that reached no node, or whose answer was lost, fails with a
// *TransportError, which says whether the request may have been applied.
//
// An app calls the service API with a ServiceClient (NewService), which sends its API key
// and keeps the app's bookmark. An app serves many visitors, perhaps from an instance per
// region: a call under WithBookmark sends that visitor's Bookmark instead, and merges the
// answer's into it, and the middleware CarryBookmarks keeps each visitor's in a cookie,
// so the visitor reads their own writes through any instance.
//
// A backend can also trust a node's session tokens without asking a node each time:
// JWKS fetches the public keys tokens are signed with, VerifyToken checks a token against
// them with the standard library alone, and KeySet keeps the keys, fetching them again
// after a rotation. A valid signature does not say the session is still active (it may
// have been revoked): see VerifyToken.
//
// Methods for routes not covered here are built on Do,
// which gives them the same endpoints, retries, bookmarks and errors.
//
// The package uses the standard library and this module's api and crdt packages (the
// latter, pure and standard-library only, to merge bookmarks as nodes do). It must not
// import edge, functions or storage.
package client
