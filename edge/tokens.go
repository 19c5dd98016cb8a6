package edge

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sessiond/sessiond/crdt"
)

// Token claims are pinned: HS256 only, issuer and audience fixed, exp and iat required.
const (
	tokenIssuer   = "sessiond"
	tokenAudience = "sessiond-api"
	tokenLeeway   = 5 * time.Second
	tokenCacheMax = 100_000
)

// claims are the JWT claims of a session token. The session ID is both jti and sid; the
// token is only as good as the replicated session record it names.
type claims struct {
	SessionID string `json:"sid"`
	// Bookmark is the bookmark of the session's creation (crdt.Bookmark's text form): a
	// node that does not yet hold the session meets it before refusing the token.
	Bookmark string `json:"bm,omitempty"`
	// Gen is the token's generation (functions.Sessions.Renew): a renewal raises the
	// session's, and tokens of earlier generations stop working. Absent: 0.
	Gen uint64 `json:"gen,omitempty"`
	jwt.RegisteredClaims
}

// tokens signs session tokens with the active key and verifies them against every
// accepted key by kid. Verified tokens are cached until they expire: a token's signature
// and claims never change, and revocation is checked against the session record on every
// request anyway. Safe for concurrent use.
type tokens struct {
	set    atomic.Pointer[tokenKeys] // replaced whole by rotate
	now    func() time.Time
	parser *jwt.Parser
	device *jwt.Parser // device tokens (deviceAudience): never access tokens

	mu    sync.Mutex
	cache map[string]verified
}

// verified is what a valid token says.
type verified struct {
	userID, sessionID string
	created           crdt.Bookmark // of the session's creation; zero in older tokens
	gen               uint64        // the token's generation (claims.Gen)
	issued, expires   time.Time
}

func newTokens(clusterKeys [][]byte, now func() time.Time) *tokens {
	t := &tokens{now: now, cache: make(map[string]verified)}
	t.set.Store(newTokenKeys(clusterKeys, nil))
	t.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(tokenAudience),
		jwt.WithLeeway(tokenLeeway),
		jwt.WithTimeFunc(now),
	)
	t.device = newDeviceParser(now)
	return t
}

