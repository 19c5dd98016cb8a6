package edge

import (
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"syscall"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[string]int{
	functions.EInvalid:          fiber.StatusBadRequest,
	functions.EUnauthorized:     fiber.StatusUnauthorized,
	functions.ENotFound:         fiber.StatusNotFound,
	functions.EUsernameTaken:    fiber.StatusConflict,
	functions.EUsernameConflict: fiber.StatusConflict,
	functions.EConflict:         fiber.StatusConflict,
	functions.EKeyDeleted:       fiber.StatusConflict,
	functions.ETooLarge:         fiber.StatusRequestEntityTooLarge,
	functions.EQuotaExceeded:    fiber.StatusForbidden,
	functions.ERateLimited:      fiber.StatusTooManyRequests,
	functions.EUnavailable:      fiber.StatusServiceUnavailable,
	functions.EBehind:           fiber.StatusServiceUnavailable,
	functions.EInternal:         fiber.StatusInternalServerError,
	codeUnsupportedMediaType:    fiber.StatusUnsupportedMediaType,
	codeHeaderTooLarge:          fiber.StatusRequestHeaderFieldsTooLarge,
	functions.EForbidden:        fiber.StatusForbidden,
}

// Codes of refusals that only the HTTP layer makes; functions never returns them.
const (
	codeUnsupportedMediaType = api.CodeUnsupportedMediaType // a body that is not application/json
	codeHeaderTooLarge       = api.CodeHeaderTooLarge       // a header block over maxHeaderBytes
)

// fiberCodes maps errors Fiber raises itself (routing, body and header limits, the UI's
// file server) to our codes. A directory of the UI (/js/) is refused by the file server
// with 403; it is no route.
var fiberCodes = map[int]string{
	fiber.StatusBadRequest:                  functions.EInvalid,
	fiber.StatusForbidden:                   functions.ENotFound,
	fiber.StatusNotFound:                    functions.ENotFound,
	fiber.StatusMethodNotAllowed:            functions.ENotFound,
	fiber.StatusRequestEntityTooLarge:       functions.ETooLarge,
	fiber.StatusRequestHeaderFieldsTooLarge: codeHeaderTooLarge,
	fiber.StatusServiceUnavailable:          functions.EUnavailable,
	fiber.StatusTooManyRequests:             functions.ERateLimited,
}

type errorBody = api.ErrorResponse

// writeError is the single error writer: the status from the code table, the JSON body,
// and one log line for internal errors, whose detail clients never see.
func (n *Node) writeError(c *fiber.Ctx, err error) error {
	n.commonHeaders(c)
	ensureRequestID(c)
	var fe *fiber.Error
	code, msg := functions.ErrorCode(err), functions.ErrorMessage(err)
	if code == functions.EInternal {
		code, msg = storageRefusal(err, code, msg)
	}
	if errors.As(err, &fe) && fe.Code == fiber.StatusRequestTimeout {
		// fasthttp's read timeout on a connection that sent no complete request: answer 408
		// and close, so that no client takes this reply for its next request's.
		c.Context().SetConnectionClose()
		var body errorBody
		body.Error.Code, body.Error.Message = api.CodeRequestTimeout, "no complete request within the read timeout"
		return c.Status(fiber.StatusRequestTimeout).JSON(body)
	}
	if errors.As(err, &fe) {
		code = fiberCodes[fe.Code]
		if code == "" {
			code = functions.EInvalid
		}
		msg = fe.Message
		switch fe.Code {
		case fiber.StatusMethodNotAllowed, fiber.StatusForbidden:
			msg = "no such route"
		case fiber.StatusRequestHeaderFieldsTooLarge:
			msg = "request headers over " + strconv.Itoa(maxHeaderBytes/1024) + " KiB"
		}
	}
	status, ok := statusOf[code]
	if !ok {
		status = fiber.StatusInternalServerError
	}
	if status >= 500 && code == functions.EInternal {
		// A handler may keep the record (slog.Record.Clone does not copy strings), and the
		// Ctx's strings are reused by the connection's next request.
		n.log.Error("request failed", slog.String("method", strings.Clone(c.Method())),
			slog.String("path", strings.Clone(c.Path())),
			slog.String("request_id", string(c.Response().Header.PeekBytes(requestIDKey))), slog.Any("err", err))
	}
	var body errorBody
	body.Error.Code, body.Error.Message = code, msg
	if status == fiber.StatusServiceUnavailable && len(c.Response().Header.Peek(fiber.HeaderRetryAfter)) == 0 {
		// Every 503 says when to come back: those whose cause knows set it themselves; the
		// rest (no password-hashing worker in time, a store that did not answer) pass
		// within a second or so.
		c.Set(fiber.HeaderRetryAfter, "1")
	}
	if code == functions.EUnauthorized && len(c.Response().Header.Peek(fiber.HeaderWWWAuthenticate)) == 0 {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="sessiond"`)
	}
	return c.Status(status).JSON(body)
}

// storageRefusal turns a storage failure that is no fault of the request into 503
// unavailable with what happened, for a client to retry (through another node: a node
// whose storage failed stops, see Node.StorageFailed), or returns code and msg as they
// are. A full disk fails the storage (storage.ErrFailed wraps ENOSPC); ENOSPC alone is
// answered alike should any path return it unwrapped.
func storageRefusal(err error, code, msg string) (string, string) {
	switch {
	case errors.Is(err, storage.ErrFailed):
		return functions.EUnavailable, "this node's storage failed and the node is stopping: retry, another node serves"
	case errors.Is(err, syscall.ENOSPC):
		return functions.EUnavailable, "this node's disk is full: retry, another node serves"
	}
	return code, msg
}

func badRequest(format string, args ...any) error {
	return functions.Errorf(functions.EInvalid, format, args...)
}

func retryAfterSeconds(d float64) string {
	s := int(d + 0.999)
	return strconv.Itoa(max(s, 1))
}
