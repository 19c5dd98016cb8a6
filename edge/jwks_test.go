package edge

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"

	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// fetchJWKS gets a node's key set as any backend would.
func fetchJWKS(tb testing.TB, c *testClient) api.JWKS {
	tb.Helper()
	resp, body := c.do("GET", jwksPath, "", nil)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %s: %d %s", jwksPath, resp.StatusCode, body)
	}
	var set api.JWKS
	if err := json.Unmarshal(body, &set); err != nil {
		tb.Fatalf("GET %s: %s: %v", jwksPath, body, err)
	}
	return set
}

// keyfuncFromJWKS is what a backend outside sessiond writes: a golang-jwt keyfunc that
// finds the token's kid in a fetched key set and decodes the key with the standard
// library. It shares nothing with the node's verifier.
func keyfuncFromJWKS(set api.JWKS) jwt.Keyfunc {
	return func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		for _, k := range set.Keys {
			if k.Kid != kid {
				continue
			}
			if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "EdDSA" || k.Use != "sig" {
				return nil, fmt.Errorf("key %s: not an Ed25519 signing key: %+v", kid, k)
			}
			x, err := base64.RawURLEncoding.DecodeString(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("key %s: bad x", kid)
			}
			return ed25519.PublicKey(x), nil
		}
		return nil, fmt.Errorf("kid %q not in the key set", kid)
	}
}

// verifyOutside verifies tok as a backend would, with the key set set: EdDSA only, the
// issuer and audience docs/API.md gives, exp required.
func verifyOutside(set api.JWKS, tok string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	_, err := jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer(api.TokenIssuer),
		jwt.WithAudience(api.TokenAudience), jwt.WithExpirationRequired(), jwt.WithIssuedAt()).
		ParseWithClaims(tok, claims, keyfuncFromJWKS(set))
	return claims, err
}

// adminDo sends an admin request signed with key; body is sent as it is if it is a
// []byte, else as its JSON.
func adminDo(c *testClient, key []byte, method, path string, body any) (*http.Response, []byte) {
	c.tb.Helper()
	return adminDoAt(c, key, time.Now(), method, path, body)
}

// adminDoAt is adminDo signing the request at at: for a node on a fake clock.
func adminDoAt(c *testClient, key []byte, at time.Time, method, path string, body any) (*http.Response, []byte) {
	c.tb.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(body); err != nil {
			c.tb.Fatal(err)
		}
	}
	var send any
	if raw != nil {
		send = raw
	}
	return c.do(method, path, "", send, "Authorization", adminauth.Sign(key, c.node, method, path, raw, at))
}

// TestJWKS: a node publishes its signing keys, and a backend that only fetched them
// verifies the node's tokens with its own JWT library.
func TestJWKS(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "jwks-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")

	resp, body := c.do("GET", jwksPath, "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", jwksPath, resp.StatusCode, body)
	}
	for h, want := range map[string]string{"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*", "Content-Type": "application/json", "X-Served-By": "jwks-0"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	etag := resp.Header.Get("ETag")
	var set api.JWKS
	if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("key set %s: %v; want one key", body, err)
	}
	k := set.Keys[0]
	if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "EdDSA" || k.Use != "sig" || k.Kid != tokenHeader(t, tok)["kid"] {
		t.Errorf("key %+v; want an Ed25519 signing key named by the token's kid %v", k, tokenHeader(t, tok)["kid"])
	}
	// No private part: the object has exactly the public members.
	var raw struct{ Keys []map[string]any }
	json.Unmarshal(body, &raw)
	if len(raw.Keys[0]) != 6 || raw.Keys[0]["d"] != nil {
		t.Errorf("published key %v: want kty, crv, x, kid, alg, use only", raw.Keys[0])
	}

	t.Run("VerifiedOutside", func(t *testing.T) {
		claims, err := verifyOutside(set, tok)
		if err != nil {
			t.Fatalf("a backend verifying with the JWKS: %v", err)
		}
		if claims["sid"] == "" || claims["sub"] == "" || claims["sid"] != claims["jti"] {
			t.Errorf("claims %v: want sub, and sid equal to jti", claims)
		}
		if _, err := verifyOutside(set, tamper(t, tok)); err == nil {
			t.Errorf("a tampered token verified outside")
		}
		if _, err := verifyOutside(api.JWKS{}, tok); err == nil {
			t.Errorf("verified with an empty key set")
		}
	})
	t.Run("NotModified", func(t *testing.T) {
		resp, body := c.do("GET", jwksPath, "", nil, "If-None-Match", `W/"other", `+etag)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("If-None-Match with the ETag: %d %q, want 304 and no body", resp.StatusCode, body)
		}
		if resp, _ := c.do("GET", jwksPath, "", nil, "If-None-Match", `"other"`); resp.StatusCode != http.StatusOK {
			t.Errorf("If-None-Match with another ETag: %d, want 200", resp.StatusCode)
		}
	})
	t.Run("ErrMethod", func(t *testing.T) {
		resp, _ := c.do("POST", jwksPath, "", "{}")
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d", jwksPath, resp.StatusCode)
		}
	})
}