// sign returns a token of generation gen for a session of userID that expires with it,
// carrying the bookmark of the session's creation (or of its latest renewal).
func (t *tokens) sign(userID, sessionID string, expires time.Time, created crdt.Bookmark, gen uint64) (string, error) {
	now := t.now()
	c := claims{
		SessionID: sessionID,
		Bookmark:  created.String(),
		Gen:       gen,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    tokenIssuer,
			Subject:   userID,
			Audience:  jwt.ClaimStrings{tokenAudience},
			ExpiresAt: jwt.NewNumericDate(expires),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        sessionID,
		},
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	set := t.set.Load()
	tok.Header["kid"] = set.signKID
	s, err := tok.SignedString(set.keys[set.signKID].key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

var errBadToken = errors.New("invalid token")

// errTokenAhead is a token of ours, signed correctly, issued later than this node's clock
// reads (beyond the leeway): the node that issued it runs ahead. It is not refused as
// invalid — this node is behind it, as with a bookmark too far ahead.
var errTokenAhead = errors.New("token issued ahead of this node's clock")

// verify returns the user and session a token names, or an error when the token is not
// one of ours, is tampered with, expired, or lacks a required claim.
func (t *tokens) verify(raw string) (verified, error) {
	now := t.now()
	t.mu.Lock()
	v, ok := t.cache[raw]
	t.mu.Unlock()
	if ok {
		if now.Before(v.expires.Add(tokenLeeway)) {
			return v, nil
		}
		t.mu.Lock()
		delete(t.cache, raw)
		t.mu.Unlock()
		return verified{}, errBadToken
	}
	var c claims
	_, err := t.parser.ParseWithClaims(raw, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		return t.set.Load().verifying(kid, t.now())
	})
	if errors.Is(err, jwt.ErrTokenUsedBeforeIssued) && !errors.Is(err, jwt.ErrTokenExpired) && c.IssuedAt != nil {
		return verified{issued: c.IssuedAt.Time}, errTokenAhead
	}
	if err != nil {
		return verified{}, fmt.Errorf("%w: %w", errBadToken, err)
	}
	if c.IssuedAt == nil || c.Subject == "" || c.SessionID == "" || c.ID != c.SessionID {
		return verified{}, fmt.Errorf("%w: missing claims", errBadToken)
	}
	created, err := crdt.ParseBookmark(c.Bookmark)
	if err != nil {
		return verified{}, fmt.Errorf("%w: %w", errBadToken, err)
	}
	v = verified{userID: c.Subject, sessionID: c.SessionID, created: created, gen: c.Gen, expires: c.ExpiresAt.Time}
	t.mu.Lock()
	if len(t.cache) >= tokenCacheMax {
		for k := range t.cache { // evict an arbitrary tenth; map order is random
			delete(t.cache, k)
			if len(t.cache) < tokenCacheMax*9/10 {
				break
			}
		}
	}
	// raw may alias the server's request buffer (Fiber's strings are zero-copy and the
	// buffer is reused by later requests); a map key must own its bytes.
	t.cache[strings.Clone(raw)] = v
	t.mu.Unlock()
	return v, nil
}

// Device tokens (OWASP's "device cookies"): a successful login returns one, bound to the
// user's id and username; a later login to that account that presents it is exempt from
// the account-wide failure limit (see throttle.go), so the owner gets in while others
// guess. Its audience differs from session tokens', and it names no session, so it can
// never be used as an access token; an access token is never a device token either.
const (
	deviceAudience = "sessiond-device"
	deviceTTL      = 90 * 24 * time.Hour
	maxDeviceToken = 2048 // longer "device" fields are ignored unparsed
)

// deviceClaims are the claims of a device token: sub is the user id.
type deviceClaims struct {
	Username string `json:"usr"`
	jwt.RegisteredClaims
}

// newDeviceParser pins what a device token must be. Its iat is not checked: a node whose
// clock ran ahead would otherwise issue tokens that every other node refuses until real
// time catches up, locking out exactly the owners it should let through; exp bounds it.
func newDeviceParser(now func() time.Time) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(deviceAudience),
		jwt.WithLeeway(tokenLeeway),
		jwt.WithTimeFunc(now),
	)
}

// signDevice returns a device token for userID under username.
func (t *tokens) signDevice(userID, username string) (string, error) {
	now := t.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, deviceClaims{
		Username: username,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    tokenIssuer,
			Subject:   userID,
			Audience:  jwt.ClaimStrings{deviceAudience},
			ExpiresAt: jwt.NewNumericDate(now.Add(deviceTTL)),
			IssuedAt:  jwt.NewNumericDate(now),
		},
	})
	set := t.set.Load()
	tok.Header["kid"] = set.signKID
	s, err := tok.SignedString(set.keys[set.signKID].key)
	if err != nil {
		return "", fmt.Errorf("sign device token: %w", err)
	}
	return s, nil
}

// verifyDevice reports whether raw is a valid, unexpired device token of ours for the
// account named username. Any fault is just false: the login goes on without the
// exemption. The token names an account by id too: see deviceOwner.
func (t *tokens) verifyDevice(raw, username string) bool {
	_, ok := t.deviceOwner(raw, username)
	return ok
}

// deviceOwner returns the id of the account that raw, a valid, unexpired device token of
// ours for a name username, was issued to. A name can change hands (its owner erased, or
// a concurrent registration won), so the caller checks that this account still owns it.
func (t *tokens) deviceOwner(raw, username string) (string, bool) {
	if raw == "" || len(raw) > maxDeviceToken || username == "" {
		return "", false
	}
	var c deviceClaims
	_, err := t.device.ParseWithClaims(raw, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		return t.set.Load().verifying(kid, t.now())
	})
	if err != nil || c.Subject == "" || c.Username != username {
		return "", false
	}
	return c.Subject, true
}
