package client

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/sessiond/sessiond/edge/api"
)

// Error is an error response of the API: a status and the code and message of its
// {"error":{…}} body (Code is "" when a response had no such body, say a proxy's 502).
// Compare it with the per-code values (ErrNotFound, …) by errors.Is, or read it with
// errors.As.
type Error struct {
	Status     int           // HTTP status
	Code       string        // api.Code…
	Message    string        // for people
	RetryAfter time.Duration // from Retry-After, in whole seconds; 0 when absent
	Endpoint   string        // the endpoint asked
	ServedBy   string        // X-Served-By: the node that answered
	RequestID  string        // X-Request-ID, the same on every attempt of one call
	Header     http.Header   // the response's headers
	Body       []byte        // the response's body as it came (a proxy's page, say)
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sessiond: %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.ServedBy != "" {
		b.WriteString(" (served by " + e.ServedBy + ")")
	}
	return b.String()
}

// Is reports whether target is an *Error with e's code: the per-code values match every
// error of their code, whatever its status or message. An *Error with no code matches
// by status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t.Code != "" {
		return t.Code == e.Code
	}
	return t.Status != 0 && t.Status == e.Status
}

// Values to compare errors with, one per error code of docs/API.md: errors.Is(err,
// client.ErrNotFound). Do not modify them.
var (
	ErrInvalidArgument      = &Error{Code: api.CodeInvalidArgument, Status: http.StatusBadRequest}
	ErrUnauthorized         = &Error{Code: api.CodeUnauthorized, Status: http.StatusUnauthorized}
	ErrNotFound             = &Error{Code: api.CodeNotFound, Status: http.StatusNotFound}
	ErrRequestTimeout       = &Error{Code: api.CodeRequestTimeout, Status: http.StatusRequestTimeout}
	ErrUsernameTaken        = &Error{Code: api.CodeUsernameTaken, Status: http.StatusConflict}
	ErrUsernameConflict     = &Error{Code: api.CodeUsernameConflict, Status: http.StatusConflict}
	ErrConflict             = &Error{Code: api.CodeConflict, Status: http.StatusConflict}
	ErrKeyDeleted           = &Error{Code: api.CodeKeyDeleted, Status: http.StatusConflict}
	ErrForbidden            = &Error{Code: api.CodeForbidden, Status: http.StatusForbidden}
	ErrTooLarge             = &Error{Code: api.CodeTooLarge, Status: http.StatusRequestEntityTooLarge}
	ErrUnsupportedMediaType = &Error{Code: api.CodeUnsupportedMediaType, Status: http.StatusUnsupportedMediaType}
	ErrRateLimited          = &Error{Code: api.CodeRateLimited, Status: http.StatusTooManyRequests}
	ErrHeaderTooLarge       = &Error{Code: api.CodeHeaderTooLarge, Status: http.StatusRequestHeaderFieldsTooLarge}
	ErrInternal             = &Error{Code: api.CodeInternal, Status: http.StatusInternalServerError}
	ErrUnavailable          = &Error{Code: api.CodeUnavailable, Status: http.StatusServiceUnavailable}
	ErrBehind               = &Error{Code: api.CodeBehind, Status: http.StatusServiceUnavailable}
)

// TransportError is a call that got no answer: no endpoint took the connection, or the
// answer was lost (a timeout, a reset connection, a body cut short).
type TransportError struct {
	Method, Path string
	Endpoint     string // the endpoint of the last attempt
	// MaybeApplied reports whether the request may have reached a node: false when no
	// connection was made. A request that may have been applied, was not idempotent,
	// and was therefore not retried, may be applied now or later.
	MaybeApplied bool
	Err          error
}

func (e *TransportError) Error() string {
	s := fmt.Sprintf("sessiond: %s %s via %s: %v", e.Method, e.Path, e.Endpoint, e.Err)
	if e.MaybeApplied {
		s += " (may have been applied)"
	}
	return s
}

func (e *TransportError) Unwrap() error { return e.Err }

// ErrSessionEnded is what Stream.Next returns when the node ends the stream because its
// session ended (sign-out, revocation, erasure); the *StreamEndError wrapping it gives
// the node's reason.
var ErrSessionEnded = errors.New("sessiond: session ended")

// StreamEndError is the end event of a message stream.
type StreamEndError struct {
	Reason string // as the node gave it
}

func (e *StreamEndError) Error() string { return "sessiond: stream ended: " + e.Reason }

// Unwrap returns ErrSessionEnded.
func (e *StreamEndError) Unwrap() error { return ErrSessionEnded }

// IsCode reports whether err is an *Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