// TestAdmin_Keys: the admin routes list the signing keys and rotate them; a rotation
// publishes the new key at once, signs with it from its start, and the old key's tokens
// keep working.
func TestAdmin_Keys(t *testing.T) {
	n := MustStartNode(t, testConfig(t, "keys-0"))
	c := newTestClient(t, n)
	old := signUp(t, c, "alice")
	oldKid := tokenHeader(t, old)["kid"]

	var list api.SigningKeys
	resp, body := adminDo(c, testKey, "GET", "/v1/admin/keys", nil)
	if err := json.Unmarshal(body, &list); resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	if len(list.Keys) != 1 || list.Keys[0].KID != oldKid || list.Keys[0].Status != api.KeySigning || !list.Keys[0].Private ||
		list.Keys[0].Sealings != 1 || list.Keys[0].RetiresAt != nil || list.Alg != "EdDSA" {
		t.Errorf("list = %+v; want the one key signing", list)
	}

	// A rotation published ahead of its start: the old key still signs meanwhile.
	var rotated api.RotateKeyResponse
	resp, body = adminDo(c, testKey, "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 3600})
	if err := json.Unmarshal(body, &rotated); resp.StatusCode != http.StatusCreated || err != nil {
		t.Fatalf("rotate: %d %s", resp.StatusCode, body)
	}
	next := rotated.Key
	if next.Status != api.KeyNext || next.KID == oldKid || next.SignsFrom.Sub(next.CreatedAt).Round(time.Second) != time.Hour {
		t.Errorf("rotated key %+v: want next, signing an hour after its creation", next)
	}
	if set := fetchJWKS(t, c); len(set.Keys) != 2 || set.Keys[0].Kid != next.KID {
		t.Errorf("key set after the rotation: %+v; want the new key first, published at once", set)
	}
	if kid := tokenHeader(t, signUp(t, c, "bob"))["kid"]; kid != oldKid {
		t.Errorf("a token before the new key's start: kid %v, want the old %v", kid, oldKid)
	}

	// One that starts at once.
	resp, body = adminDo(c, testKey, "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 0})
	if err := json.Unmarshal(body, &rotated); resp.StatusCode != http.StatusCreated || err != nil || rotated.Key.Status != api.KeySigning {
		t.Fatalf("rotate now: %d %s", resp.StatusCode, body)
	}
	fresh := signUp(t, c, "carol")
	if kid := tokenHeader(t, fresh)["kid"]; kid != rotated.Key.KID {
		t.Errorf("a token after the rotation: kid %v, want %s", kid, rotated.Key.KID)
	}
	set := fetchJWKS(t, c)
	for _, tok := range []string{old, fresh} {
		if resp, body := c.do("GET", "/v1/sessions/current", tok, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("token of kid %v after the rotation: %d %s", tokenHeader(t, tok)["kid"], resp.StatusCode, body)
		}
		if _, err := verifyOutside(set, tok); err != nil {
			t.Errorf("token of kid %v verified outside: %v", tokenHeader(t, tok)["kid"], err)
		}
	}
	resp, body = adminDo(c, testKey, "GET", "/v1/admin/keys", nil)
	if err := json.Unmarshal(body, &list); resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	var statuses []string
	for _, k := range list.Keys {
		statuses = append(statuses, k.Status)
		if k.Status == api.KeyVerifying && (k.RetiresAt == nil || !k.RetiresAt.After(time.Now().Add(n.cfg.SessionTTL-time.Minute))) {
			t.Errorf("superseded key %s retires at %v; want a session lifetime from now", k.KID, k.RetiresAt)
		}
	}
	if !slices.Equal(statuses, []string{api.KeySigning, api.KeyVerifying, api.KeyVerifying}) {
		t.Errorf("statuses %q, want the newest signing and the others verifying", statuses)
	}

	for _, tc := range []struct {
		name   string
		key    []byte
		token  string
		method string
		path   string
		body   any
		status int
		code   string
	}{
		{name: "ErrNegative", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after_seconds": -1}, status: 400, code: "invalid_argument"},
		{name: "ErrRetireLater", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"retire": strings.Repeat("A", 43)}, status: 400, code: "invalid_argument"},
		{name: "ErrRetireNotAKid", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after_seconds": 0, "retire": "nope"}, status: 400, code: "invalid_argument"},
		{name: "ErrRetireUnknown", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after_seconds": 0, "retire": strings.Repeat("A", 43)}, status: 404, code: "not_found"},
		{name: "ErrTooLate", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after_seconds": api.MaxRotateAfter + 1}, status: 400, code: "invalid_argument"},
		{name: "ErrUnknownField", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after": 1}, status: 400, code: "invalid_argument"},
		{name: "ErrNotANumber", key: testKey, method: "POST", path: "/v1/admin/keys/rotate", body: map[string]any{"after_seconds": "soon"}, status: 400, code: "invalid_argument"},
		{name: "ErrWrongClusterKey", key: otherKey, method: "POST", path: "/v1/admin/keys/rotate", status: 401, code: "unauthorized"},
		{name: "ErrUserToken", token: fresh, method: "POST", path: "/v1/admin/keys/rotate", status: 403, code: "forbidden"},
		{name: "ErrListUserToken", token: fresh, method: "GET", path: "/v1/admin/keys", status: 403, code: "forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var body []byte
			if tc.token != "" {
				resp, body = c.do(tc.method, tc.path, tc.token, tc.body)
			} else {
				resp, body = adminDo(c, tc.key, tc.method, tc.path, tc.body)
			}
			wantError(t, resp, body, tc.status, tc.code)
		})
	}
}

// TestSigningKeys_Bounds: rotations are bounded by the keys that verify (32; a retired
// key no longer counts, so a retire makes room) and by the keys created within 24 hours
// (32; retires make no room there, since key records are kept for good and a loop of
// rotate-and-retire would otherwise use up a cluster's rotations in minutes: found by an
// outside review); a rotation that names the leaked key that signs now retires it in the
// same write, also at the bound; the key that signs now, or did until less than
// --max-skew ago, is not retired alone.
func TestSigningKeys_Bounds(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "bounds-0")
	cfg.Now = clock.Now
	cfg.SessionTTL = 7 * 24 * time.Hour // replaced keys verify all week
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	rotate := func(body map[string]any) (*http.Response, []byte) {
		t.Helper()
		if body == nil {
			return adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/rotate", nil) // no body
		}
		return adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/rotate", body)
	}
	mustRotate := func(body map[string]any) api.RotateKeyResponse {
		t.Helper()
		resp, b := rotate(body)
		var out api.RotateKeyResponse
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &out) != nil {
			t.Fatalf("rotate %v: %d %s", body, resp.StatusCode, b)
		}
		return out
	}
	now := map[string]any{"after_seconds": 0}
	retire := func(kid string) (*http.Response, []byte) {
		return adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+kid+"/retire", nil)
	}
	signer := func() string { return n.tokens.ring.Load().signer(clock.Now()).kid }

	// The key that signed until a moment ago is not retired alone. (Created: 2.)
	first := signer()
	mustRotate(now)
	resp, body := retire(first)
	wantError(t, resp, body, http.StatusConflict, "conflict")
	if !strings.Contains(string(body), "--retire "+first) {
		t.Errorf("the refusal does not say how to retire it: %s", body)
	}
	// A key that has not started signing (a next key) is retired alone, and a rotation
	// that retires one signs at once (found by the second review). (Created: 5; verify: 3.)
	next := mustRotate(map[string]any{"after_seconds": 3600}).Key.KID
	if resp, body := retire(next); resp.StatusCode != http.StatusOK {
		t.Errorf("retire a next key: %d %s", resp.StatusCode, body)
	}
	// Once its start has passed, the key that signs is still the one before it, which
	// the retired next key did not replace (found by the third review: the guard let it
	// be retired alone, and the node went back to signing with the key before); the
	// retired key is returned as it is.
	clock.Add(time.Hour + 2*cfg.MaxSkew)
	resp, body = retire(signer())
	wantError(t, resp, body, http.StatusConflict, "conflict")
	if resp, body := retire(next); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"status":"retired"`) {
		t.Errorf("retire the retired next key again: %d %s", resp.StatusCode, body)
	}
	next = mustRotate(map[string]any{"after_seconds": 3600}).Key.KID
	if r := mustRotate(map[string]any{"after_seconds": 0, "retire": next}); r.Key.SignsFrom.After(clock.Now()) {
		t.Errorf("a rotation that retires a next key signs from %s, want at once", r.Key.SignsFrom)
	}
	clock.Add(2 * cfg.MaxSkew)

	// Rate: 32 keys created within 24 h, however many were retired. (Created: 23; verify: 21.)
	var kids []string
	for range 18 {
		kids = append(kids, mustRotate(now).Key.KID)
	}
	clock.Add(2 * cfg.MaxSkew)
	for _, kid := range append([]string{first}, kids[:10]...) { // verify: 10
		if resp, body := retire(kid); resp.StatusCode != http.StatusOK {
			t.Fatalf("retire %s: %d %s", kid, resp.StatusCode, body)
		}
	}
	for range 32 - 23 { // created: 32; verify: 19
		mustRotate(now)
	}
	resp, body = rotate(nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if !strings.Contains(string(body), "created within") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the refusal (Retry-After %q) does not say why: %s", resp.Header.Get("Retry-After"), body)
	}
	// After such a day the key that signs may still leak: a rotation that retires it has
	// room of its own (found by the second review of this bound).
	leakedToday := signer()
	if r := mustRotate(map[string]any{"after_seconds": 0, "retire": leakedToday}); r.Retired == nil || r.Retired.KID != leakedToday {
		t.Errorf("an emergency rotation after 32 in a day retired %+v, want %s", r.Retired, leakedToday)
	}

	// A day on: the keys that verify bound it (19 now).
	clock.Add(24*time.Hour + time.Minute)
	for range maxLiveKeys - 19 {
		mustRotate(now)
	}
	resp, body = rotate(nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if !strings.Contains(string(body), "still verify") || !strings.Contains(string(body), "retire") {
		t.Errorf("the refusal does not say how to make room: %s", body)
	}
	set := fetchJWKS(t, c)
	if len(set.Keys) != maxLiveKeys {
		t.Fatalf("%d keys published, want %d", len(set.Keys), maxLiveKeys)
	}
	// Retiring a replaced key makes room for one rotation (review F6: retired keys used
	// to count until they would have retired by themselves, so with long-lived app
	// sessions even an emergency rotation was refused for months).
	clock.Add(2 * cfg.MaxSkew)
	if resp, body := retire(set.Keys[len(set.Keys)-1].Kid); resp.StatusCode != http.StatusOK {
		t.Fatalf("retire the oldest: %d %s", resp.StatusCode, body)
	}
	mustRotate(now)
	resp, body = rotate(nil)
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")

	// At the bound, the leaked key that signs now is replaced and retired in one step.
	leaked := signUp(t, c, "leaky")
	leakedKid, _ := tokenHeader(t, leaked)["kid"].(string)
	rotated := mustRotate(map[string]any{"after_seconds": 0, "retire": leakedKid})
	if rotated.Retired == nil || rotated.Retired.KID != leakedKid || rotated.Retired.Status != api.KeyRetired {
		t.Errorf("retired = %+v, want %s retired", rotated.Retired, leakedKid)
	}
	if resp, body := c.do("GET", "/v1/sessions/current", leaked, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a token of the retired key: %d %s, want 401", resp.StatusCode, body)
	}
	fresh := signUp(t, c, "fresh")
	if kid := tokenHeader(t, fresh)["kid"]; kid != rotated.Key.KID {
		t.Errorf("a token after the rotation: kid %v, want %s", kid, rotated.Key.KID)
	}
	set = fetchJWKS(t, c)
	if len(set.Keys) != maxLiveKeys {
		t.Errorf("%d keys published, want %d", len(set.Keys), maxLiveKeys)
	}
	for _, k := range set.Keys {
		if k.Kid == leakedKid {
			t.Errorf("the retired key %s is still published", leakedKid)
		}
	}
}

// TestSigningKeys_RetireOutsideTheRing: a key older than the newest maxRingKeys stays in
// the ring while an app's long token keeps it verifying; retired, it leaves the ring, and
// the answer still describes it (found by an outside review: the node crashed on it).
func TestSigningKeys_RetireOutsideTheRing(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "retire-old-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop := mustCreateApp(t, n, "shop")
	resp, body := c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "s1", "ttl": 30 * 24 * 3600})
	var created api.ServiceSessionResponse
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create an app session: %d %s", resp.StatusCode, body)
	}
	old, _ := tokenHeader(t, created.Token)["kid"].(string)
	for i := range maxRingKeys + 1 {
		if i > 0 && i%30 == 0 { // within both bounds: keys replaced a day ago have retired
			clock.Add(rotationWindow + time.Minute)
		}
		if _, _, _, err := n.signing.rotate(context.Background(), 0, ""); err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
	}
	ring := n.tokens.ring.Load()
	if _, ok := ring.verifying(old, clock.Now()); !ok || slices.Index(ring.order, ring.keys[old]) < maxRingKeys {
		t.Fatalf("the app's key is not kept past the newest %d keys", maxRingKeys)
	}
	for _, path := range []string{"/v1/admin/keys/" + old + "/retire", "/v1/admin/keys/" + old + "/retire"} { // again: as it is
		resp, body := adminDoAt(c, testKey, clock.Now(), "POST", path, nil)
		var out api.RotateKeyResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || out.Key.KID != old || out.Key.Status != api.KeyRetired {
			t.Fatalf("retire the old key: %d %s", resp.StatusCode, body)
		}
	}
	if resp, body := c.do("GET", "/v1/sessions/current", created.Token, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the app's token of the retired key: %d %s, want 401", resp.StatusCode, body)
	}
}

// TestSigningKeys_Retire: once the longest token lifetime has passed since a newer key
// took over, the old key stops verifying, leaves the key set, and its private key's
// sealings are deleted from its record.
func TestSigningKeys_Retire(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "retire-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	old := signUp(t, c, "alice")
	oldKid, _ := tokenHeader(t, old)["kid"].(string)
	if _, _, _, err := n.signing.rotate(context.Background(), 0, ""); err != nil {
		t.Fatal(err)
	}
	clock.Add(n.cfg.SessionTTL + tokenLeeway + time.Second)
	if err := n.signing.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if set := fetchJWKS(t, c); len(set.Keys) != 1 || set.Keys[0].Kid == oldKid {
		t.Errorf("key set once the old key retired: %+v; want the new key alone", set)
	}
	if _, ok := n.tokens.ring.Load().verifying(oldKid, clock.Now()); ok {
		t.Errorf("the retired key still verifies")
	}
	m, ok, err := n.db.Record(context.Background(), crdt.SigningKeyKey(oldKid))
	if err != nil || !ok {
		t.Fatalf("the retired key's record: %v, %v", ok, err)
	}
	if rec := crdt.ReadSigningKey(oldKid, &m); len(rec.Sealed) != 0 || len(rec.Public) != ed25519.PublicKeySize {
		t.Errorf("retired key record: %d sealings, %d-byte public key; want no sealing, the public key kept", len(rec.Sealed), len(rec.Public))
	}
	// The node's own clock moved on 24 h while the session's did not: sign in again.
	tok := signUp(t, c, "bob")
	if resp, body := c.do("GET", "/v1/sessions/current", tok, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("a token of the new key: %d %s", resp.StatusCode, body)
	}
}

// TestSigningKeys_RotateRetiringSigner: a rotation that retires the key signing until
// now (a leaked key) makes the new key sign at once also on a node whose clock is up to
// the allowed skew behind, which must not fall back to an older key the leaked one had
// replaced.
func TestSigningKeys_RotateRetiringSigner(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "retire-signer-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	ctx := context.Background()
	older := n.tokens.ring.Load().signer(clock.Now())
	leaked, _, _, err := n.signing.rotate(ctx, 0, "")
	if err != nil || older == nil {
		t.Fatalf("first rotation: %v (signer before: %v)", err, older)
	}
	clock.Add(2 * n.cfg.MaxSkew)
	fresh, retired, _, err := n.signing.rotate(ctx, 0, leaked.kid)
	if err != nil {
		t.Fatal(err)
	}
	if retired == nil || retired.kid != leaked.kid {
		t.Fatalf("retired %v, want the key that signed (%s)", retired, leaked.kid)
	}
	ring := n.tokens.ring.Load()
	for _, lag := range []time.Duration{0, n.cfg.MaxSkew / 2, n.cfg.MaxSkew} {
		var kid string
		if k := ring.signer(clock.Now().Add(-lag)); k != nil {
			kid = k.kid
		}
		if kid != fresh.kid {
			t.Errorf("signer %v behind: %q, want the new key %s (the older key is %s)", lag, kid, fresh.kid, older.kid)
		}
	}
	if _, ok := ring.verifying(leaked.kid, clock.Now()); ok {
		t.Errorf("the leaked key still verifies")
	}
	if _, ok := ring.verifying(older.kid, clock.Now()); !ok {
		t.Errorf("the older key stopped verifying: only the leaked one is retired")
	}
}

// TestSigningKeys_ClusterKeyRotation: through the cluster key rotation procedure, the
// signing key is sealed under the new cluster key once a node holds it, so the node
// still signs with it once the old cluster key is gone — and after a restart with only
// the new one.
func TestSigningKeys_ClusterKeyRotation(t *testing.T) {
	cfg := testConfig(t, "ckrot-0")
	cfg.ClusterKeys = [][]byte{testOldKey}
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, n)
	kid := tokenHeader(t, signUp(t, c, "alice"))["kid"]
	sealings := func() int {
		m, _, _ := n.db.Record(context.Background(), crdt.SigningKeyKey(kid.(string)))
		return len(crdt.ReadSigningKey(kid.(string), &m).Sealed)
	}
	for i, keys := range [][][]byte{{testOldKey, testKey}, {testKey, testOldKey}, {testKey}} {
		if err := n.ReloadKeys(keys); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the signing key sealed under the new cluster key", func() bool { return sealings() == 2 })
		if got := tokenHeader(t, signUp(t, c, fmt.Sprintf("user%d", i)))["kid"]; got != kid {
			t.Errorf("after reloading %d keys, tokens are signed with %v, want %v still", len(keys), got, kid)
		}
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg.ClusterKeys = [][]byte{testKey}
	n = MustStartNode(t, cfg)
	if ring := n.tokens.ring.Load(); ring.signer(time.Now()) == nil || ring.signer(time.Now()).kid != kid || len(ring.order) != 1 {
		t.Errorf("restarted with the new cluster key alone: ring %q; want %v signing, no new key", kids(ring.order), kid)
	}
}

// TestAuth_SigningKeyArrivesLate: a token signed with a key created on another node, sent
// here before the key's record is: the node meets the bookmark the token carries (which
// names the key's creation), learns the key, and serves the request — never a 401 caused
// by lag; and 503 behind, not 401, when the key cannot reach it in time.
func TestAuth_SigningKeyArrivesLate(t *testing.T) {
	cfg := testConfig(t, "late-0")
	cfg.BookmarkWait, cfg.BookmarkTimeout = 3*time.Second, 3*time.Second
	n := MustStartNode(t, cfg)
	ctx := context.Background()
	u, err := n.users.Register(ctx, functions.Register{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := n.sessions.Login(ctx, functions.Login{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}

	// A key another node (origin) created a moment ago, and a token it signed.
	const origin = crdt.NodeID(0x0fedcba987654321)
	now := n.cfg.Now()
	created := crdt.Timestamp{Wall: now.UnixNano(), Node: origin}
	k := generateKey([][]byte{testKey})
	rec := k.record(now, created)
	elsewhere := newTokens([][]byte{testKey}, n.cfg.Now)
	ring, _ := newKeyRing([]crdt.SigningKey{crdt.ReadSigningKey(k.kid, &rec)}, [][]byte{testKey}, time.Hour, time.Now())
	elsewhere.ring.Store(ring)
	token, err := elsewhere.sign(context.Background(), u.ID, s.ID, s.ExpiresAt, crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	get := func() (*http.Response, string) {
		req := httptest.NewRequest("GET", "/v1/sessions/current", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := n.app.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}

	t.Run("ErrBehind", func(t *testing.T) {
		resp, body := get()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"behind"`) || resp.Header.Get("Retry-After") == "" {
			t.Errorf("a key that cannot arrive: %d %s; want 503 behind with Retry-After", resp.StatusCode, body)
		}
	})
	t.Run("OK", func(t *testing.T) {
		// The origin is a member (a failed one here): only members' pushes vouch.
		n.replicator.SetMembership(nil, []cluster.Peer{{ID: origin, Name: "origin"}})
		rep, err := n.replicator.HandlePush(ctx, cluster.PushRequest{From: origin})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		var resp *http.Response
		var body string
		go func() {
			defer close(done)
			resp, body = get()
		}()
		waitFor(t, 5*time.Second, "the request to wait for the key", func() bool {
			n.awaiting.mu.Lock()
			defer n.awaiting.mu.Unlock()
			return len(n.awaiting.held) > 0
		})
		push := cluster.PushRequest{
			From:    origin,
			Changes: []storage.Change{{Key: crdt.SigningKeyKey(k.kid), Map: rec}},
			Through: created,
			Era:     rep.Era,
		}
		if _, err := n.replicator.HandlePush(ctx, push); err != nil {
			t.Fatal(err)
		}
		<-done
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, s.ID) {
			t.Errorf("a key that arrives while the request waits: %d %s; want 200", resp.StatusCode, body)
		}
	})
	t.Run("ErrUnknownKey", func(t *testing.T) {
		// A key nobody created, no bookmark to wait for: 401 at once.
		stranger := generateKey([][]byte{testKey})
		tok := craftEdDSA(t, ed25519.NewKeyFromSeed(make([]byte, 32)), stranger.kid, map[string]any{"iss": tokenIssuer, "aud": tokenAudience,
			"sub": u.ID, "sid": s.ID, "jti": s.ID, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
		req := httptest.NewRequest("GET", "/v1/sessions/current", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := n.app.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("an unknown key with no bookmark: %d, want 401", resp.StatusCode)
		}
	})
}

// TestSigningKeys_Cluster: three nodes with Replicas 1 — each user on one node, signing
// keys on all. They agree on one key; a rotation through one node makes every node sign
// with the new key, and tokens of the old key keep working on every node.
func TestSigningKeys_Cluster(t *testing.T) {
	var nodes []*Node
	for i, name := range []string{"sk-a", "sk-b", "sk-c"} {
		cfg := testConfig(t, name)
		cfg.Replicas = 1
		cfg.AntiEntropyEvery = 500 * time.Millisecond
		if i > 0 {
			cfg.Join = []string{nodes[0].membership.Addr()}
		}
		nodes = append(nodes, MustStartNode(t, cfg))
	}
	waitFor(t, 20*time.Second, "every node to see its two peers", func() bool {
		for _, n := range nodes {
			if n.replicator.Peers() != 2 {
				return false
			}
		}
		return true
	})
	signer := func(n *Node) string {
		if k := n.tokens.ring.Load().signer(time.Now()); k != nil {
			return k.kid
		}
		return ""
	}
	first := signer(nodes[0])
	waitFor(t, 20*time.Second, "every node to sign with the first node's key", func() bool {
		for _, n := range nodes {
			if signer(n) != first {
				return false
			}
		}
		return true
	})
	// Users spread over the nodes, each signed in through a node that may not hold it.
	var tokens []string
	for i := range 6 {
		tokens = append(tokens, signUp(t, newTestClient(t, nodes[i%3]), fmt.Sprintf("skuser%d", i)))
	}
	for _, tok := range tokens {
		if kid := tokenHeader(t, tok)["kid"]; kid != first {
			t.Errorf("a token signed with %v, want %s", kid, first)
		}
	}

	resp, body := adminDo(newTestClient(t, nodes[1]), testKey, "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 0})
	var rotated api.RotateKeyResponse
	if err := json.Unmarshal(body, &rotated); resp.StatusCode != http.StatusCreated || err != nil {
		t.Fatalf("rotate through %s: %d %s", nodes[1].cfg.NodeName, resp.StatusCode, body)
	}
	next := rotated.Key.KID
	waitFor(t, 20*time.Second, "every node to sign with the new key", func() bool {
		for _, n := range nodes {
			if signer(n) != next {
				return false
			}
		}
		return true
	})
	for i, n := range nodes {
		c := newTestClient(t, n)
		_, body := c.do("POST", "/v1/sessions", "", map[string]any{"username": fmt.Sprintf("skuser%d", i), "password": "correct horse"})
		var login struct{ Token string }
		json.Unmarshal(body, &login)
		if kid := tokenHeader(t, login.Token)["kid"]; kid != next {
			t.Errorf("a sign-in through %s after the rotation: kid %v, want %s", n.cfg.NodeName, kid, next)
		}
		tokens = append(tokens, login.Token)
		set := fetchJWKS(t, c)
		if len(set.Keys) != 2 || set.Keys[0].Kid != next || set.Keys[1].Kid != first {
			t.Errorf("%s publishes %+v; want the new key, then the old", n.cfg.NodeName, set)
		}
	}
	for _, n := range nodes {
		c := newTestClient(t, n)
		set := fetchJWKS(t, c)
		for _, tok := range tokens {
			if resp, body := c.do("GET", "/v1/sessions/current", tok, nil); resp.StatusCode != http.StatusOK {
				t.Errorf("token of kid %v via %s: %d %s", tokenHeader(t, tok)["kid"], n.cfg.NodeName, resp.StatusCode, body)
			}
			if _, err := verifyOutside(set, tok); err != nil {
				t.Errorf("token of kid %v verified outside with %s's key set: %v", tokenHeader(t, tok)["kid"], n.cfg.NodeName, err)
			}
		}
	}
}

// TestSigningKeys_TwoFirstKeys: two nodes that each started alone, and so each created
// a first key, meet: both keys verify everywhere, and every node signs with the same one,
// the newer.
func TestSigningKeys_TwoFirstKeys(t *testing.T) {
	a := MustStartNode(t, testConfig(t, "two-a"))
	cfgB := testConfig(t, "two-b")
	b, err := NewNode(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ta := signUp(t, newTestClient(t, a), "anna")
	tb := signUp(t, newTestClient(t, b), "bert")
	ka, kb := tokenHeader(t, ta)["kid"], tokenHeader(t, tb)["kid"]
	if ka == kb {
		t.Fatalf("two lone nodes signed with one key %v", ka)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfgB.Join = []string{a.membership.Addr()}
	b = MustStartNode(t, cfgB) // the same data, now joining a

	newer := a.tokens.ring.Load().order[0]
	waitFor(t, 20*time.Second, "both nodes to hold both keys and sign with the same one", func() bool {
		for _, n := range []*Node{a, b} {
			r := n.tokens.ring.Load()
			if len(r.order) != 2 || r.signer(time.Now()) == nil {
				return false
			}
			newer = r.order[0]
		}
		return a.tokens.ring.Load().signer(time.Now()).kid == b.tokens.ring.Load().signer(time.Now()).kid
	})
	if newer.kid != a.tokens.ring.Load().signer(time.Now()).kid {
		t.Errorf("the nodes sign with %s, not the newer key %s", a.tokens.ring.Load().signer(time.Now()).kid, newer.kid)
	}
	for _, n := range []*Node{a, b} {
		c := newTestClient(t, n)
		for _, tok := range []string{ta, tb} {
			waitFor(t, 20*time.Second, fmt.Sprintf("the token of kid %v to work on %s", tokenHeader(t, tok)["kid"], n.cfg.NodeName), func() bool {
				resp, _ := c.do("GET", "/v1/sessions/current", tok, nil)
				return resp.StatusCode == http.StatusOK
			})
		}
		if set := fetchJWKS(t, c); len(set.Keys) != 2 {
			t.Errorf("%s publishes %d keys, want both", n.cfg.NodeName, len(set.Keys))
		}
	}
}

// TestSigningKeys_AppSessionOutlivesRotation: an app's session may live up to a year,
// far longer than --session-ttl. A rotation must not cut its token short: the node
// records, before it hands the token out, that the key verifies until the token expires,
// and the old key stays published and verifying until then — and retires after.
func TestSigningKeys_AppSessionOutlivesRotation(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "outlive-0")
	cfg.Now = clock.Now
	cfg.SessionTTL = time.Hour
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop := mustCreateApp(t, n, "shop")
	const ttl = 30 * 24 * time.Hour
	resp, body := c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "s1", "ttl": int64(ttl.Seconds()), "idle_ttl": int64(ttl.Seconds())})
	var created api.ServiceSessionResponse
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create an app session: %d %s", resp.StatusCode, body)
	}
	oldKid, _ := tokenHeader(t, created.Token)["kid"].(string)
	m, ok, err := n.db.Record(context.Background(), crdt.SigningKeyKey(oldKid))
	if err != nil || !ok {
		t.Fatalf("the key's record: %v, %v", ok, err)
	}
	if rec := crdt.ReadSigningKey(oldKid, &m); rec.ExpiresUntil.Before(created.Session.ExpiresAt) {
		t.Fatalf("the key's record says its tokens expire until %v; the app's token expires at %v", rec.ExpiresUntil, created.Session.ExpiresAt)
	}

	if _, _, _, err := n.signing.rotate(context.Background(), 0, ""); err != nil {
		t.Fatal(err)
	}
	clock.Add(cfg.SessionTTL + tokenLeeway + time.Minute) // past a user token's lifetime
	if err := n.signing.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp, body := c.do("GET", "/v1/sessions/current", created.Token, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("the app's token after a rotation, past --session-ttl: %d %s", resp.StatusCode, body)
	}
	if _, err := verifyOutside(fetchJWKS(t, c), created.Token); err != nil {
		t.Errorf("a backend with the key set refuses the app's token after a rotation: %v", err)
	}

	clock.Add(ttl) // past the token's expiry: the old key retires
	if err := n.signing.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.tokens.ring.Load().verifying(oldKid, clock.Now()); ok {
		t.Errorf("the old key still verifies once its last token expired")
	}
	for _, k := range fetchJWKS(t, c).Keys {
		if k.Kid == oldKid {
			t.Errorf("the old key is still published once its last token expired")
		}
	}
}

