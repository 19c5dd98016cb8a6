package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
)

var b64 = base64.RawURLEncoding

// testJWK returns a fresh Ed25519 key and its JWK under kid.
func testJWK(t *testing.T, kid string) (ed25519.PrivateKey, api.JWK) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv, api.JWK{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(pub), Kid: kid, Alg: "EdDSA", Use: "sig"}
}

// forge builds a token from a header and claims, signed by sign over its first two parts.
func forge(t *testing.T, header, claims map[string]any, sign func([]byte) []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	return in + "." + b64.EncodeToString(sign([]byte(in)))
}

func TestVerifyToken(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	priv, jwk := testJWK(t, "k1")
	other, _ := testJWK(t, "k1")
	set := api.JWKS{Keys: []api.JWK{jwk}}
	ed := func(p ed25519.PrivateKey) func([]byte) []byte {
		return func(in []byte) []byte { return ed25519.Sign(p, in) }
	}
	hdr := func(alg, kid string) map[string]any { return map[string]any{"alg": alg, "typ": "JWT", "kid": kid} }
	good := func() map[string]any {
		return map[string]any{"iss": "sessiond", "aud": "sessiond-api", "sub": "u1", "sid": "s1", "jti": "s1",
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	}
	with := func(m map[string]any, k string, v any) map[string]any { m[k] = v; return m }
	without := func(m map[string]any, k string) map[string]any { delete(m, k); return m }
	valid := forge(t, hdr("EdDSA", "k1"), good(), ed(priv))

	c, err := client.VerifyToken(valid, set, now)
	if err != nil || c.UserID != "u1" || c.SessionID != "s1" || c.KeyID != "k1" || !c.ExpiresAt.Equal(now.Add(time.Hour)) || !c.IssuedAt.Equal(now) {
		t.Fatalf("VerifyToken = %+v, %v", c, err)
	}
	if _, err := client.VerifyToken(forge(t, hdr("EdDSA", "k1"), with(good(), "aud", []string{"x", "sessiond-api"}), ed(priv)), set, now); err != nil {
		t.Errorf("aud as an array naming the audience: %v", err)
	}
	x, _ := b64.DecodeString(jwk.X)
	hmacWith := func(key []byte) func([]byte) []byte {
		return func(in []byte) []byte { m := hmac.New(sha256.New, key); m.Write(in); return m.Sum(nil) }
	}
	rsa := jwk
	rsa.Kty, rsa.Kid = "RSA", "k2"
	for _, tc := range []struct {
		name  string
		token string
		keys  api.JWKS
		want  error
	}{
		{"ErrHS256WithOurKid", forge(t, hdr("HS256", "k1"), good(), hmacWith(x)), set, client.ErrTokenAlgorithm},
		{"ErrNone", forge(t, hdr("none", "k1"), good(), func([]byte) []byte { return nil }), set, client.ErrTokenAlgorithm},
		{"ErrUnknownKid", forge(t, hdr("EdDSA", "k9"), good(), ed(priv)), set, client.ErrTokenUnknownKey},
		{"ErrNoKid", forge(t, map[string]any{"alg": "EdDSA"}, good(), ed(priv)), set, client.ErrTokenUnknownKey},
		{"ErrNotOKP", forge(t, hdr("EdDSA", "k2"), good(), ed(priv)), api.JWKS{Keys: []api.JWK{rsa}}, client.ErrTokenUnknownKey},
		{"ErrOtherKeyUnderOurKid", forge(t, hdr("EdDSA", "k1"), good(), ed(other)), set, client.ErrTokenSignature},
		{"ErrTampered", strings.Replace(valid, ".", ".e30", 1), set, client.ErrTokenSignature},
		{"ErrExpired", forge(t, hdr("EdDSA", "k1"), with(good(), "exp", now.Add(-client.TokenLeeway).Unix()), ed(priv)), set, client.ErrTokenExpired},
		{"ErrNoExp", forge(t, hdr("EdDSA", "k1"), without(good(), "exp"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrNoIat", forge(t, hdr("EdDSA", "k1"), without(good(), "iat"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrIssuedAhead", forge(t, hdr("EdDSA", "k1"), with(good(), "iat", now.Add(time.Minute).Unix()), ed(priv)), set, client.ErrTokenClaims},
		{"ErrNotYetValid", forge(t, hdr("EdDSA", "k1"), with(good(), "nbf", now.Add(time.Minute).Unix()), ed(priv)), set, client.ErrTokenClaims},
		{"ErrIssuer", forge(t, hdr("EdDSA", "k1"), with(good(), "iss", "evil"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrAudience", forge(t, hdr("EdDSA", "k1"), with(good(), "aud", "sessiond-device"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrSidNotJti", forge(t, hdr("EdDSA", "k1"), with(good(), "jti", "s2"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrNoSub", forge(t, hdr("EdDSA", "k1"), without(good(), "sub"), ed(priv)), set, client.ErrTokenClaims},
		{"ErrStringExp", forge(t, hdr("EdDSA", "k1"), with(good(), "exp", "never"), ed(priv)), set, client.ErrTokenMalformed},
		{"ErrTwoParts", valid[:strings.LastIndex(valid, ".")], set, client.ErrTokenMalformed},
		{"ErrShortSignature", valid[:len(valid)-4], set, client.ErrTokenMalformed},
		{"ErrHuge", strings.Repeat("a", 9000) + ".b.c", set, client.ErrTokenMalformed},
		{"ErrEmptySet", valid, api.JWKS{}, client.ErrTokenUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := client.VerifyToken(tc.token, tc.keys, now); !errors.Is(err, tc.want) {
				t.Errorf("VerifyToken error = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestVerifyToken_Node: a node's token verifies with the key set it publishes, by the
// standard library alone.
func TestVerifyToken_Node(t *testing.T) {
	n := startNode(t)
	c := strictClient(t, n)
	ctx := context.Background()
	if _, err := c.Register(ctx, api.RegisterRequest{Username: "vera", Password: "a long passphrase"}); err != nil {
		t.Fatal(err)
	}
	login, err := c.Login(ctx, api.LoginRequest{Username: "vera", Password: "a long passphrase"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := c.JWKS(ctx)
	if err != nil || len(set.Keys) != 1 {
		t.Fatalf("JWKS = %+v, %v; want one key", set, err)
	}
	claims, err := client.VerifyToken(login.Token, set, time.Now())
	if err != nil || claims.UserID != login.Session.UserID || claims.SessionID != login.Session.ID || claims.KeyID != set.Keys[0].Kid ||
		claims.ExpiresAt.Unix() != login.Session.ExpiresAt.Unix() {
		t.Errorf("VerifyToken = %+v, %v; want the session %s of %s", claims, err, login.Session.ID, login.Session.UserID)
	}
	ks := c.KeySet()
	if claims, err := ks.Verify(ctx, login.Token); err != nil || claims.SessionID != login.Session.ID {
		t.Errorf("KeySet.Verify = %+v, %v", claims, err)
	}
	if _, err := ks.Verify(ctx, login.Device); err == nil {
		t.Errorf("a device token verified as a session token")
	}
}

// TestKeySet: the set is fetched on first use, again when a token names a kid it lacks
// (once per MinRefresh) and when older than MaxAge, and kept when a fetch fails.
func TestKeySet(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	p1, k1 := testJWK(t, "k1")
	p2, k2 := testJWK(t, "k2")
	var (
		fetches atomic.Int32
		keys    atomic.Pointer[api.JWKS]
		down    atomic.Bool
	)
	keys.Store(&api.JWKS{Keys: []api.JWK{k1}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/jwks.json" || r.Header.Get("Authorization") != "" {
			t.Errorf("request %s %s (Authorization %q)", r.Method, r.URL.Path, r.Header.Get("Authorization"))
		}
		fetches.Add(1)
		if down.Load() {
			http.Error(w, `{"error":{"code":"unavailable","message":"down"}}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(keys.Load())
	}))
	defer srv.Close()
	c, err := client.New(client.Config{Endpoints: []string{srv.URL}, MaxAttempts: 1, Token: "a user's token"})
	if err != nil {
		t.Fatal(err)
	}
	ks := c.KeySet()
	clock := now
	ks.Now = func() time.Time { return clock }
	ctx := context.Background()
	claims := map[string]any{"iss": "sessiond", "aud": "sessiond-api", "sub": "u", "sid": "s", "jti": "s", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	tok := func(p ed25519.PrivateKey, kid string) string {
		return forge(t, map[string]any{"alg": "EdDSA", "kid": kid}, claims, func(in []byte) []byte { return ed25519.Sign(p, in) })
	}
	verify := func(what, token string, wantErr error, wantFetches int32) {
		t.Helper()
		if _, err := ks.Verify(ctx, token); !errors.Is(err, wantErr) {
			t.Errorf("%s: Verify error = %v, want %v", what, err, wantErr)
		}
		if got := fetches.Load(); got != wantFetches {
			t.Errorf("%s: %d fetches, want %d", what, got, wantFetches)
		}
	}
	verify("first use", tok(p1, "k1"), nil, 1)
	verify("again", tok(p1, "k1"), nil, 1)
	keys.Store(&api.JWKS{Keys: []api.JWK{k2, k1}}) // a rotation
	clock = clock.Add(time.Minute)
	verify("a new key's token", tok(p2, "k2"), nil, 2)
	verify("a made-up kid right after", tok(p2, "k9"), client.ErrTokenUnknownKey, 2)
	clock = clock.Add(31 * time.Second)
	verify("a made-up kid after MinRefresh", tok(p2, "k9"), client.ErrTokenUnknownKey, 3)
	down.Store(true)
	clock = clock.Add(ks.MaxAge)
	verify("a stale set while the node is down", tok(p1, "k1"), nil, 4)
	verify("again within MinRefresh of the failure", tok(p1, "k1"), nil, 4)

	fresh := c.KeySet()
	if _, err := fresh.Verify(ctx, tok(p1, "k1")); err == nil || errors.Is(err, client.ErrTokenUnknownKey) {
		t.Errorf("no set and the node down: %v, want the fetch's error", err)
	}
}

// A backend that trusts sessiond's tokens without calling a node on every request: it
// keeps the cluster's key set and verifies each token's signature and claims locally.
func ExampleKeySet_Verify() {
	ctx := context.Background()
	c, err := client.New(client.Config{Endpoints: []string{endpoint}})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Register(ctx, api.RegisterRequest{Username: "dora", Password: "a long passphrase"})
	if err != nil && !errors.Is(err, client.ErrUsernameTaken) {
		log.Fatal(err)
	}
	login, err := c.Login(ctx, api.LoginRequest{Username: "dora", Password: "a long passphrase"})
	if err != nil {
		log.Fatal(err)
	}

	keys := c.KeySet() // one per process; safe for concurrent use
	claims, err := keys.Verify(ctx, login.Token)
	if err != nil {
		log.Fatal(err) // not a token of this cluster, or expired
	}
	fmt.Println(claims.UserID == login.Session.UserID, claims.SessionID == login.Session.ID)
	// Output: true true
}
