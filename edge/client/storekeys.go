package client

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"
)

// Keys of session stores in an app's key-value namespace (scsstore, gorillastore). A
// session's token or ID comes from a cookie, and a visitor may send any cookie, so a
// store must never take one as a key by itself: it takes only an ID of the shape it makes
// (RandomIDLen characters of base64url, 256 random bits) and puts a prefix of its own
// before it. A cookie then names one of the store's own keys or nothing, and the app's
// other keys are out of its reach.

// RandomIDLen is the length of a RandomID: 32 bytes in base64url without padding.
const RandomIDLen = 43

// MaxKVKey is the longest key the key-value namespace takes.
const MaxKVKey = 256

// MaxKeyPrefix is the longest key prefix a RandomID still fits behind.
const MaxKeyPrefix = MaxKVKey - RandomIDLen

// RandomID returns 32 bytes from crypto/rand in base64url without padding: an ID
// IsRandomID takes.
func RandomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// IsRandomID reports whether id has the shape of a RandomID (and of scs's tokens, and of
// their SHA-256 with scs's HashTokenInStore): the canonical base64url encoding, without
// padding, of 32 bytes. Strict: the 4 bits the last character carries beyond the 32
// bytes are zero, so that one ID has one spelling.
func IsRandomID(id string) bool {
	if len(id) != RandomIDLen {
		return false
	}
	for i := range len(id) {
		if !isBase64URL(id[i]) {
			return false
		}
	}
	var b [32]byte
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(id))
	return err == nil && n == len(b)
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// ValidKeyPrefix checks a store's key prefix: 1 to MaxKeyPrefix bytes of what the
// namespace takes in keys (A–Z a–z 0–9 - _ . ~ : @ + =), so that every key made of it and
// a RandomID is one the server takes.
func ValidKeyPrefix(prefix string) error {
	if prefix == "" || len(prefix) > MaxKeyPrefix {
		return fmt.Errorf("key prefix %q: want 1 to %d bytes", prefix, MaxKeyPrefix)
	}
	for i := range len(prefix) {
		if c := prefix[i]; !isBase64URL(c) && strings.IndexByte(".~:@+=", c) < 0 {
			return fmt.Errorf("key prefix %q: want only A-Z a-z 0-9 - _ . ~ : @ + =", prefix)
		}
	}
	return nil
}

// PrintableFieldName reports whether name holds only what the namespace takes in a new
// field name: letters, marks, numbers, punctuation, symbols, spaces and the joiners
// U+200C and U+200D; not control characters, nor format characters such as U+200B or
// U+202E, which make two names look alike. (Length and UTF-8 validity are the caller's.)
func PrintableFieldName(name string) bool {
	return !strings.ContainsFunc(name, func(r rune) bool {
		return !unicode.IsGraphic(r) && r != '\u200c' && r != '\u200d'
	})
}
