package functions

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/sessiond/sessiond/edge/api"
)

// Limits of the API (docs/API.md lists them for users).
const (
	MinUsername        = 3
	MaxUsername        = 32
	MinPassword        = 8
	MaxPassword        = 256
	MaxNameField       = 100 // first_name, last_name, bytes
	MaxEmail           = 254
	MaxAddress         = 500
	MaxDataKey         = 128
	MaxDataValue       = 16 << 10
	MaxDataKeys        = 256
	MaxDataNames       = 1024     // data keys a session holds, deleted ones (tombstones) included
	MaxSessionData     = 64 << 10 // all keys and values of one session, bytes
	MaxMessageBody     = 4 << 10
	DefaultPageLimit   = 100
	MaxPageLimit       = 500
	MaxSessionsPerUser = 100
	// MaxNameClaims bounds the accounts ever registered under one username, erased ones
	// included: each keeps its claim in the name's record for good (a claim is how the
	// first registration wins everywhere), and a contested name's every use reads them all.
	MaxNameClaims = 32
)

func validUsername(s string) error {
	if len(s) < MinUsername || len(s) > MaxUsername {
		return Errorf(EInvalid, "username must be %d to %d characters", MinUsername, MaxUsername)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return Errorf(EInvalid, "username may contain only a-z, 0-9, '_', '.' and '-'")
		}
	}
	return nil
}

func validPassword(s string) error {
	if len(s) < MinPassword || len(s) > MaxPassword {
		return Errorf(EInvalid, "password must be %d to %d bytes", MinPassword, MaxPassword)
	}
	return nil
}

// validText checks a free-text field: UTF-8, at most max bytes, no control characters —
// C0, DEL and C1, whose U+0085 breaks lines and U+009B starts terminal escapes — (newlines
// and tabs allowed when multiline), and in a single-line field (a name) no bidirectional
// embedding, override or isolate controls, which make a name display as another.
func validText(field, s string, max int, multiline bool) error {
	if len(s) > max {
		return Errorf(EInvalid, "%s must be at most %d bytes", field, max)
	}
	if !utf8.ValidString(s) {
		return Errorf(EInvalid, "%s must be valid UTF-8", field)
	}
	for _, c := range s {
		if unicode.IsControl(c) && !(multiline && (c == '\n' || c == '\t' || c == '\r')) {
			return Errorf(EInvalid, "%s must not contain control characters", field)
		}
		if !multiline && bidiControl(c) {
			return Errorf(EInvalid, "%s must not contain bidirectional control characters", field)
		}
	}
	return nil
}

// bidiControl reports whether c is a bidirectional embedding, override or isolate
// control (U+202A–U+202E, U+2066–U+2069).
func bidiControl(c rune) bool { return c >= 0x202a && c <= 0x202e || c >= 0x2066 && c <= 0x2069 }

// Profile is a user's editable profile (package api owns the JSON shape).
type Profile = api.Profile

func validateProfile(p Profile) error {
	if err := validText("first_name", p.FirstName, MaxNameField, false); err != nil {
		return err
	}
	if err := validText("last_name", p.LastName, MaxNameField, false); err != nil {
		return err
	}
	if err := validEmail(p.Email); err != nil {
		return err
	}
	return validText("address", p.Address, MaxAddress, true)
}

func validEmail(s string) error {
	if s == "" {
		return nil
	}
	if err := validText("email", s, MaxEmail, false); err != nil {
		return err
	}
	local, domain, ok := strings.Cut(s, "@")
	invisible := strings.IndexFunc(s, func(c rune) bool { return unicode.IsSpace(c) || unicode.Is(unicode.Cf, c) }) >= 0
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") || invisible {
		return Errorf(EInvalid, "email must look like name@example.com")
	}
	return nil
}

func profileFields(p Profile) map[string]string {
	return map[string]string{
		"first_name": p.FirstName, "last_name": p.LastName, "email": p.Email, "address": p.Address,
	}
}

func profileOf(fields map[string]string) Profile {
	return Profile{
		FirstName: fields["first_name"], LastName: fields["last_name"],
		Email: fields["email"], Address: fields["address"],
	}
}
