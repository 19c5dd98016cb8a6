package api

// Header names of the API (docs/API.md, "Consistency").
const (
	// HeaderBookmark carries, in a request, what its client saw or wrote before, and in a
	// successful response, that merged with what the response showed or wrote: an opaque
	// URL-safe string of at most 1024 bytes; several joined by commas are merged.
	HeaderBookmark = "X-Sessiond-Bookmark"
	// HeaderConsistency is ConsistencyBookmark (the default) or ConsistencyEventual.
	HeaderConsistency = "X-Sessiond-Consistency"
	// HeaderLag, on an eventual response, is the largest replication delay the node last
	// observed from a peer, in milliseconds.
	HeaderLag = "X-Sessiond-Lag-Ms"
	// HeaderServedBy names the node that served the request; on every response.
	HeaderServedBy = "X-Served-By"
	// HeaderForwardedBy names the node that forwarded the request to the one in
	// HeaderServedBy (with --replicas).
	HeaderForwardedBy = "X-Sessiond-Forwarded-By"
	// HeaderRequestID names a request in the node's access log: the request's own when it
	// has one of 1–128 printable ASCII characters without spaces, else one the node makes.
	HeaderRequestID = "X-Request-ID"
)

// Values of HeaderConsistency.
const (
	ConsistencyBookmark = "bookmark" // answer from state that includes the request's bookmark
	ConsistencyEventual = "eventual" // answer from local state at once, bookmark or not
)
