package edge

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/sessiond/sessiond/edge/cluster"
)

// syncProtocols returns the sync protocol versions this node speaks (Config.SyncProtocolMax).
func (n *Node) syncProtocols() cluster.ProtocolRange {
	r := cluster.Supported()
	if n.cfg.SyncProtocolMax != 0 {
		r.Max = n.cfg.SyncProtocolMax
	}
	return r
}

// ReloadKeys makes keys the cluster keys (the first sends and signs, all are accepted),
// at once and without a restart — main calls it on SIGHUP with the re-read key file. It
// changes gossip's keyring (members are not dropped), the sync transport's identities
// (a peer holding none of keys can no longer sync, on new connections or open ones), the
// keys admin requests may be signed with (adminauth), the HS256 token keys — the token
// key of a cluster key dropped is retired, verifying the tokens it signed until they
// expire (see tokenkeys.go), so a rotation logs nobody out — and the cluster keys the
// signing keys are opened with and sealed under (each live signing key is sealed under
// every new one, in the background: see signkeys.go).
// The rotation procedure — add the new key everywhere, make it first everywhere, remove
// the old everywhere — is in docs/OPERATIONS.md, "Rotating the cluster key". It fails, changing nothing, on a key
// that is not 32 bytes, before Start, or when the retired token keys cannot be written.
// Safe to call while the node serves; calls must not overlap.
func (n *Node) ReloadKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("reload keys: no key")
	}
	for i, k := range keys {
		if len(k) != 32 {
			return fmt.Errorf("reload keys: key %d is %d bytes, want 32", i, len(k))
		}
	}
	if n.tokens == nil || n.transport == nil || n.membership == nil {
		return errors.New("reload keys: node not started")
	}
	var seeds, gossipKeys [][]byte
	for _, k := range keys {
		seeds = append(seeds, deriveKey(k, purposeSync))
		gossipKeys = append(gossipKeys, deriveKey(k, purposeGossip))
	}
	if err := n.tokens.rotate(keys, n.cfg.DataDir, n.cfg.SessionTTL+tokenLeeway); err != nil {
		return fmt.Errorf("reload keys: %w", err)
	}
	// Neither fails on keys of the right size, checked above.
	if err := n.transport.SetKeys(seeds); err != nil {
		return fmt.Errorf("reload keys: %w", err)
	}
	if err := n.membership.SetKeys(gossipKeys); err != nil {
		return fmt.Errorf("reload keys: %w", err)
	}
	n.admin.SetKeys(keys)          // admin requests (sessiond backup) are signed with any of them
	n.signing.setClusterKeys(keys) // signing keys are opened with them, and sealed under each
	set := n.tokens.set.Load()
	n.log.Info("cluster keys reloaded", "keys", len(keys), "signing_kid", set.signKID,
		slog.Int("retired_token_keys", len(set.retired(n.cfg.Now()))))
	return nil
}
