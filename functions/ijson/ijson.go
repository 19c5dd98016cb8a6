// Package ijson checks that JSON is I-JSON (RFC 7493), which sessiond requires of what
// it stores for others to read (session data, key-value fields): no object names a
// member twice (parsers disagree on which wins), numbers are within the range of an
// IEEE 754 double (1e999999 fails most parsers), and strings escape no lone UTF-16
// surrogate (decoders turn one into U+FFFD, or fail). It also serves the byte scanning
// such checks need. It imports only the standard library.
package ijson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Check reports whether v is one JSON value that is I-JSON, with why not. Its cost is
// linear in v, and it allocates nothing for objects of up to 16 members.
func Check(v []byte) error {
	if !json.Valid(v) {
		return errors.New("not JSON")
	}
	if !utf8.Valid(v) { // json.Valid takes invalid UTF-8 in strings, which decoders turn into U+FFFD
		return errors.New("not valid UTF-8")
	}
	if bytes.IndexByte(v, '\\') >= 0 {
		if err := CheckSurrogates(v); err != nil {
			return err
		}
	}
	_, err := Scan(v, SkipSpace(v, 0))
	return err
}

// Scan checks the value at v[i:], part of valid JSON (json.Valid), for I-JSON
// members and numbers (not surrogates: CheckSurrogates) and returns the index after it.
// Its cost is linear, and it allocates nothing for objects of up to 16 members.
func Scan(v []byte, i int) (int, error) {
	switch v[i] {
	case '"':
		return StringEnd(v, i), nil
	case '{':
		var buf [16][]byte
		small := buf[:0]         // the names so far, while few
		var many map[string]bool // then
		i = SkipSpace(v, i+1)
		for v[i] != '}' {
			end := StringEnd(v, i)
			name := v[i+1 : end-1]
			if bytes.IndexByte(name, '\\') >= 0 {
				var s string
				if err := json.Unmarshal(v[i:end], &s); err != nil {
					return i, err
				}
				name = []byte(s)
			}
			dup := false
			if many != nil {
				dup = many[string(name)]
				many[string(name)] = true
			} else {
				for _, n := range small {
					dup = dup || bytes.Equal(n, name)
				}
				if small = append(small, name); len(small) == len(buf) {
					many = make(map[string]bool, 2*len(small))
					for _, n := range small {
						many[string(n)] = true
					}
				}
			}
			if dup {
				return i, fmt.Errorf("an object names member %q twice", name)
			}
			i = SkipSpace(v, SkipSpace(v, end)+1) // past the ':'
			var err error
			if i, err = Scan(v, i); err != nil {
				return i, err
			}
			if i = SkipSpace(v, i); v[i] == ',' {
				i = SkipSpace(v, i+1)
			}
		}
		return i + 1, nil
	case '[':
		i = SkipSpace(v, i+1)
		for v[i] != ']' {
			var err error
			if i, err = Scan(v, i); err != nil {
				return i, err
			}
			if i = SkipSpace(v, i); v[i] == ',' {
				i = SkipSpace(v, i+1)
			}
		}
		return i + 1, nil
	}
	start := i
	for i < len(v) && !delim[v[i]] { // a number, true, false or null
		i++
	}
	// A number with no exponent and at most 308 digits is within range.
	if num := v[start:i]; (num[0] == '-' || num[0] >= '0' && num[0] <= '9') &&
		(len(num) > 308 || bytes.ContainsAny(num, "eE")) {
		if f, err := strconv.ParseFloat(string(num), 64); err != nil || math.IsInf(f, 0) {
			return i, fmt.Errorf("number %.40s is beyond the range of a double", num)
		}
	}
	return i, nil
}

// IsDelim reports whether c ends a number or literal.
func IsDelim(c byte) bool { return delim[c] }

// delim[c] reports whether c ends a number or literal.
var delim = func() (t [256]bool) {
	for _, c := range []byte(",}] \t\r\n") {
		t[c] = true
	}
	return t
}()

// StringEnd returns the index after the JSON string that starts at v[i] (a quote) of
// valid JSON.
func StringEnd(v []byte, i int) int {
	for i++; ; i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// SkipSpace returns the index of the first byte at or after v[i] that is not JSON white
// space (len(v) if none).
func SkipSpace(v []byte, i int) int {
	for i < len(v) && (v[i] == ' ' || v[i] == '\t' || v[i] == '\n' || v[i] == '\r') {
		i++
	}
	return i
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
