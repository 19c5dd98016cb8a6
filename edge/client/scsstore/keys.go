package scsstore

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The keys a Store uses. A session token comes from the visitor's cookie, unsigned: it
// is whatever the visitor sends. So the store never uses it as a key by itself: it takes
// only a token of the shape scs makes, and puts its prefix before it. A cookie then
// names a key of the store's own (prefix + 43 base64url characters) or nothing; the app's
// other keys, which the store must never read, overwrite or delete, are out of its reach.

// DefaultKeyPrefix is the prefix of the keys that New's Store keeps sessions under (the
// prefix of scs's own Redis stores).
const DefaultKeyPrefix = "scs:session:"

// tokenLen is the length of a token scs makes (generateToken: 32 bytes from crypto/rand,
// base64url without padding); with HashTokenInStore, the token's SHA-256, encoded the
// same way, has the same length.
const tokenLen = 43

// maxKVKey is the longest key the key-value namespace takes (functions.MaxKVKey).
const maxKVKey = 256

// maxPrefix is the longest prefix a token still fits behind.
const maxPrefix = maxKVKey - tokenLen

// validToken reports whether token has the shape of the tokens scs makes: the canonical
// base64url encoding, without padding, of 32 bytes. Checked before any request, so that a
// token of any other shape is not found without asking the server.
func validToken(token string) bool {
	if len(token) != tokenLen {
		return false
	}
	for i := range len(token) {
		if !isBase64URL(token[i]) {
			return false
		}
	}
	// Strict: the 4 bits the last character carries beyond the 32 bytes are zero, so
	// that one token has one spelling (the decoder would take either).
	var b [32]byte
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(token))
	return err == nil && n == len(b)
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// validPrefix checks a key prefix: 1 to maxPrefix bytes of what the namespace takes in
// keys (A–Z a–z 0–9 - _ . ~ : @ + =), so that every key made of it and a token is one the
// server takes.
func validPrefix(prefix string) error {
	if prefix == "" || len(prefix) > maxPrefix {
		return fmt.Errorf("scsstore: key prefix %q: want 1 to %d bytes", prefix, maxPrefix)
	}
	for i := range len(prefix) {
		if c := prefix[i]; !isBase64URL(c) && strings.IndexByte(".~:@+=", c) < 0 {
			return fmt.Errorf("scsstore: key prefix %q: want only A-Z a-z 0-9 - _ . ~ : @ + =", prefix)
		}
	}
	return nil
}

// validSessionKey reports whether k can name a field of its own once "v:" is put before
// it: what the namespace takes in a new field name (functions: validKVField and
// printableName). Format characters (U+200B, U+202E, U+FEFF…) are refused there, since
// they make two names look alike; the joiners U+200C and U+200D, which emoji and some
// scripts need, are taken.
func validSessionKey(k string) bool {
	if len(k) == 0 || len(k) > maxKey || !utf8.ValidString(k) {
		return false
	}
	return !strings.ContainsFunc(k, func(r rune) bool {
		return !unicode.IsGraphic(r) && r != '\u200c' && r != '\u200d'
	})
}
