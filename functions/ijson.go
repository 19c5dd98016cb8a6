package functions

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Stored JSON values (session data, key-value fields) are I-JSON (RFC 7493), so that
// every reader sees the same value: JSON whose objects name each member once (parsers
// disagree on which of two equal names wins), whose numbers are within the range of an
// IEEE 754 double (1e999999 fails most parsers), and whose strings escape no lone UTF-16
// surrogate (decoders turn one into U+FFFD, or fail).

// checkIJSON reports whether v is one JSON value that is I-JSON, with why not. Its cost
// is linear in v, and it allocates nothing for objects of up to 16 members.
func checkIJSON(v []byte) error {
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
	i := skipSpace(v, 0)
	_, err := ScanIJSON(v, i)
	return err
}

// ScanIJSON checks the value at v[i:], part of valid JSON (json.Valid), for I-JSON
// members and numbers (not surrogates: CheckSurrogates) and returns the index after it.
// Its cost is linear, and it allocates nothing for objects of up to 16 members.
func ScanIJSON(v []byte, i int) (int, error) {
	switch v[i] {
	case '"':
		return stringEnd(v, i), nil
	case '{':
		var buf [16][]byte
		small := buf[:0]         // the names so far, while few
		var many map[string]bool // then
		i = skipSpace(v, i+1)
		for v[i] != '}' {
			end := stringEnd(v, i)
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
			i = skipSpace(v, skipSpace(v, end)+1) // past the ':'
			var err error
			if i, err = ScanIJSON(v, i); err != nil {
				return i, err
			}
			if i = skipSpace(v, i); v[i] == ',' {
				i = skipSpace(v, i+1)
			}
		}
		return i + 1, nil
	case '[':
		i = skipSpace(v, i+1)
		for v[i] != ']' {
			var err error
			if i, err = ScanIJSON(v, i); err != nil {
				return i, err
			}
			if i = skipSpace(v, i); v[i] == ',' {
				i = skipSpace(v, i+1)
			}
		}
		return i + 1, nil
	}
	start := i
	for i < len(v) && !jsonDelim[v[i]] { // a number, true, false or null
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

// jsonDelim[c] reports whether c ends a number or literal.
var jsonDelim = func() (t [256]bool) {
	for _, c := range []byte(",}] \t\r\n") {
		t[c] = true
	}
	return t
}()

// stringEnd returns the index after the JSON string that starts at v[i] (a quote).
func stringEnd(v []byte, i int) int {
	for i++; ; i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

func skipSpace(v []byte, i int) int {
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
