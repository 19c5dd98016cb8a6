package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/edge/api"
)

// JWKS returns the public keys session tokens are signed with (GET
// /.well-known/jwks.json), newest first. No token is sent.
func (c *Client) JWKS(ctx context.Context) (api.JWKS, error) {
	var out api.JWKS
	_, err := c.Do(ctx, Request{Method: http.MethodGet, Path: "/.well-known/jwks.json", NoAuth: true, Idempotent: true}, &out)
	return out, err
}

// TokenClaims is what a verified session token says.
type TokenClaims struct {
	UserID    string // sub: the user's (or, for the service API, the subject's) id
	SessionID string // sid, also jti
	KeyID     string // kid: the key that signed it
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Errors of VerifyToken. Each means the token is not to be trusted; ErrTokenUnknownKey
// may also mean that the key set is older than the token: fetch it again (KeySet does).
var (
	ErrTokenMalformed  = errors.New("sessiond token: malformed")
	ErrTokenAlgorithm  = errors.New("sessiond token: algorithm is not EdDSA")
	ErrTokenUnknownKey = errors.New("sessiond token: signed with a key not in the key set")
	ErrTokenSignature  = errors.New("sessiond token: bad signature")
	ErrTokenExpired    = errors.New("sessiond token: expired")
	ErrTokenClaims     = errors.New("sessiond token: claims are not a sessiond session token's")
)

// TokenLeeway is the clock skew VerifyToken allows on exp, iat and nbf, as nodes do.
const TokenLeeway = 5 * time.Second

// maxToken bounds the tokens VerifyToken reads; sessiond's are about 500 bytes.
const maxToken = 8 << 10

// VerifyToken checks, with the standard library alone, that token is a session token
// signed by one of keys (fetched with JWKS), at now: alg EdDSA (nothing else is
// accepted), the kid's key an Ed25519 signing key, the signature, iss and aud as
// docs/API.md gives them, exp (required) not passed and iat (required) not ahead, with
// TokenLeeway. It returns the claims, or an error wrapping one of the ErrToken values.
//
// A valid signature says that the cluster issued the token for that session and that it
// has not expired; it does not say that the session is still active: a session signed out
// or revoked keeps a valid signature until it expires. Where that matters, ask a node
// (GET /v1/sessions/current with the token), which checks the replicated session record.
func VerifyToken(token string, keys api.JWKS, now time.Time) (TokenClaims, error) {
	if len(token) > maxToken || strings.Count(token, ".") != 2 {
		return TokenClaims{}, ErrTokenMalformed
	}
	head, rest, _ := strings.Cut(token, ".")
	body, sig64, _ := strings.Cut(rest, ".")
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodePart(head, &h); err != nil {
		return TokenClaims{}, err
	}
	if h.Alg != api.TokenAlg {
		return TokenClaims{}, fmt.Errorf("%w: %q", ErrTokenAlgorithm, h.Alg)
	}
	i := slices.IndexFunc(keys.Keys, func(k api.JWK) bool { return k.Kid == h.Kid })
	if h.Kid == "" || i < 0 {
		return TokenClaims{}, fmt.Errorf("%w: kid %q", ErrTokenUnknownKey, h.Kid)
	}
	k := keys.Keys[i]
	x, err := base64.RawURLEncoding.DecodeString(k.X)
	if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "" && k.Alg != api.TokenAlg || k.Use != "" && k.Use != "sig" ||
		err != nil || len(x) != ed25519.PublicKeySize {
		return TokenClaims{}, fmt.Errorf("%w: kid %q is not an Ed25519 signing key", ErrTokenUnknownKey, h.Kid)
	}
	sig, err := base64.RawURLEncoding.DecodeString(sig64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return TokenClaims{}, ErrTokenMalformed
	}
	if !ed25519.Verify(ed25519.PublicKey(x), []byte(token[:len(head)+1+len(body)]), sig) {
		return TokenClaims{}, ErrTokenSignature
	}
	var c struct {
		Iss string          `json:"iss"`
		Aud json.RawMessage `json:"aud"`
		Sub string          `json:"sub"`
		Sid string          `json:"sid"`
		Jti string          `json:"jti"`
		Iat *json.Number    `json:"iat"`
		Exp *json.Number    `json:"exp"`
		Nbf *json.Number    `json:"nbf"`
	}
	if err := decodePart(body, &c); err != nil {
		return TokenClaims{}, err
	}
	if c.Iss != api.TokenIssuer || !audienceHas(c.Aud, api.TokenAudience) || c.Sub == "" || c.Sid == "" || c.Jti != c.Sid || c.Iat == nil || c.Exp == nil {
		return TokenClaims{}, ErrTokenClaims
	}
	iat, err1 := numericDate(*c.Iat)
	exp, err2 := numericDate(*c.Exp)
	if err := errors.Join(err1, err2); err != nil {
		return TokenClaims{}, fmt.Errorf("%w: %w", ErrTokenClaims, err)
	}
	if !now.Before(exp.Add(TokenLeeway)) {
		return TokenClaims{}, ErrTokenExpired
	}
	if iat.After(now.Add(TokenLeeway)) {
		return TokenClaims{}, fmt.Errorf("%w: issued in the future (check the clocks)", ErrTokenClaims)
	}
	if c.Nbf != nil {
		if nbf, err := numericDate(*c.Nbf); err != nil || nbf.After(now.Add(TokenLeeway)) {
			return TokenClaims{}, fmt.Errorf("%w: not valid yet", ErrTokenClaims)
		}
	}
	return TokenClaims{UserID: c.Sub, SessionID: c.Sid, KeyID: h.Kid, IssuedAt: iat, ExpiresAt: exp}, nil
}

// decodePart decodes one base64url part of a token into v.
func decodePart(part string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return ErrTokenMalformed
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrTokenMalformed, err)
	}
	return nil
}

