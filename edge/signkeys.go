package edge

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// Signing keys: session tokens are signed with Ed25519 (EdDSA) keys that any backend can
// verify from the public keys GET /.well-known/jwks.json publishes. Each key is a
// cluster-wide replicated record (crdt.SigningKeyKey, in crdt.ClusterPartition, which
// every node holds) with the public key in the clear and the private key sealed — XChaCha20-
// Poly1305 under a key derived from a cluster key (purposeSeal), the record's kid as
// associated data — once for each cluster key some node holds. The rules, decided from the
// records alone and so the same on every node:
//
//   - A key's kid is its RFC 7638 JWK thumbprint (thumbprint): a record whose key does not
//     match its public key is ignored.
//   - Keys are ordered newest first by creation timestamp (HLC), then by kid. The key that
//     signs is the newest one whose start (From) has come and whose private key this node
//     can open: two nodes that each created a key at once (a fresh cluster) agree on the
//     newer one, and the other keeps verifying.
//   - A key is superseded once a newer key starts signing (the earliest From of the newer
//     keys). It then verifies until the last token it signed has expired — lifetime (the
//     usual longest a token lives: --session-ttl, plus the leeway) after the later of its
//     supersession and the latest time a node reports having signed with it
//     (crdt.FieldSignedUntil: a node that signed with it after it was superseded, because
//     it had not yet heard of the newer key, says so), or, if later, the leeway after the
//     latest expiry a node reports for a token of the key that outlives that lifetime (an
//     app's session, up to a year: crdt.FieldExpiresUntil, written before the token is
//     handed out; see signing.outlives) — and then leaves the JWKS and stops verifying
//     ("retired"). Its sealings are deleted then.
//   - An operator may retire a superseded key at once (crdt.FieldRetired: a leaked key):
//     from the moment its record carries the flag it verifies nowhere, whatever the
//     flag's time (which is only shown), and it no longer counts against the bound on
//     keys that verify (maxLiveKeys), so a retire makes room for a rotation. A rotation
//     may retire a key it names in the same write: a leaked key that signs now is
//     replaced and ended in one step, also at the bound. Rotations are also bounded in
//     rate (maxRotations), since key records are kept for good.
//   - Every node verifies with every key that is not retired. Verification needs only the
//     public key, never a cluster key.
//
// At a cluster key rotation (SIGHUP; docs/OPERATIONS.md), every node seals each live key's
// private half under every cluster key it holds that the record lacks a sealing for
// (signing.maintain), so once step 1 of the procedure (the new key added everywhere) is
// done, every key is sealed under the new cluster key too, and removing the old one (step
// 3) loses nothing. A sealing under a removed cluster key stays in the record until the key
// retires: whoever holds that cluster key and a copy of the data can open it, which is why
// OPERATIONS.md says to rotate the signing key too after removing a cluster key that leaked.

const (
	purposeSeal = "sessiond/signing-key/v1" // derives the key that seals signing keys

	algEdDSA = "EdDSA"
	// maxRingKeys bounds the signing keys a node keeps in its ring: the newest ones, and
	// beyond them only those that still verify (at most maxLiveKeys: a rotation is
	// refused while that many do).
	maxRingKeys = 64
	maxLiveKeys = 32
	// maxKeyRecords bounds the signing key records a node reads to find the newest
	// maxRingKeys (records are read in kid order, not by age, and are never deleted: a
	// retired key's record keeps its public key). 4,096 rotations: more than a cluster
	// rotating every day makes in ten years.
	maxKeyRecords = 4096
	// maxSealed bounds the sealings of one key a node reads (one per cluster key).
	maxSealed     = 16
	thumbprintLen = 43 // base64url of a SHA-256 sum, unpadded
)

