package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/functions/ijson"
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
// sorted, and current and the origin's fields only when set (omitempty).
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
	for _, f := range [...]struct{ name, v string }{
		{`,"device":`, s.Device},
		{`,"client_address":`, s.ClientAddress},
		{`,"region":`, s.Region},
		{`,"node":`, s.Node},
		{`,"subject":`, s.Subject},
	} {
		if f.v != "" {
			b = appendJSONString(append(b, f.name...), f.v)
		}
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

// decodeJSON decodes the request body into v, strictly: a body sent as application/json
// (else 415 unsupported_media_type, so that no cross-site form or text/plain post reaches a
// handler), one JSON object, no unknown fields, field names matched exactly and each at
// most once (encoding/json alone matches them case-insensitively, Unicode folding included,
// and lets the last of duplicates win). Other errors are invalid_argument with a message
// naming the problem.
func decodeJSON(c *fiber.Ctx, v any) error {
	if !isJSONMediaType(c.Request().Header.ContentType()) {
		return functions.Errorf(codeUnsupportedMediaType, "Content-Type must be application/json")
	}
	body, err := rawBody(c)
	if err != nil {
		return err
	}
	// JSON's white space only: bytes.TrimSpace would also pass Unicode spaces (U+00A0,
	// U+0085), which encoding/json refuses, so two readers of one body would disagree.
	if i := ijson.SkipSpace(body, 0); i == len(body) || body[i] != '{' { // null would decode as {}
		return badRequest("request body must be a JSON object")
	}
	// encoding/json would turn invalid UTF-8 into U+FFFD and store that; refuse it instead.
	if !utf8.Valid(body) {
		return badRequest("request body must be valid UTF-8")
	}
	// Nor would it refuse an escaped lone surrogate ("\ud800"): it stores U+FFFD, so
	// two different names could become one.
	if bytes.Contains(body, []byte(`\u`)) {
		if err := ijson.CheckSurrogates(body); err != nil {
			return badRequest("invalid JSON: %v", err)
		}
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
	end := int(dec.InputOffset())
	if ijson.SkipSpace(body, end) < len(body) {
		return badRequest("request body must hold one JSON object")
	}
	return checkFieldNames(body[:end], reflect.TypeOf(v))
}

// rawBody returns the request's body as sent, refusing a compressed one: c.Body() would
// inflate a gzip, deflate or brotli body (stacked encodings too) with no bound, past the
// 1 MiB cap (a 1 MiB gzip body inflates to about 1 GiB). No route takes a compressed
// body, so every reader of a body goes through here.
func rawBody(c *fiber.Ctx) ([]byte, error) {
	if enc := header(c, fiber.HeaderContentEncoding); enc != "" && !strings.EqualFold(enc, "identity") {
		return nil, badRequest("Content-Encoding %q is not supported; send plain JSON", enc)
	}
	return c.Request().Body(), nil
}

// isJSONMediaType reports whether a Content-Type header names application/json, with or
// without parameters (charset).
func isJSONMediaType(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(string(bytes.TrimSpace(ct)), fiber.MIMEApplicationJSON)
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
		return "an integer"
	}
	return "of another type"
}

// jsonShape is what checkFieldNames needs of a Go type that JSON decodes into: the exact
// names of a struct's fields, with their shapes, or the shape of a map's, slice's or
// array's elements. A nil *jsonShape stands for a type with no struct inside (a string,
// a number, json.RawMessage, map[string]json.RawMessage): its value is skipped unread.
type jsonShape struct {
	fields []jsonField // a struct's fields; nil for a container (a few: a scan beats a map)
	elem   *jsonShape  // a container's element
}

type jsonField struct {
	name  string // as the tag spells it
	shape *jsonShape
}

// field returns the index of the field called name, or -1.
func (s *jsonShape) field(name []byte) int {
	for i := range s.fields {
		if s.fields[i].name == string(name) {
			return i
		}
	}
	return -1
}

// jsonShapes caches shapeOf by reflect.Type; the request types are a handful.
var jsonShapes sync.Map

// shapeOf returns the shape of t, nil when t holds no struct. Structs with more than 64
// JSON fields, embedded structs and types with their own UnmarshalJSON are not request
// types here; shapeOf panics on the first two and treats the last as opaque.
func shapeOf(t reflect.Type) *jsonShape {
	if s, ok := jsonShapes.Load(t); ok {
		return s.(*jsonShape)
	}
	s := buildShape(t)
	jsonShapes.Store(t, s)
	return s
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func buildShape(t reflect.Type) *jsonShape {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &jsonShape{fields: []jsonField{}}
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous {
				panic("edge: request type " + t.String() + " embeds a struct")
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if len(s.fields) == 64 {
				panic("edge: request type " + t.String() + " has more than 64 fields")
			}
			s.fields = append(s.fields, jsonField{name: name, shape: buildShape(f.Type)})
		}
		return s
	case reflect.Map, reflect.Slice, reflect.Array:
		if elem := buildShape(t.Elem()); elem != nil {
			return &jsonShape{elem: elem}
		}
	}
	return nil
}

// checkFieldNames checks a JSON value that encoding/json has decoded into a value of type
// t: every object decoded into a struct names only the struct's fields, exactly as their
// tags spell them, and each at most once. body must be valid JSON (it was just decoded).
func checkFieldNames(body []byte, t reflect.Type) error {
	s := shapeOf(t)
	if s == nil {
		return nil
	}
	_, err := checkValue(body, ijson.SkipSpace(body, 0), s)
	return err
}

// checkValue checks the value at b[i:] against s and returns the index after it.
func checkValue(b []byte, i int, s *jsonShape) (int, error) {
	if s == nil {
		return checkOpaque(b, i)
	}
	switch b[i] {
	case '{':
		var seen uint64
		i = ijson.SkipSpace(b, i+1)
		for b[i] != '}' {
			end := ijson.StringEnd(b, i)
			key := b[i+1 : end-1]
			i = ijson.SkipSpace(b, ijson.SkipSpace(b, end)+1) // past the ':'
			var elem *jsonShape
			if s.fields == nil {
				elem = s.elem // a map's key is any string
			} else {
				k := s.field(key)
				if bytes.IndexByte(key, '\\') >= 0 {
					var name string
					if err := json.Unmarshal(b[end-len(key)-2:end], &name); err != nil {
						return i, badRequest("malformed JSON: %v", err)
					}
					k = s.field([]byte(name))
				}
				if k < 0 {
					return i, badRequest("unknown field %s (field names are case-sensitive)", b[end-len(key)-2:end])
				}
				if seen&(1<<k) != 0 {
					return i, badRequest("field %s appears twice", b[end-len(key)-2:end])
				}
				seen |= 1 << k
				elem = s.fields[k].shape
			}
			var err error
			if i, err = checkValue(b, i, elem); err != nil {
				return i, err
			}
			if i = ijson.SkipSpace(b, i); b[i] == ',' {
				i = ijson.SkipSpace(b, i+1)
			}
		}
		return i + 1, nil
	case '[':
		i = ijson.SkipSpace(b, i+1)
		for b[i] != ']' {
			var err error
			if i, err = checkValue(b, i, s.elem); err != nil {
				return i, err
			}
			if i = ijson.SkipSpace(b, i); b[i] == ',' {
				i = ijson.SkipSpace(b, i+1)
			}
		}
		return i + 1, nil
	}
	return skipValue(b, i), nil // null, or a type error encoding/json reported already
}

// checkOpaque checks the valid JSON value at b[i:], one no request type describes (a
// session's data, a key-value field's value), and returns the index after it. It must be
// I-JSON (RFC 7493), as what is stored is read by other programs: no object names a
// member twice (parsers disagree on which wins) and no number is beyond the range of a
// double (most parsers fail on 1e999999). Lone surrogate escapes are refused before
// (decodeJSON). The cost is linear in the value.
func checkOpaque(b []byte, i int) (int, error) {
	end, err := ijson.Scan(b, i)
	if err != nil {
		return end, badRequest("%v (stored values are I-JSON, RFC 7493)", err)
	}
	return end, nil
}

// skipValue returns the index after the valid JSON value at b[i:].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return ijson.StringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = ijson.StringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) && !ijson.IsDelim(b[i]) { // a number, true, false or null
		i++
	}
	return i
}
