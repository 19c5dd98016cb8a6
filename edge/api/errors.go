package api

// Error codes: the code of every error response ({"error":{"code":…}}), each with the
// status docs/API.md gives it. The node's one table from code to status is edge's statusOf.
const (
	CodeInvalidArgument      = "invalid_argument"       // 400: malformed JSON, a bad field or query parameter
	CodeUnauthorized         = "unauthorized"           // 401: no token, a bad, revoked or expired one, wrong credentials; an admin request not signed with the cluster key
	CodeForbidden            = "forbidden"              // 403: a credential on routes it does not open: a user's token on an admin or service route, an API key on a user route
	CodeQuotaExceeded        = "quota_exceeded"         // 403: a write that would add to what an app stores, which is at its quota (--app-quota)
	CodeNotFound             = "not_found"              // 404: no such route or resource, or another user's
	CodeRequestTimeout       = "request_timeout"        // 408: no complete request within the read timeout
	CodeUsernameTaken        = "username_taken"         // 409: registering a claimed name
	CodeUsernameConflict     = "username_conflict"      // 409: the account lost a concurrent same-name registration
	CodeConflict             = "conflict"               // 409: creating what exists (an app's name), or past a count's bound
	CodeKeyDeleted           = "key_deleted"            // 409: a write to a key of the key-value namespace that was deleted (deletion wins)
	CodeTooLarge             = "too_large"              // 413: a body or a record over its bound
	CodeUnsupportedMediaType = "unsupported_media_type" // 415: a body that is not application/json
	CodeRateLimited          = "rate_limited"           // 429: a limit was reached; Retry-After says when to retry
	CodeHeaderTooLarge       = "header_too_large"       // 431: request line and headers over 8 KiB
	CodeInternal             = "internal"               // 500: a server fault
	CodeUnavailable          = "unavailable"            // 503: not ready, shutting down, overloaded; may have been applied when forwarded
	CodeBehind               = "behind"                 // 503: the node cannot meet the request's bookmark in time
)

// Error is the body of every error response's "error" field. Message is meant for
// people; programs decide on Code.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrorResponse is the body of every error response: {"error":{"code":…,"message":…}}.
type ErrorResponse struct {
	Error Error `json:"error"`
}