// thumbprint returns the RFC 7638 thumbprint of an Ed25519 public key's JWK: the kid.
func thumbprint(pub ed25519.PublicKey) string {
	// The required members in lexicographic order, no whitespace (RFC 7638, section 3.2).
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// okpKID reports whether kid has the form of a signing key's kid (a thumbprint); the
// token keys derived from cluster keys have 12 hex digits.
func okpKID(kid string) bool {
	if len(kid) != thumbprintLen {
		return false
	}
	for i := range len(kid) {
		c := kid[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// sealID names the key derived from clusterKey that seals signing keys, without revealing
// it: a sealing's field name.
func sealID(clusterKey []byte) string { return keyID(deriveKey(clusterKey, purposeSeal)) }

// sealAAD binds a sealing to its key's kid: it cannot be moved to another record.
func sealAAD(kid string) []byte { return []byte("sessiond signing key " + kid) }

// seal returns the private key's seed sealed under clusterKey for kid: a 24-byte random
// nonce followed by the XChaCha20-Poly1305 ciphertext.
func seal(clusterKey []byte, kid string, priv ed25519.PrivateKey) []byte {
	aead, err := chacha20poly1305.NewX(deriveKey(clusterKey, purposeSeal))
	if err != nil { // only for a key of the wrong size; derived keys are 32 bytes
		panic(err)
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+ed25519.SeedSize+aead.Overhead())
	_, _ = rand.Read(nonce) // never fails (crypto/rand)
	return aead.Seal(nonce, nonce, priv.Seed(), sealAAD(kid))
}

// open returns the private key of the record k if one of its sealings opens under one of
// clusterKeys and matches its public key.
func open(clusterKeys [][]byte, k crdt.SigningKey) (ed25519.PrivateKey, bool) {
	for _, ck := range clusterKeys {
		sealed, ok := k.Sealed[sealID(ck)]
		if !ok || len(sealed) != chacha20poly1305.NonceSizeX+ed25519.SeedSize+chacha20poly1305.Overhead {
			continue
		}
		aead, err := chacha20poly1305.NewX(deriveKey(ck, purposeSeal))
		if err != nil {
			continue
		}
		seed, err := aead.Open(nil, sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:], sealAAD(k.KID))
		if err != nil {
			continue
		}
		priv := ed25519.NewKeyFromSeed(seed)
		if pub, _ := priv.Public().(ed25519.PublicKey); pub.Equal(ed25519.PublicKey(k.Public)) {
			return priv, true
		}
	}
	return nil, false
}

// newKey is a new signing key, before its record is written.
type newKey struct {
	kid    string
	public ed25519.PublicKey
	sealed map[string][]byte // seal id → sealed private key
}

// generateKey returns a new key pair with its private key sealed under each of
// clusterKeys.
func generateKey(clusterKeys [][]byte) newKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil { // crypto/rand never fails
		panic(err)
	}
	k := newKey{kid: thumbprint(pub), public: pub, sealed: make(map[string][]byte, len(clusterKeys))}
	for _, ck := range clusterKeys {
		k.sealed[sealID(ck)] = seal(ck, k.kid, priv)
	}
	return k
}

// record returns k's record, created at ts and signing from from.
func (k newKey) record(from time.Time, ts crdt.Timestamp) crdt.Map {
	m := crdt.NewSigningKey(k.public, from, ts)
	for id, sealed := range k.sealed {
		m.Merge(crdt.SealSigningKey(id, sealed, ts))
	}
	return m
}

// signKey is a signing key as this node knows it; never modified once in a ring.
type signKey struct {
	kid     string
	public  ed25519.PublicKey
	private ed25519.PrivateKey // nil: no sealing this node can open
	created crdt.Timestamp
	from    time.Time
	// signedUntil: the latest a node reported signing with it (crdt.FieldSignedUntil).
	signedUntil time.Time
	// expiresUntil: the latest expiry a node reported for a token of it that outlives
	// the usual lifetime (crdt.FieldExpiresUntil).
	expiresUntil time.Time
	// retiredAt: when an operator retired it at once (crdt.FieldRetired); zero: never.
	retiredAt time.Time
	sealed    []string // the seal ids of its sealings, sorted
	// superseded is when the first newer key starts signing; zero: none newer (current).
	superseded time.Time
	// retires is when it stops verifying; zero while current.
	retires time.Time
}

// liveAt reports whether k verifies at now.
func (k *signKey) liveAt(now time.Time) bool {
	return k.retiredAt.IsZero() && (k.retires.IsZero() || now.Before(k.retires))
}

// keyRing is the set of signing keys a node knows, built from their records by
// newKeyRing; never modified once built, so it is read without locks.
type keyRing struct {
	keys  map[string]*signKey
	order []*signKey // newest first: by creation timestamp, then kid
}

// newKeyRing builds the ring of the signing key records recs (crdt.ReadSigningKey views),
// opening private keys with clusterKeys; lifetime is the usual longest a token lives (a
// longer-lived token's expiry is in its key's record); keys beyond the newest maxRingKeys
// are kept only while they verify at now. Records
// that are malformed (no public key of the right size, a kid that is not its thumbprint)
// are left out and returned as problems, for the caller to log.
func newKeyRing(recs []crdt.SigningKey, clusterKeys [][]byte, lifetime time.Duration, now time.Time) (*keyRing, []error) {
	r := &keyRing{keys: make(map[string]*signKey, len(recs))}
	var problems []error
	for _, rec := range recs {
		if len(rec.Public) != ed25519.PublicKeySize || rec.Created.IsZero() {
			problems = append(problems, fmt.Errorf("signing key %q: no valid public key", rec.KID))
			continue
		}
		pub := ed25519.PublicKey(slices.Clone(rec.Public))
		if thumbprint(pub) != rec.KID {
			problems = append(problems, fmt.Errorf("signing key %q: kid is not the public key's thumbprint", rec.KID))
			continue
		}
		k := &signKey{kid: rec.KID, public: pub, created: rec.Created, from: rec.From, signedUntil: rec.SignedUntil, expiresUntil: rec.ExpiresUntil, retiredAt: rec.Retired}
		if k.from.IsZero() {
			k.from = rec.Created.Time()
		}
		if len(rec.Sealed) <= maxSealed {
			k.private, _ = open(clusterKeys, rec)
		}
		for id := range rec.Sealed {
			k.sealed = append(k.sealed, id)
		}
		slices.Sort(k.sealed)
		r.keys[k.kid] = k
		r.order = append(r.order, k)
	}
	slices.SortFunc(r.order, func(a, b *signKey) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return strings.Compare(b.kid, a.kid)
	})
	// Walking from the newest, track the earliest start of the keys newer than each. A
	// key an operator retired before it started never signs, so it replaces no older key.
	var first time.Time
	for _, k := range r.order {
		if !first.IsZero() {
			k.superseded = first
			last := first
			if k.signedUntil.After(last) {
				last = k.signedUntil
			}
			k.retires = last.Add(lifetime)
			if e := k.expiresUntil.Add(tokenLeeway); e.After(k.retires) {
				k.retires = e
			}
		}
		if !k.retiredAt.IsZero() && (k.retires.IsZero() || k.retiredAt.Before(k.retires)) {
			k.retires = k.retiredAt
		}
		if !k.retiredAt.IsZero() && !k.retiredAt.After(k.from) {
			continue
		}
		if first.IsZero() || k.from.Before(first) {
			first = k.from
		}
	}
	// The newest maxRingKeys, and any older key that still verifies (an app's
	// long-lived token needs it; the rotation bound keeps those few).
	if len(r.order) > maxRingKeys {
		kept := r.order[:maxRingKeys]
		for _, k := range r.order[maxRingKeys:] {
			if k.liveAt(now) {
				kept = append(kept, k)
			} else {
				delete(r.keys, k.kid)
			}
		}
		clear(r.order[len(kept):])
		r.order = kept
	}
	return r, problems
}

// signer returns the key this node signs with at now, or nil when it can open none.
func (r *keyRing) signer(now time.Time) *signKey {
	if r == nil {
		return nil
	}
	for _, k := range r.order {
		if k.private != nil && !k.from.After(now) && k.liveAt(now) {
			return k
		}
	}
	return nil
}

// usable reports whether the ring holds a key this node can sign with at now or later:
// one it can open that is not retired.
func (r *keyRing) usable(now time.Time) bool {
	if r == nil {
		return false
	}
	for _, k := range r.order {
		if k.private != nil && k.liveAt(now) {
			return true
		}
	}
	return false
}

// has reports whether kid is in the ring, retired or not.
func (r *keyRing) has(kid string) bool {
	if r == nil {
		return false
	}
	_, ok := r.keys[kid]
	return ok
}

// verifying returns the public key of kid at now, if it is in the ring and not retired.
func (r *keyRing) verifying(kid string, now time.Time) (ed25519.PublicKey, bool) {
	if r == nil {
		return nil, false
	}
	k, ok := r.keys[kid]
	if !ok || !k.liveAt(now) {
		return nil, false
	}
	return k.public, true
}

// live returns the keys that verify at now, newest first.
func (r *keyRing) live(now time.Time) []*signKey {
	if r == nil {
		return nil
	}
	var out []*signKey
	for _, k := range r.order {
		if k.liveAt(now) {
			out = append(out, k)
		}
	}
	return out
}

// createdSince returns the keys created at or after t, newest first.
func (r *keyRing) createdSince(t time.Time) []*signKey {
	if r == nil {
		return nil
	}
	var out []*signKey
	for _, k := range r.order {
		if k.created.Time().Before(t) {
			break // newest first
		}
		out = append(out, k)
	}
	return out
}

// jwks returns the JSON Web Key Set of the keys that verify at now, newest first
// (RFC 7517; OKP keys as RFC 8037 describes them).
func (r *keyRing) jwks(now time.Time) api.JWKS {
	set := api.JWKS{Keys: []api.JWK{}}
	for _, k := range r.live(now) {
		set.Keys = append(set.Keys, api.JWK{
			Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k.public),
			Kid: k.kid, Alg: algEdDSA, Use: "sig",
		})
	}
	return set
}

// status returns what k is at now in this ring, for the admin routes.
func (r *keyRing) status(k *signKey, now time.Time) string {
	switch {
	case !k.liveAt(now):
		return api.KeyRetired
	case r.signer(now) == k:
		return api.KeySigning
	case k.from.After(now) && (k.superseded.IsZero() || k.superseded.After(k.from)):
		return api.KeyNext // it will sign: no newer key starts before it
	}
	return api.KeyVerifying
}

// errTooManyKeys refuses a rotation while maxLiveKeys keys still verify.
var errTooManyKeys = errors.New("too many signing keys still verifying")
