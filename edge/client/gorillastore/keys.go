package gorillastore

import (
	"fmt"

	"github.com/sessiond/sessiond/edge/client"
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

// idLen is the length of an id the store makes (client.RandomID).
const idLen = client.RandomIDLen

// prefix returns the store's key prefix, or an error naming what is wrong with
// KeyPrefix (client.ValidKeyPrefix): every key made of it and an id is one the server
// takes.
func (s *Store) prefix() (string, error) {
	if s.KeyPrefix == "" {
		return DefaultKeyPrefix, nil
	}
	if err := client.ValidKeyPrefix(s.KeyPrefix); err != nil {
		return "", fmt.Errorf("gorillastore: KeyPrefix: %w", err)
	}
	return s.KeyPrefix, nil
}
