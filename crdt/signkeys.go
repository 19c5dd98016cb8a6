package crdt

import (
	"encoding/binary"
	"strings"
	"time"
)

// Signing keys: the Ed25519 keys session tokens are signed with, one cluster-wide record
// each, under SigningKeyPrefix (so in ClusterPartition, held by every node). The record
// holds the public key in the clear and the private key only sealed (the node seals it
// under a key derived from a cluster key; this package sees opaque bytes), once per
// cluster key it was sealed under. Which key signs, and when a key stops verifying, is
// decided from these records alone, the same way on every node (see package edge).
const (
	SigningKeyPrefix = ClusterPrefix + "signkey/" // g/signkey/<kid> → signing key record

	FieldSigningPublic = "public"       // FWW: the Ed25519 public key; its TS is the key's creation
	FieldSigningFrom   = "from"         // FWW: when the key starts signing, Unix nanoseconds
	FieldSignedUntil   = "signed_until" // Max: the latest a node reports having signed with it, Unix nanoseconds
	// FieldExpiresUntil (Max) is the latest expiry, Unix nanoseconds, of a token signed
	// with the key that outlives the usual token lifetime (an app's session of up to a
	// year), as a node reports it before it hands that token out.
	FieldExpiresUntil = "expires_until"
	// FieldRetired (Flag) retires the key at once, from the flag's time: an operator's
	// answer to a leaked key (its tokens stop verifying everywhere).
	FieldRetired = "retired"
	// SealedPrefix names one sealing of the private key: sealed/<seal id> (LWW), the id
	// naming the cluster key it was sealed under. A tombstone once the key is retired.
	SealedPrefix = "sealed/"
)

// SigningKeyKey returns the record key of the signing key kid.
func SigningKeyKey(kid string) string { return SigningKeyPrefix + kid }

// SigningKey is the typed view of a signing key record.
type SigningKey struct {
	KID     string
	Public  []byte    // aliases the Map
	Created Timestamp // when the public key was written
	From    time.Time // when it starts signing
	// SignedUntil is the latest time a node reported signing a token with the key after
	// a newer key had taken over (zero when none did).
	SignedUntil time.Time
	// ExpiresUntil is the latest expiry a node reported for a token signed with the key
	// that outlives the usual lifetime (zero when none did).
	ExpiresUntil time.Time
	// Retired is when an operator retired the key at once (zero: never).
	Retired time.Time
	Sealed  map[string][]byte // seal id → sealed private key; values alias the Map
}

// ReadSigningKey returns the typed view of the signing key record m.
func ReadSigningKey(kid string, m *Map) SigningKey {
	k := SigningKey{KID: kid}
	if f, ok := m.Field(FieldSigningPublic); ok && f.Kind == KindFWW {
		k.Public, k.Created = f.Value, f.TS
	}
	if v, ok := m.Get(FieldSigningFrom); ok && len(v) == 8 {
		k.From = time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC() // #nosec G115 -- written from an int64
	}
	if u := m.MaxOf(FieldSignedUntil); u > 0 {
		k.SignedUntil = time.Unix(0, u).UTC()
	}
	if u := m.MaxOf(FieldExpiresUntil); u > 0 {
		k.ExpiresUntil = time.Unix(0, u).UTC()
	}
	if ts, ok := m.Flag(FieldRetired); ok {
		k.Retired = ts.Time()
	}
	for name, f := range m.fields {
		if id, ok := strings.CutPrefix(name, SealedPrefix); ok && f.Kind == KindLWW && !f.Deleted {
			if k.Sealed == nil {
				k.Sealed = make(map[string][]byte)
			}
			k.Sealed[id] = f.Value
		}
	}
	return k
}

// NewSigningKey returns the record of a new signing key with public key public, created
// at ts, that starts signing at from.
func NewSigningKey(public []byte, from time.Time, ts Timestamp) Map {
	var m Map
	m.Claim(FieldSigningPublic, public, ts)
	m.Claim(FieldSigningFrom, binary.BigEndian.AppendUint64(nil, uint64(from.UnixNano())), ts) // #nosec G115 -- read back as int64
	return m
}

// SealSigningKey returns the update, at ts, that records the private key sealed under
// the cluster key named sealID.
func SealSigningKey(sealID string, sealed []byte, ts Timestamp) Map {
	var m Map
	m.Set(SealedPrefix+sealID, sealed, ts)
	return m
}

// UnsealSigningKey returns the update, at ts, that deletes the sealings named: a retired
// key's private half is kept nowhere.
func UnsealSigningKey(sealIDs []string, ts Timestamp) Map {
	var m Map
	for _, id := range sealIDs {
		m.Delete(SealedPrefix+id, ts)
	}
	return m
}

// SignedWith returns the update, at ts, that records a token signed with the key at
// until (the latest such time wins).
func SignedWith(until time.Time, ts Timestamp) Map {
	var m Map
	m.Raise(FieldSignedUntil, until.UnixNano(), ts)
	return m
}

// ExpiresWith returns the update, at ts, that records a token signed with the key that
// expires at until (the latest such expiry wins).
func ExpiresWith(until time.Time, ts Timestamp) Map {
	var m Map
	m.Raise(FieldExpiresUntil, until.UnixNano(), ts)
	return m
}

// RetireSigningKey returns the update, at ts, that retires the key at once.
func RetireSigningKey(ts Timestamp) Map {
	var m Map
	m.SetFlag(FieldRetired, ts)
	return m
}
