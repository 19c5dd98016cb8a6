package gorillastore

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"
)

// The keys a Store uses. A session's id comes from a cookie that securecookie verified,
// so the store made it — or something else that signs with the same keys did: another
// store of the app (gorilla's FilesystemStore and Redis stores sign their ids the same
// way), or a cookie of the same name from before. The store does not take such a cookie
// as naming a key: it takes only an id of the shape it makes, and puts its prefix before
// it. A cookie then names a key of the store's own (prefix + 43 base64url characters) or
// nothing; the app's other keys, which the store must never read, overwrite or delete,
// are out of its reach, even for whoever holds the signing keys.

// DefaultKeyPrefix is the prefix of the keys a Store keeps sessions under when its
// KeyPrefix is empty.
const DefaultKeyPrefix = "gorilla:session:"

// idLen is the length of an id newID makes: 32 bytes, base64url without padding.
const idLen = 43

// maxKVKey is the longest key the key-value namespace takes (functions.MaxKVKey).
const maxKVKey = 256

// maxPrefix is the longest prefix an id still fits behind.
const maxPrefix = maxKVKey - idLen

// validID reports whether id has the shape of the ids newID makes: the canonical
// base64url encoding, without padding, of 32 bytes. Checked before any request, so that
// an id of any other shape is not found without asking the server.
func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := range len(id) {
		if !isBase64URL(id[i]) {
			return false
		}
	}
	// Strict: the 4 bits the last character carries beyond the 32 bytes are zero, so
	// that one id has one spelling (the decoder would take either).
	var b [32]byte
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(id))
	return err == nil && n == len(b)
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// prefix returns the store's key prefix, or an error naming what is wrong with
// KeyPrefix: 1 to maxPrefix bytes of what the namespace takes in keys (A–Z a–z 0–9
// - _ . ~ : @ + =), so that every key made of it and an id is one the server takes.
func (s *Store) prefix() (string, error) {
	p := s.KeyPrefix
	if p == "" {
		return DefaultKeyPrefix, nil
	}
	if len(p) > maxPrefix {
		return "", fmt.Errorf("gorillastore: KeyPrefix %q: want at most %d bytes", p, maxPrefix)
	}
	for i := range len(p) {
		if c := p[i]; !isBase64URL(c) && strings.IndexByte(".~:@+=", c) < 0 {
			return "", fmt.Errorf("gorillastore: KeyPrefix %q: want only A-Z a-z 0-9 - _ . ~ : @ + =", p)
		}
	}
	return p, nil
}

// printable reports whether name holds only what the namespace takes in a new field
// name (functions: printableName): letters, marks, numbers, punctuation, symbols, spaces
// and the joiners U+200C and U+200D; not control characters, nor format characters such
// as U+200B or U+202E, which make two names look alike.
func printable(name string) bool {
	return !strings.ContainsFunc(name, func(r rune) bool {
		return !unicode.IsGraphic(r) && r != '\u200c' && r != '\u200d'
	})
}