// audienceHas reports whether a JWT aud claim (a string or an array of strings) names aud.
func audienceHas(raw json.RawMessage, aud string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one == aud
	}
	var many []string
	return json.Unmarshal(raw, &many) == nil && slices.Contains(many, aud)
}

// numericDate reads a JWT NumericDate: seconds since the epoch, possibly fractional.
func numericDate(n json.Number) (time.Time, error) {
	f, err := n.Float64()
	if err != nil || f < 0 || f > 1<<40 {
		return time.Time{}, fmt.Errorf("bad NumericDate %q", n)
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)).UTC(), nil
}

// KeySet keeps a cluster's key set for verifying session tokens without calling a node
// each time: fetched on first use, again once older than MaxAge, and again when a token
// names a kid it lacks (a rotation), at most once per MinRefresh so that made-up kids do
// not turn into requests. Safe for concurrent use.
type KeySet struct {
	c *Client
	// MaxAge is how long a fetched set is used; default 5 minutes (the nodes'
	// Cache-Control max-age). MinRefresh is the least time between fetches caused by an
	// unknown kid; default 30 s. Now is the clock; default time.Now. Set them before use.
	MaxAge, MinRefresh time.Duration
	Now                func() time.Time

	mu              sync.Mutex
	set             api.JWKS
	fetched, failed time.Time
}

// KeySet returns a KeySet that fetches through c.
func (c *Client) KeySet() *KeySet {
	return &KeySet{c: c, MaxAge: api.RotateDefaultAfter * time.Second, MinRefresh: 30 * time.Second, Now: time.Now}
}

// Verify verifies token (VerifyToken) with the key set, fetching it when it has none,
// when it is older than MaxAge, and when the token's kid is not in it and the last fetch
// is older than MinRefresh. A fetch that fails is returned as its error (the client's
// *Error or *TransportError) when there is no set to use.
func (k *KeySet) Verify(ctx context.Context, token string) (TokenClaims, error) {
	set, err := k.get(ctx, false)
	if err != nil {
		return TokenClaims{}, err
	}
	claims, err := VerifyToken(token, set, k.Now())
	if errors.Is(err, ErrTokenUnknownKey) {
		if set, ferr := k.get(ctx, true); ferr == nil {
			claims, err = VerifyToken(token, set, k.Now())
		}
	}
	return claims, err
}

// get returns the key set, fetched again when it is stale, or when refresh is set and
// the last fetch is older than MinRefresh. After a failed fetch, the set in hand is used
// without trying again for MinRefresh. Calls wait for a fetch in progress.
func (k *KeySet) get(ctx context.Context, refresh bool) (api.JWKS, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.Now()
	age := now.Sub(k.fetched)
	if !k.fetched.IsZero() && (age < k.MaxAge && (!refresh || age < k.MinRefresh) || now.Sub(k.failed) < k.MinRefresh) {
		return k.set, nil
	}
	set, err := k.c.JWKS(ctx)
	if err != nil {
		if !k.fetched.IsZero() {
			k.failed = now
			return k.set, nil // the set in hand still verifies what it can
		}
		return api.JWKS{}, err
	}
	k.set, k.fetched = set, now
	return set, nil
}
