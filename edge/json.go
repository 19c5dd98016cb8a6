package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
)

// The session routes are the hot ones, and encoding/json spends most of their handler
// time on reflection, sorting the data keys through reflect.Value and re-scanning every
// stored value. The appenders below write the same bytes as json.Marshal (which is what
// Fiber's c.JSON calls) for the session documents, without reflection; json_test.go
// compares the two on random sessions. Other routes keep c.JSON.
//
// "The same bytes" includes encoding/json's HTML-safe escaping (<, >, & as \u003c, \u003e,
// \u0026, and U+2028, U+2029), in strings and inside the stored data values, invalid UTF-8
// in strings as \ufffd, and failing where json.Marshal fails (with another error text): on
// a time outside years 0-9999 or a data value that is not valid JSON.

// sendSession writes {"session":s} as the response body.
func sendSession(c *fiber.Ctx, s functions.Session) error {
	b, err := appendSessionDoc(takeBody(c), s)
	return setJSONBody(c, b, err)
}

// sendSessions writes {"sessions":[ss…]} as the response body.
func sendSessions(c *fiber.Ctx, ss []functions.Session) error {
	b, err := appendSessionsDoc(takeBody(c), ss)
	return setJSONBody(c, b, err)
}

// takeBody takes the response's pooled body buffer, emptied, to append a body to, so that
// a response costs no allocation once fasthttp's pool is warm. setJSONBody gives it back.
func takeBody(c *fiber.Ctx) []byte {
	return c.Response().SwapBody(nil)[:0]
}

// setJSONBody gives b, from takeBody, back as the response body with Content-Type
// application/json, as c.JSON would; when err is not nil it leaves the body empty and
// returns err.
func setJSONBody(c *fiber.Ctx, b []byte, err error) error {
	resp := c.Response()
	if err != nil {
		resp.SwapBody(b[:0])
		return err
	}
	resp.SwapBody(b)
	resp.Header.SetContentType(fiber.MIMEApplicationJSON)
	return nil
}

// appendSessionDoc appends {"session":s}.
func appendSessionDoc(b []byte, s functions.Session) ([]byte, error) {
	b = append(b, `{"session":`...)
	b, err := appendSession(b, s)
	return append(b, '}'), err
}

// appendSessionsDoc appends {"sessions":[ss…]}.
func appendSessionsDoc(b []byte, ss []functions.Session) ([]byte, error) {
	b = append(b, `{"sessions":`...)
	if ss == nil {
		return append(b, "null}"...), nil
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendSession(b, s); err != nil {
			return b, err
		}
	}
	return append(b, "]}"...), nil
}

// appendSession appends s as encoding/json encodes a functions.Session: the fields in
// the order of its struct tags, times as time.Time.MarshalJSON writes them, data keys
// sorted, and current only when true (omitempty).
func appendSession(b []byte, s functions.Session) ([]byte, error) {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, s.ID)
	b = append(b, `,"user_id":`...)
	b = appendJSONString(b, s.UserID)
	b = append(b, `,"username":`...)
	b = appendJSONString(b, s.Username)
	var err error
	for _, f := range [...]struct {
		name string
		t    time.Time
	}{
		{`,"created_at":`, s.CreatedAt},
		{`,"last_used_at":`, s.LastUsedAt},
		{`,"expires_at":`, s.ExpiresAt},
		{`,"idle_expires_at":`, s.IdleExpiresAt},
	} {
		b = append(b, f.name...)
		if b, err = appendJSONTime(b, f.t); err != nil {
			return b, err
		}
	}
	b = append(b, `,"data":`...)
	if b, err = appendDataJSON(b, s.Data); err != nil {
		return b, err
	}
	if s.Current {
		b = append(b, `,"current":true`...)
	}
	return append(b, '}'), nil
}

// appendJSONTime appends t as time.Time.MarshalJSON does: RFC 3339 with nanoseconds, and
// an error for a year outside 0-9999 or a zone offset of a day or more.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return b, fmt.Errorf("encode session: %w", err)
	}
	return append(b, '"'), nil
}

// appendDataJSON appends session data as encoding/json encodes a
// map[string]json.RawMessage: null when nil, else the keys in byte order.
func appendDataJSON(b []byte, data map[string]json.RawMessage) ([]byte, error) {
	if data == nil {
		return append(b, "null"...), nil
	}
	var arr [32]string // most sessions have few keys: sort them without an allocation
	keys := arr[:0]
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		var err error
		if b, err = appendRawJSON(b, data[k]); err != nil {
			return b, err
		}
	}
	return append(b, '}'), nil
}

// errRawJSON is what appendRawJSON reports for a value that is not valid JSON (where
// encoding/json reports a *json.MarshalerError). Stored values never are: PatchData
// validates each before writing it.
var errRawJSON = errors.New("encode session: data value is not valid JSON")

// appendRawJSON appends v as encoding/json encodes a json.RawMessage: null when nil,
// compacted, with <, >, &, U+2028 and U+2029 escaped, and an error when v is not valid
// JSON. Stored values were compacted when written, so the compaction here only matters
// for a value written otherwise; it is a byte loop, as cheap as a copy.
func appendRawJSON(b []byte, v json.RawMessage) ([]byte, error) {
	if v == nil {
		return append(b, "null"...), nil
	}
	if !json.Valid(v) {
		return b, errRawJSON
	}
	// v is valid JSON: whitespace outside strings is insignificant, and <, >, & and the
	// bytes of U+2028 and U+2029 occur only inside strings.
	inString := false
	start := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !rawSpecial[c] {
			continue
		}
		switch {
		case inString && c == '\\':
			i++ // the escaped byte is ASCII and never ends the string
		case c == '"':
			inString = !inString
		case c == '<' || c == '>' || c == '&':
			b = append(b, v[start:i]...)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			start = i + 1
		case c == 0xE2:
			if i+2 < len(v) && v[i+1] == 0x80 && v[i+2]&^1 == 0xA8 {
				b = append(b, v[start:i]...)
				b = append(b, '\\', 'u', '2', '0', '2', hexDigits[v[i+2]&0xF])
				i += 2
				start = i + 1
			}
		case !inString: // whitespace
			b = append(b, v[start:i]...)
			start = i + 1
		}
	}
	return append(b, v[start:]...), nil
}

// rawSpecial[c] reports whether appendRawJSON must look at byte c of a JSON value.
var rawSpecial = func() (t [256]bool) {
	for _, c := range []byte("\\\" \t\n\r<>&\xe2") {
		t[c] = true
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// jsonSafe[c] reports whether ASCII byte c stands for itself in a JSON string as
// encoding/json writes one: not a control character, quote or backslash, nor one of the
// HTML-significant <, > and &.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString appends s as a JSON string exactly as encoding/json does with its
// default HTML-safe escaping.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default: // other control characters, <, > and &
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