// TestTokens_CachedKeyRetires: a token verified once is cached, but the cache does not
// outlast its key: once a rotation retired the key, the token is refused here too, as on
// a node that never saw it (a token forged with a leaked key and a far expiry, say).
func TestTokens_CachedKeyRetires(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "cached-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	signUp(t, newTestClient(t, n), "alice")
	key := n.tokens.ring.Load().signer(clock.Now())
	if key == nil {
		t.Fatal("no signing key")
	}
	now := clock.Now()
	forged := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims{SessionID: "s1", RegisteredClaims: jwt.RegisteredClaims{
		Issuer: tokenIssuer, Subject: "u1", Audience: jwt.ClaimStrings{tokenAudience}, ID: "s1",
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(365 * 24 * time.Hour)),
	}})
	forged.Header["kid"] = key.kid
	raw, err := forged.SignedString(key.private)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.tokens.verify(raw); err != nil {
		t.Fatalf("the token before the rotation: %v", err)
	}
	if _, _, _, err := n.signing.rotate(context.Background(), 0, ""); err != nil {
		t.Fatal(err)
	}
	clock.Add(n.cfg.SessionTTL + tokenLeeway + time.Minute)
	if err := n.signing.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.tokens.ring.Load().verifying(key.kid, clock.Now()); ok {
		t.Fatal("the old key did not retire")
	}
	if _, err := n.tokens.verify(raw); err == nil {
		t.Errorf("a token of a retired key is still accepted from the cache")
	}
}

