package functions

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
)

// Stored JSON values (session data, key-value fields) are I-JSON (RFC 7493), so that
// every reader sees the same value: JSON whose objects name each member once (parsers
// disagree on which of two equal names wins), whose numbers are within the range of an
// IEEE 754 double (1e999999 fails most parsers), and whose strings escape no lone UTF-16
// surrogate (decoders turn one into U+FFFD, or fail).

// errNotIJSON describes a value that is JSON but not I-JSON.
var errNotIJSON = errors.New("not I-JSON")

// checkIJSON reports whether v is one JSON value that is I-JSON, with why not. Values
// with no object, no exponent and no escape, which are most, are checked by json.Valid
// alone.
func checkIJSON(v []byte) error {
	if !json.Valid(v) {
		return errors.New("not JSON")
	}
	if bytes.IndexAny(v, `{eE\`) < 0 {
		return nil
	}
	if err := CheckSurrogates(v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	type frame struct {
		object   bool
		wantName bool            // an object's next token is a name (or its end)
		names    map[string]bool // an object's names so far
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantName {
			if name, ok := tok.(string); ok {
				f := &stack[n-1]
				if f.names == nil {
					f.names = make(map[string]bool)
				}
				if f.names[name] {
					return errors.New("an object names member " + strconv.Quote(name) + " twice")
				}
				f.names[name], f.wantName = true, false
				continue
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			if t == '{' || t == '[' {
				stack = append(stack, frame{object: t == '{', wantName: t == '{'})
				continue
			}
			stack = stack[:len(stack)-1]
		case json.Number:
			if f, err := strconv.ParseFloat(string(t), 64); err != nil || math.IsInf(f, 0) {
				return errors.New("number " + string(t) + " is beyond the range of a double")
			}
		}
		// A value ended: in an object, a name comes next.
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantName = true
		}
	}
}

// CheckSurrogates reports an escape (\uD800 to \uDFFF) in valid JSON v that is not half
// of a surrogate pair.
func CheckSurrogates(v []byte) error {
	for i := 0; i < len(v); i++ {
		if v[i] != '\\' {
			continue
		}
		i++ // the escaped byte; in valid JSON a backslash is always inside a string
		if i >= len(v) || v[i] != 'u' || i+4 >= len(v) {
			continue
		}
		r, _ := strconv.ParseUint(string(v[i+1:i+5]), 16, 32)
		switch {
		case r >= 0xD800 && r <= 0xDBFF:
			lo := uint64(0)
			if i+10 < len(v) && v[i+5] == '\\' && v[i+6] == 'u' {
				lo, _ = strconv.ParseUint(string(v[i+7:i+11]), 16, 32)
			}
			if lo < 0xDC00 || lo > 0xDFFF {
				return errors.New("a string escapes a lone UTF-16 surrogate (\\u" + string(v[i+1:i+5]) + ")")
			}
			i += 10
		case r >= 0xDC00 && r <= 0xDFFF:
			return errors.New("a string escapes a lone UTF-16 surrogate (\\u" + string(v[i+1:i+5]) + ")")
		default:
			i += 4
		}
	}
	return nil
}
