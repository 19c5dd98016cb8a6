package edge

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NewClusterKey returns a fresh cluster key in the form key files hold: base64 of 32
// random bytes.
func NewClusterKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// ParseClusterKeys parses a key file's text: one base64 key per line, the first the
// active one, the others still accepted; blank lines and lines starting with # are ignored.
func ParseClusterKeys(text string) ([][]byte, error) {
	var keys [][]byte
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(k) != 32 {
			return nil, fmt.Errorf("cluster key on line %d: want base64 of 32 bytes", i+1)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no cluster key found")
	}
	return keys, nil
}

// loadOrCreateKey returns the key kept in dataDir, creating it on first use: a single node
// started without a key still signs its tokens with a stable secret.
func loadOrCreateKey(dataDir string) ([][]byte, error) {
	path := filepath.Join(dataDir, "cluster.key")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		text := NewClusterKey() + "\n"
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			return nil, fmt.Errorf("write cluster key: %w", err)
		}
		b = []byte(text)
	} else if err != nil {
		return nil, fmt.Errorf("read cluster key: %w", err)
	}
	keys, err := ParseClusterKeys(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// Purposes of keys derived from a cluster key. Each use gets its own key, so no two
// protocols ever share one. (Package adminauth derives the admin routes' key, under
// "sessiond/admin/v1".)
const (
	purposeJWT    = "sessiond/jwt/v1"
	purposeGossip = "sessiond/gossip/v1"
	purposeSync   = "sessiond/sync/v1"
)

// deriveKey derives a 32-byte key for purpose from a cluster key (HKDF-SHA256).
func deriveKey(clusterKey []byte, purpose string) []byte {
	k, err := hkdf.Key(sha256.New, clusterKey, nil, purpose, 32)
	if err != nil { // only for lengths HKDF cannot produce
		panic(err)
	}
	return k
}

// keyID names a derived key without revealing it: the token header's kid.
func keyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("kid:"), key...))
	return hex.EncodeToString(sum[:6])
}
