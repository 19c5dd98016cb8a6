package scsstore

import (
	"unicode/utf8"

	"github.com/sessiond/sessiond/edge/client"
)

// The keys a Store uses. A session token comes from the visitor's cookie, unsigned: it
// is whatever the visitor sends. So the store never uses it as a key by itself: it takes
// only a token of the shape scs makes (client.IsRandomID), and puts its prefix before
// it. A cookie then names a key of the store's own (prefix + 43 base64url characters) or
// nothing; the app's other keys, which the store must never read, overwrite or delete,
// are out of its reach.

// DefaultKeyPrefix is the prefix of the keys that New's Store keeps sessions under (the
// prefix of scs's own Redis stores).
const DefaultKeyPrefix = "scs:session:"

// tokenLen is the length of a token scs makes (generateToken: 32 bytes from crypto/rand,
// base64url without padding); with HashTokenInStore, the token's SHA-256, encoded the
// same way, has the same length.
const tokenLen = client.RandomIDLen

// validSessionKey reports whether k can name a field of its own once "v:" is put before
// it: what the namespace takes in a new field name.
func validSessionKey(k string) bool {
	return len(k) > 0 && len(k) <= maxKey && utf8.ValidString(k) && client.PrintableFieldName(k)
}
