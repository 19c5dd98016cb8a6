package functions

import (
	"errors"
	"fmt"

	"github.com/sessiond/sessiond/edge/api"
)

// Error codes. They are part of the HTTP API (docs/API.md, package api): edge maps each
// to a status.
const (
	EInvalid          = api.CodeInvalidArgument
	EUnauthorized     = api.CodeUnauthorized
	EForbidden        = api.CodeForbidden // a credential on what it does not open
	ENotFound         = api.CodeNotFound
	EUsernameTaken    = api.CodeUsernameTaken
	EUsernameConflict = api.CodeUsernameConflict
	EConflict         = api.CodeConflict
	EKeyDeleted       = api.CodeKeyDeleted // a write to a deleted key of the key-value namespace
	ETooLarge         = api.CodeTooLarge
	EQuotaExceeded    = api.CodeQuotaExceeded // an app's stored data is at its quota (Quota)
	ERateLimited      = api.CodeRateLimited
	EUnavailable      = api.CodeUnavailable
	EBehind           = api.CodeBehind // this node has not caught up with the client's bookmark
	EInternal         = api.CodeInternal
)

// Error is a domain error whose message is safe to show to the client.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err: its *Error's code, or EInternal for any other error,
// or "" for nil.
func ErrorCode(err error) string {
	// Checked before e is declared: errors.As makes e escape, and a nil error (every
	// successful request asks) then costs an allocation.
	if err == nil {
		return ""
	}
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// ErrorMessage returns the client-safe message of err: its *Error's message, or "internal
// error" for any other error.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