// TestSigningKeys_SignedBeforeRestart: a node cut off from a rotation goes on signing
// with the old key, and reports it once it hears of the new key, so that the old key
// verifies until those tokens expire. A restart in between must not lose that: the
// restarted node counts its current key as signed with up to its start.
func TestSigningKeys_SignedBeforeRestart(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "restart-sign-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	signUp(t, newTestClient(t, n), "alice")
	oldKid := n.tokens.ring.Load().signer(clock.Now()).kid
	rotatedAt := clock.Now() // elsewhere, unheard of here
	clock.Add(time.Minute)
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = MustStartNode(t, cfg) // the same data
	started := clock.Now()

	fresh := generateKey(cfg.ClusterKeys)
	if err := n.db.Update(context.Background(), func(tx *storage.Tx) error {
		_, err := tx.Merge(crdt.SigningKeyKey(fresh.kid), fresh.record(rotatedAt, n.db.Clock().Next()))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.signing.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	m, ok, err := n.db.Record(context.Background(), crdt.SigningKeyKey(oldKid))
	if err != nil || !ok {
		t.Fatalf("the old key's record: %v, %v", ok, err)
	}
	if rec := crdt.ReadSigningKey(oldKid, &m); rec.SignedUntil.Before(started.Truncate(time.Second)) {
		t.Errorf("the old key's signed_until is %v; the node may have signed with it until its restart at %v", rec.SignedUntil, started)
	}
}

// TestSigningKeys_RetireAtOnce: a leaked key must be ended at once, even when tokens of
// an app's year-long sessions would keep it verifying: rotated out, then retired, it
// leaves the key set and its tokens stop verifying, cached or not; the key that signs
// now cannot be retired, and an unknown kid is 404.
func TestSigningKeys_RetireAtOnce(t *testing.T) {
	clock := newFakeClock(time.Now())
	cfg := testConfig(t, "retire-now-0")
	cfg.Now = clock.Now
	n := MustStartNode(t, cfg)
	c := newTestClient(t, n)
	shop := mustCreateApp(t, n, "shop")
	year := int64((365 * 24 * time.Hour).Seconds())
	resp, body := c.do("POST", "/v1/service/sessions", shop, map[string]any{"subject": "s1", "ttl": year, "idle_ttl": year})
	var created api.ServiceSessionResponse
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create an app session: %d %s", resp.StatusCode, body)
	}
	if resp, body := c.do("GET", "/v1/sessions/current", created.Token, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the app's token: %d %s", resp.StatusCode, body) // and now cached
	}
	oldKid, _ := tokenHeader(t, created.Token)["kid"].(string)

	resp, body = adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+oldKid+"/retire", nil)
	wantError(t, resp, body, http.StatusConflict, "conflict")
	if resp, body := adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 0}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("rotate: %d %s", resp.StatusCode, body)
	}
	// Replaced a moment ago: nodes whose clocks are behind may still sign with it.
	resp, body = adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+oldKid+"/retire", nil)
	wantError(t, resp, body, http.StatusConflict, "conflict")
	clock.Add(2 * cfg.MaxSkew)
	// The node's hybrid clock runs ahead of its wall clock (it saw a peer's write from
	// 50 s ahead): the retire still ends the key at once, not when the wall clock reaches
	// the flag's time.
	if err := n.db.Clock().Observe(crdt.Timestamp{Wall: clock.Now().Add(50 * time.Second).UnixNano(), Node: 99}); err != nil {
		t.Fatal(err)
	}
	resp, body = adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+oldKid+"/retire", nil)
	var out api.RotateKeyResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || out.Key.Status != api.KeyRetired {
		t.Fatalf("retire the replaced key: %d %s", resp.StatusCode, body)
	}
	resp, body = c.do("GET", "/v1/sessions/current", created.Token, nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	for _, k := range fetchJWKS(t, c).Keys {
		if k.Kid == oldKid {
			t.Errorf("the retired key is still published")
		}
	}
	resp, body = adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+strings.Repeat("A", 43)+"/retire", nil)
	wantError(t, resp, body, http.StatusNotFound, "not_found")
	// Retiring it again changes nothing and is no error.
	if resp, body := adminDoAt(c, testKey, clock.Now(), "POST", "/v1/admin/keys/"+oldKid+"/retire", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("retire again: %d %s", resp.StatusCode, body)
	}
}
