package edge

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/sessiond/sessiond/crdt"
)

// Token crafting for the attack tables: the header and claims are written by hand, so
// any shape can be produced, and signed with any key.

var b64 = base64.RawURLEncoding

func craft(tb testing.TB, header, claims map[string]any, sign func(input string) []byte) string {
	tb.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	return input + "." + b64.EncodeToString(sign(input))
}

func hmacSigner(newHash func() hash.Hash, key []byte) func(string) []byte {
	return func(input string) []byte {
		m := hmac.New(newHash, key)
		m.Write([]byte(input))
		return m.Sum(nil)
	}
}

// craftHS256 signs claims with key under kid, as sign does.
func craftHS256(tb testing.TB, key []byte, kid string, claims map[string]any) string {
	tb.Helper()
	return craft(tb, map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}, claims, hmacSigner(sha256.New, key))
}

// craftNone is an unsigned token (alg none).
func craftNone(tb testing.TB, kid string, claims map[string]any) string {
	tb.Helper()
	return craft(tb, map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, claims, func(string) []byte { return nil })
}

// tamper replaces the subject in tok's payload and keeps its signature.
func tamper(tb testing.TB, tok string) string {
	tb.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		tb.Fatalf("token has %d parts", len(parts))
	}
	raw, err := b64.DecodeString(parts[1])
	if err != nil {
		tb.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		tb.Fatal(err)
	}
	c["sub"] = "someone-else"
	raw, _ = json.Marshal(c)
	parts[1] = b64.EncodeToString(raw)
	return strings.Join(parts, ".")
}

func with(m map[string]any, k string, v any) map[string]any { m[k] = v; return m }

func without(m map[string]any, k string) map[string]any { delete(m, k); return m }

var tokenEpoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestTokens_SignVerify(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	tk := newTokens([][]byte{testKey}, clock.Now)
	tok, err := tk.sign("u1", "s1", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	v, err := tk.verify(tok)
	uid, sid := v.userID, v.sessionID
	if err != nil || uid != "u1" || sid != "s1" {
		t.Fatalf("verify = %q, %q, %v; want u1, s1, nil", v.userID, v.sessionID, err)
	}
	// The header pins HS256 and names the key.
	h, _ := b64.DecodeString(strings.Split(tok, ".")[0])
	var hdr map[string]any
	json.Unmarshal(h, &hdr)
	if hdr["alg"] != "HS256" || hdr["kid"] != tk.set.Load().signKID {
		t.Errorf("header = %v, want alg HS256 and kid %q", hdr, tk.set.Load().signKID)
	}
	// A node with another cluster key rejects it.
	other := newTokens([][]byte{otherKey}, clock.Now)
	if _, err := other.verify(tok); err == nil {
		t.Errorf("verify with another cluster key: err = nil, want an error")
	}
	// Two tokens for the same session differ only if signed at different times; both work.
	clock.Add(time.Second)
	tok2, _ := tk.sign("u1", "s1", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	if _, err := tk.verify(tok2); err != nil {
		t.Errorf("verify second token: %v", err)
	}
}

func TestTokens_Attacks(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	tk := newTokens([][]byte{testKey}, clock.Now)
	k := deriveKey(testKey, purposeJWT)
	kid := keyID(k)
	now := tokenEpoch
	good := func() map[string]any {
		return map[string]any{"iss": tokenIssuer, "aud": tokenAudience, "sub": "u1", "sid": "s1", "jti": "s1",
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	}
	hdr := func(alg string) map[string]any { return map[string]any{"alg": alg, "typ": "JWT", "kid": kid} }
	valid, err := tk.sign("u1", "s1", now.Add(time.Hour), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"ErrAlgNone", craftNone(t, kid, good())},
		{"ErrAlgNoneEmptyKid", craft(t, map[string]any{"alg": "none"}, good(), func(string) []byte { return nil })},
		{"ErrHS384", craft(t, hdr("HS384"), good(), hmacSigner(sha512.New384, k))},
		{"ErrHS512", craft(t, hdr("HS512"), good(), hmacSigner(sha512.New, k))},
		// Algorithm confusion: RS256 in the header, an HMAC under our key as the signature.
		{"ErrRS256", craft(t, hdr("RS256"), good(), hmacSigner(sha256.New, k))},
		{"ErrTamperedPayload", tamper(t, valid)},
		{"ErrTamperedSignature", valid[:len(valid)-2] + "AA"},
		{"ErrNoSignature", valid[:strings.LastIndex(valid, ".")+1]},
		{"ErrWrongKey", craftHS256(t, deriveKey(otherKey, purposeJWT), kid, good())},
		{"ErrRawClusterKey", craftHS256(t, testKey, kid, good())},
		{"ErrOtherPurposeKey", craftHS256(t, deriveKey(testKey, purposeSync), kid, good())},
		{"ErrMissingExp", craftHS256(t, k, kid, without(good(), "exp"))},
		{"ErrMissingIat", craftHS256(t, k, kid, without(good(), "iat"))},
		{"ErrNotYetValid", craftHS256(t, k, kid, with(good(), "nbf", now.Add(time.Minute).Unix()))},
		{"ErrMissingAudience", craftHS256(t, k, kid, without(good(), "aud"))},
		{"ErrWrongAudience", craftHS256(t, k, kid, with(good(), "aud", "other-api"))},
		{"ErrMissingIssuer", craftHS256(t, k, kid, without(good(), "iss"))},
		{"ErrWrongIssuer", craftHS256(t, k, kid, with(good(), "iss", "evil"))},
		{"ErrExpired", craftHS256(t, k, kid, with(good(), "exp", now.Add(-tokenLeeway-time.Second).Unix()))},
		{"ErrUnknownKid", craftHS256(t, k, "0123456789ab", good())},
		{"ErrMissingKid", craft(t, map[string]any{"alg": "HS256", "typ": "JWT"}, good(), hmacSigner(sha256.New, k))},
		{"ErrSidNotJti", craftHS256(t, k, kid, with(good(), "jti", "s2"))},
		{"ErrMissingSid", craftHS256(t, k, kid, without(without(good(), "sid"), "jti"))},
		{"ErrMissingSub", craftHS256(t, k, kid, without(good(), "sub"))},
		{"ErrStringExp", craftHS256(t, k, kid, with(good(), "exp", "never"))},
		{"ErrEmpty", ""},
		{"ErrGarbage", "a.b.c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := tk.verify(tc.token)
			uid, sid := v.userID, v.sessionID
			if err == nil {
				t.Fatalf("verify = %q, %q, nil; want an error", uid, sid)
			}
			if !errors.Is(err, errBadToken) {
				t.Errorf("verify error = %v, want errBadToken", err)
			}
			// A rejected token is not cached, so it stays rejected.
			if _, err := tk.verify(tc.token); err == nil {
				t.Errorf("second verify: err = nil, want an error")
			}
		})
	}
	t.Run("FutureIatIsAhead", func(t *testing.T) {
		// Signed by us with a clock ahead of this node's: not invalid, but not usable yet.
		tok := craftHS256(t, k, kid, with(good(), "iat", now.Add(time.Minute).Unix()))
		v, err := tk.verify(tok)
		if !errors.Is(err, errTokenAhead) || v.issued.Unix() != now.Add(time.Minute).Unix() {
			t.Errorf("verify = %+v, %v; want errTokenAhead with the issue time", v, err)
		}
		// Expired as well: invalid.
		tok = craftHS256(t, k, kid, with(with(good(), "iat", now.Add(time.Minute).Unix()), "exp", now.Add(-time.Hour).Unix()))
		if _, err := tk.verify(tok); !errors.Is(err, errBadToken) {
			t.Errorf("verify(expired, issued ahead) = %v, want errBadToken", err)
		}
	})
	t.Run("OK", func(t *testing.T) {
		// The crafting helpers make tokens verify does accept: the table above fails for
		// the reason each case names, not for a flaw in the helpers.
		for _, tok := range []string{valid, craftHS256(t, k, kid, good()),
			craftHS256(t, k, kid, with(good(), "exp", now.Add(-tokenLeeway+time.Second).Unix()))} {
			if _, err := tk.verify(tok); err != nil {
				t.Errorf("verify(%q): %v", tok, err)
			}
		}
	})
}

func TestTokens_Rotation(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	before := newTokens([][]byte{testOldKey}, clock.Now)
	after := newTokens([][]byte{testKey, testOldKey}, clock.Now)
	retired := newTokens([][]byte{testKey}, clock.Now)

	old, err := before.sign("u1", "s1", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := after.verify(old); err != nil || v.userID != "u1" || v.sessionID != "s1" {
		t.Errorf("old-key token after rotation: verify = %q, %q, %v; want u1, s1, nil", v.userID, v.sessionID, err)
	}
	if _, err := retired.verify(old); err == nil {
		t.Errorf("old-key token once the old key is retired: err = nil, want an error")
	}

	fresh, err := after.sign("u2", "s2", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := keyID(deriveKey(testKey, purposeJWT)); after.set.Load().signKID != want {
		t.Errorf("signKID = %q, want the new key's %q", after.set.Load().signKID, want)
	}
	if _, err := retired.verify(fresh); err != nil {
		t.Errorf("new-key token on a node with only the new key: %v", err)
	}
	if _, err := before.verify(fresh); err == nil {
		t.Errorf("new-key token on a node that lacks the new key: err = nil, want an error")
	}
}

func TestTokens_Cache(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	tk := newTokens([][]byte{testKey}, clock.Now)
	tok, _ := tk.sign("u1", "s1", tokenEpoch.Add(time.Minute), crdt.Bookmark{}, 0)
	if _, err := tk.verify(tok); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(tk.cache) != 1 {
		t.Fatalf("cache holds %d tokens, want 1", len(tk.cache))
	}
	clock.Add(time.Minute) // at exp: still inside the leeway
	if _, err := tk.verify(tok); err != nil {
		t.Errorf("verify at exp (within leeway): %v", err)
	}
	clock.Add(tokenLeeway)
	if _, err := tk.verify(tok); err == nil {
		t.Errorf("cached token past exp+leeway: err = nil, want an error")
	}
	if len(tk.cache) != 0 {
		t.Errorf("expired token still cached (%d entries)", len(tk.cache))
	}
	if _, err := tk.verify(tok); err == nil {
		t.Errorf("expired token, uncached: err = nil, want an error")
	}

	t.Run("Bounded", func(t *testing.T) {
		tk := newTokens([][]byte{testKey}, clock.Now)
		for i := range tokenCacheMax {
			tk.cache[fmt.Sprint(i)] = verified{}
		}
		tok, _ := tk.sign("u1", "s1", clock.Now().Add(time.Hour), crdt.Bookmark{}, 0)
		if _, err := tk.verify(tok); err != nil {
			t.Fatal(err)
		}
		if n := len(tk.cache); n >= tokenCacheMax || n < tokenCacheMax*8/10 {
			t.Errorf("cache size after eviction = %d, want in [%d, %d)", n, tokenCacheMax*8/10, tokenCacheMax)
		}
		if _, ok := tk.cache[tok]; !ok {
			t.Errorf("new token not cached after eviction")
		}
	})
}

// aliasedString returns a string that shares b's bytes, as Fiber's strings share
// fasthttp's request buffers (Config.Immutable is off): writing to b changes it.
func aliasedString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// TestTokens_CacheOwnsKey is the unit form of TestHTTP_Auth's same-length forgery: the
// token verify is given aliases a buffer that the next request overwrites, so the cache
// must key on a copy, or the next token would read as the cached one.
func TestTokens_CacheOwnsKey(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	tk := newTokens([][]byte{testKey}, clock.Now)
	tok, _ := tk.sign("u1", "s1", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	buf := []byte(tok)
	if _, err := tk.verify(aliasedString(buf)); err != nil {
		t.Fatalf("verify: %v", err)
	}
	forged := tok[:len(tok)-10] + "0123456789"
	copy(buf, forged) // the connection's next request, in the same buffer
	if _, err := tk.verify(aliasedString(buf)); err == nil {
		t.Errorf("verify(forged token) = nil error, want one: the cache keyed on the request buffer")
	}
	for k := range tk.cache {
		if k != tok {
			t.Errorf("cache key = %q, want the token verified (%q)", k, tok)
		}
	}
}
