package api

import "time"

// JWKS is the body of GET /.well-known/jwks.json: the public keys session tokens are
// signed with, as a JSON Web Key Set (RFC 7517), newest first. A token's kid header names
// its key.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// JWK is one public signing key: an Ed25519 key (RFC 8037: kty OKP, crv Ed25519, x the
// public key in unpadded base64url) for alg EdDSA, use sig. Kid is the key's RFC 7638
// thumbprint.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// Token claims and header values of session tokens (docs/API.md, "Tokens").
const (
	TokenIssuer   = "sessiond"     // iss
	TokenAudience = "sessiond-api" // aud
	TokenAlg      = "EdDSA"        // alg of tokens a verifier outside sessiond can check
)

// SigningKey is one of the cluster's token signing keys as the admin routes show it
// (GET /v1/admin/keys, POST /v1/admin/keys/rotate), seen from the answering node.
type SigningKey struct {
	KID       string    `json:"kid"`
	Alg       string    `json:"alg"`    // EdDSA
	Status    string    `json:"status"` // KeySigning, KeyNext, KeyVerifying or KeyRetired
	CreatedAt time.Time `json:"created_at"`
	SignsFrom time.Time `json:"signs_from"` // when it starts (or started) signing
	// RetiresAt is when it stops verifying and leaves the JWKS; absent while no newer
	// key has taken over.
	RetiresAt *time.Time `json:"retires_at,omitempty"`
	// Private says whether the answering node can open its private key (a sealing under
	// one of its cluster keys).
	Private bool `json:"private"`
	// Sealings is how many cluster keys its private key is sealed under.
	Sealings int `json:"sealings"`
}

// Signing key statuses.
const (
	KeySigning   = "signing"   // the answering node signs new tokens with it
	KeyNext      = "next"      // published, signs from SignsFrom
	KeyVerifying = "verifying" // verifies its tokens until RetiresAt
	KeyRetired   = "retired"   // verifies nothing, no longer published
)

// SigningKeys is the body of GET /v1/admin/keys: the signing keys the answering node
// knows, newest first, and what it signs new session tokens with.
type SigningKeys struct {
	Keys []SigningKey `json:"keys"`
	// Alg is the algorithm of the session tokens the node issues now: EdDSA, or HS256
	// while a member cannot verify EdDSA (a rolling upgrade) or no key is usable yet.
	Alg string `json:"alg"`
	// Note says why the node issues HS256 tokens, when it does.
	Note string `json:"note,omitempty"`
}

// RotateKeyRequest is the body of POST /v1/admin/keys/rotate. AfterSeconds is how long
// after its creation the new key starts signing (it is published at once, so that
// verifiers holding a cached key set fetch it before they meet a token it signed);
// absent: RotateDefaultAfter. Retire, with AfterSeconds 0, names a key (its kid) to retire
// in the same write: its tokens stop verifying everywhere (a leaked signing key, replaced
// and ended in one step, which works also while the most keys verify that a rotation
// allows).
type RotateKeyRequest struct {
	AfterSeconds *int64 `json:"after_seconds,omitempty"`
	Retire       string `json:"retire,omitempty"`
}

// RotateDefaultAfter is the default RotateKeyRequest.AfterSeconds: the JWKS's max-age, so
// that every verifier's cached set holds the new key before it signs.
const RotateDefaultAfter = 300

// MaxRotateAfter bounds RotateKeyRequest.AfterSeconds (a day).
const MaxRotateAfter = 24 * 60 * 60

// RotateKeyResponse is the body of POST /v1/admin/keys/rotate (201): the new key, and the
// key it retired (RotateKeyRequest.Retire; absent when none was named). The retire route
// answers with the retired key as Key.
type RotateKeyResponse struct {
	Key     SigningKey  `json:"key"`
	Retired *SigningKey `json:"retired,omitempty"`
}
