package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[string]int{
	functions.EInvalid:          fiber.StatusBadRequest,
	functions.EUnauthorized:     fiber.StatusUnauthorized,
	functions.ENotFound:         fiber.StatusNotFound,
	functions.EUsernameTaken:    fiber.StatusConflict,
	functions.EUsernameConflict: fiber.StatusConflict,
	functions.ETooLarge:         fiber.StatusRequestEntityTooLarge,
	functions.ERateLimited:      fiber.StatusTooManyRequests,
	functions.EUnavailable:      fiber.StatusServiceUnavailable,
	functions.EBehind:           fiber.StatusServiceUnavailable,
	functions.EInternal:         fiber.StatusInternalServerError,
}

// fiberCodes maps errors Fiber raises itself (routing, body limit) to our codes.
var fiberCodes = map[int]string{
	fiber.StatusBadRequest:                  functions.EInvalid,
	fiber.StatusNotFound:                    functions.ENotFound,
	fiber.StatusMethodNotAllowed:            functions.ENotFound,
	fiber.StatusRequestEntityTooLarge:       functions.ETooLarge,
	fiber.StatusRequestHeaderFieldsTooLarge: functions.ETooLarge,
	fiber.StatusServiceUnavailable:          functions.EUnavailable,
	fiber.StatusTooManyRequests:             functions.ERateLimited,
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError is the single error writer: the status from the code table, the JSON body,
// and one log line for internal errors, whose detail clients never see.
func (n *Node) writeError(c *fiber.Ctx, err error) error {
	n.commonHeaders(c)
	var fe *fiber.Error
	code, msg := functions.ErrorCode(err), functions.ErrorMessage(err)
	if errors.As(err, &fe) && fe.Code == fiber.StatusRequestTimeout {
		// fasthttp's read timeout on a connection that sent no complete request: answer 408
		// and close, so that no client takes this reply for its next request's.
		c.Context().SetConnectionClose()
		var body errorBody
		body.Error.Code, body.Error.Message = "request_timeout", "no complete request within the read timeout"
		return c.Status(fiber.StatusRequestTimeout).JSON(body)
	}
	if errors.As(err, &fe) {
		code = fiberCodes[fe.Code]
		if code == "" {
			code = functions.EInvalid
		}
		msg = fe.Message
		if fe.Code == fiber.StatusMethodNotAllowed {
			msg = "no such route"
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
			slog.String("path", strings.Clone(c.Path())), slog.Any("err", err))
	}
	var body errorBody
	body.Error.Code, body.Error.Message = code, msg
	if code == functions.EUnauthorized {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="sessiond"`)
	}
	return c.Status(status).JSON(body)
}

func badRequest(format string, args ...any) error {
	return functions.Errorf(functions.EInvalid, format, args...)
}

// decodeJSON decodes the request body into v, strictly: one JSON object, no unknown
// fields. Errors are invalid_argument with a message naming the problem.
func decodeJSON(c *fiber.Ctx, v any) error {
	// c.Body() would inflate a gzip, deflate or brotli body with no bound, past the 1 MiB
	// cap (a 1 MiB gzip body inflates to about 1 GiB): take the bytes as sent, and only
	// uncompressed ones.
	if enc := c.Get(fiber.HeaderContentEncoding); enc != "" && !strings.EqualFold(enc, "identity") {
		return badRequest("Content-Encoding %q is not supported; send plain JSON", enc)
	}
	body := c.Request().Body()
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("request body must be a JSON object")
	}
	// encoding/json would turn invalid UTF-8 into U+FFFD and store that; refuse it instead.
	if !utf8.Valid(body) {
		return badRequest("request body must be valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return badRequest("malformed JSON at byte %d", se.Offset)
		case errors.As(err, &te) && te.Field == "":
			return badRequest("request body must be a JSON object")
		case errors.As(err, &te):
			return badRequest("field %q must be %s", te.Field, jsonKind(te.Type.Kind().String()))
		}
		return badRequest("invalid JSON: %s", err.Error())
	}
	// dec.More() misses a stray '}' or ']' after the object; any non-space rest is refused.
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return badRequest("request body must hold one JSON object")
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	case "int", "int64":
		return "a number"
	}
	return "of another type"
}

func retryAfterSeconds(d float64) string {
	s := int(d + 0.999)
	return strconv.Itoa(max(s, 1))
}
