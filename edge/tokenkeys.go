package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Token keys through a cluster key rotation. Session tokens are signed with the key
// derived from the first cluster key and verified with those of all configured keys. When
// a reload (SIGHUP) drops a cluster key, the token key derived from it is not dropped with
// it: it is retired — it verifies, never signs — until every token it can have signed has
// expired (the session lifetime), so rotating the cluster key logs nobody out. Retired
// keys are kept in the data directory (retiredKeysFile), so a node that restarts meanwhile
// still accepts those tokens; a node first started after the removal does not know them
// (docs/OPERATIONS.md, "Rotating the cluster key" says to add nodes before or after the window). A retired key is a
// derived key: it opens neither gossip nor sync.

// retiredKeysFile is the file in the data directory that keeps retired token keys.
const retiredKeysFile = "retired-token-keys.json"

// tokenKey is a token key; until, when set, is when a retired key stops verifying.
type tokenKey struct {
	key   []byte
	until time.Time
}

// tokenKeys is the key set tokens sign and verify with; never modified once built.
type tokenKeys struct {
	signKID string
	keys    map[string]tokenKey // kid → key
}

// newTokenKeys returns the set of clusterKeys' token keys (the first signs) and the
// retired ones not among them.
func newTokenKeys(clusterKeys [][]byte, retired []retiredKey) *tokenKeys {
	set := &tokenKeys{keys: make(map[string]tokenKey)}
	for i, ck := range clusterKeys {
		k := deriveKey(ck, purposeJWT)
		kid := keyID(k)
		if i == 0 {
			set.signKID = kid
		}
		set.keys[kid] = tokenKey{key: k}
	}
	for _, r := range retired {
		if kid := keyID(r.Key); set.keys[kid].key == nil {
			set.keys[kid] = tokenKey{key: r.Key, until: r.Until}
		}
	}
	return set
}

// verifying returns the key of kid to verify a token with at now, or an error.
func (s *tokenKeys) verifying(kid string, now time.Time) ([]byte, error) {
	k, ok := s.keys[kid]
	if !ok || !k.until.IsZero() && now.After(k.until) {
		return nil, errors.New("unknown key id")
	}
	return k.key, nil
}

// retired returns the retired keys still valid at now.
func (s *tokenKeys) retired(now time.Time) []retiredKey {
	var out []retiredKey
	for _, k := range s.keys {
		if !k.until.IsZero() && now.Before(k.until) {
			out = append(out, retiredKey{Key: k.key, Until: k.until})
		}
	}
	slices.SortFunc(out, func(a, b retiredKey) int { return a.Until.Compare(b.Until) })
	return out
}

// retiredKey is a retired token key as the file keeps it.
type retiredKey struct {
	Key   []byte    `json:"key"`
	Until time.Time `json:"until"`
}

// loadRetired adds the retired keys kept in dir that are still valid to the set.
func (t *tokens) loadRetired(dir string, clusterKeys [][]byte) error {
	b, err := os.ReadFile(filepath.Join(dir, retiredKeysFile)) // #nosec G304 -- in the node's data directory
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read retired token keys: %w", err)
	}
	var keys []retiredKey
	if err := json.Unmarshal(b, &keys); err != nil {
		return fmt.Errorf("%s: %w", retiredKeysFile, err)
	}
	now := t.now()
	keys = slices.DeleteFunc(keys, func(k retiredKey) bool { return len(k.Key) != 32 || !now.Before(k.Until) })
	t.set.Store(newTokenKeys(clusterKeys, keys))
	return nil
}

// rotate makes clusterKeys the keys tokens are signed (the first) and verified with, at
// once. The token key of every cluster key dropped is retired until keep from now (the
// longest a token it signed can live), and the retired keys are written to dir first: a
// failure to write them changes nothing. Cached verifications are dropped.
func (t *tokens) rotate(clusterKeys [][]byte, dir string, keep time.Duration) error {
	now := t.now()
	old := t.set.Load()
	retired := old.retired(now)
	for _, k := range old.keys {
		if k.until.IsZero() {
			retired = append(retired, retiredKey{Key: k.key, Until: now.Add(keep)})
		}
	}
	set := newTokenKeys(clusterKeys, retired)
	if err := writeRetired(dir, set.retired(now)); err != nil {
		return err
	}
	t.set.Store(set)
	t.mu.Lock()
	clear(t.cache)
	t.mu.Unlock()
	return nil
}

// writeRetired replaces the retired keys file in dir with keys, atomically.
func writeRetired(dir string, keys []retiredKey) error {
	path := filepath.Join(dir, retiredKeysFile)
	if len(keys) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove retired token keys: %w", err)
		}
		return nil
	}
	b, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, retiredKeysFile+".*")
	if err != nil {
		return fmt.Errorf("write retired token keys: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // after the rename, a no-op
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write retired token keys: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write retired token keys: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write retired token keys: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write retired token keys: %w", err)
	}
	return nil
}
