package edge

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// Token claims are pinned: issuer and audience fixed, exp and iat required; the algorithm
// is pinned by the key the kid names: EdDSA for a signing key (signkeys.go), HS256 for a
// token key derived from a cluster key (tokenkeys.go).
const (
	tokenIssuer   = api.TokenIssuer
	tokenAudience = api.TokenAudience
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

// tokens signs session tokens and verifies them against every accepted key by kid. It
// signs with the ring's signing key (EdDSA, signkeys.go) when there is one and every
// member verifies EdDSA (hs256Only), else with the token key derived from the first
// cluster key (HS256, tokenkeys.go); it verifies both kinds, each kid with its own
// algorithm only. Verified tokens are cached until they expire: a token's signature and
// claims never change, and revocation is checked against the session record on every
// request anyway. Safe for concurrent use.
type tokens struct {
	set    atomic.Pointer[tokenKeys] // replaced whole by rotate
	ring   atomic.Pointer[keyRing]   // replaced whole by signing
	now    func() time.Time
	parser *jwt.Parser
	device *jwt.Parser // device tokens (deviceAudience): never access tokens

	// hs256Only, when set, reports whether tokens must be signed HS256 even with a
	// signing key at hand: some member of the cluster cannot verify EdDSA (an older
	// release, during a rolling upgrade). Set before the tokens are used.
	hs256Only func() bool
	// lookup, when set, is called for a signing key kid the ring lacks: it returns a
	// fresher ring, or nil when the kid is not known here either. Set before use.
	lookup func(kid string) *keyRing
	// outlives, when set, is called before a token signed at now with the signing key
	// kid and expiring at expires is handed out: it makes sure the key's record says the
	// key must verify until then (signing.outlives), or fails. Set before use.
	outlives func(ctx context.Context, kid string, now, expires time.Time) error

	mu    sync.Mutex
	cache map[string]verified

	signedMu sync.Mutex
	signed   map[string]time.Time // signing key kid → when this node last signed with it
}

// verified is what a valid token says.
type verified struct {
	userID, sessionID string
	created           crdt.Bookmark // of the session's creation; zero in older tokens
	gen               uint64        // the token's generation (claims.Gen)
	issued, expires   time.Time
	kid               string // the key that signed it
	eddsa             bool   // kid names a signing key (else a token key, HS256)
}

func newTokens(clusterKeys [][]byte, now func() time.Time) *tokens {
	t := &tokens{now: now, cache: make(map[string]verified), signed: make(map[string]time.Time)}
	t.set.Store(newTokenKeys(clusterKeys, nil))
	t.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg(), jwt.SigningMethodHS256.Alg()}),
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
// carrying the bookmark of the session's creation (or of its latest renewal), and of the
// signing key's creation when an EdDSA key signs it: a node that has not yet received the
// key meets the bookmark, then knows it.
func (t *tokens) sign(ctx context.Context, userID, sessionID string, expires time.Time, created crdt.Bookmark, gen uint64) (string, error) {
	now := t.now()
	key := t.ring.Load().signer(now)
	if key != nil && t.hs256Only != nil && t.hs256Only() {
		key = nil
	}
	if key != nil {
		created = created.Clone()
		created.Add(key.created)
	}
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
	if key != nil {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
		tok.Header["kid"] = key.kid
		s, err := tok.SignedString(key.private)
		if err != nil {
			return "", fmt.Errorf("sign token: %w", err)
		}
		if t.outlives != nil {
			if err := t.outlives(ctx, key.kid, now, expires); err != nil {
				return "", err
			}
		}
		t.noteSigned(key.kid, now)
		return s, nil
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

// noteSigned records that this node signed a token with the signing key kid at at.
func (t *tokens) noteSigned(kid string, at time.Time) {
	t.signedMu.Lock()
	defer t.signedMu.Unlock()
	if at.After(t.signed[kid]) {
		t.signed[kid] = at
	}
}

// signedWith returns when this node last signed a token with each signing key it used,
// by kid, forgetting keys it has not used for maxRingKeys rotations' worth of entries.
func (t *tokens) signedWith() map[string]time.Time {
	t.signedMu.Lock()
	defer t.signedMu.Unlock()
	if len(t.signed) > maxRingKeys { // bounded: keep the latest
		var oldest string
		for kid, at := range t.signed {
			if oldest == "" || at.Before(t.signed[oldest]) {
				oldest = kid
			}
		}
		delete(t.signed, oldest)
	}
	return maps.Clone(t.signed)
}

// accessKey is the keyfunc of access tokens: the key of the token's kid, for the
// algorithm that kid is pinned to — EdDSA for a signing key, HS256 for a token key
// derived from a cluster key. A signing key kid the ring lacks is looked up (lookup);
// still unknown, it is errKeyUnknown (one it holds retired, or a kid of no signing key's
// form, is just refused).
func (t *tokens) accessKey(tok *jwt.Token) (any, error) {
	kid, _ := tok.Header["kid"].(string)
	now := t.now()
	switch tok.Method.Alg() {
	case jwt.SigningMethodHS256.Alg():
		return t.set.Load().verifying(kid, now)
	case jwt.SigningMethodEdDSA.Alg():
		ring := t.ring.Load()
		if k, ok := ring.verifying(kid, now); ok {
			return k, nil
		}
		// A kid the ring lacks may be a key that arrived since it was built (or is on its
		// way: errKeyUnknown); one it holds but that does not verify is retired.
		if !okpKID(kid) || ring.has(kid) {
			return nil, errors.New("no signing key of that kid verifies")
		}
		if t.lookup != nil {
			if k, ok := t.lookup(kid).verifying(kid, now); ok {
				return k, nil
			}
		}
		return nil, errKeyUnknown
	}
	return nil, errors.New("algorithm not allowed")
}

var errBadToken = errors.New("invalid token")

// errTokenAhead is a token of ours, signed correctly, issued later than this node's clock
// reads (beyond the leeway): the node that issued it runs ahead. It is not refused as
// invalid — this node is behind it, as with a bookmark too far ahead.
var errTokenAhead = errors.New("token issued ahead of this node's clock")

// errKeyUnknown is a token whose kid has the form of a signing key's but names none this
// node holds, retired or not: it may be a key created elsewhere that has not reached this
// node yet. verify
// returns it with the bookmark the token claims (unverified), which auth meets before it
// tries again.
var errKeyUnknown = errors.New("unknown signing key")

// verify returns the user and session a token names, or an error when the token is not
// one of ours, is tampered with, expired, or lacks a required claim.
func (t *tokens) verify(raw string) (verified, error) {
	now := t.now()
	t.mu.Lock()
	v, ok := t.cache[raw]
	t.mu.Unlock()
	if ok {
		// The key that signed it may have retired since (a rotation): then it does
		// not verify any more, here as on a node that never saw it.
		if t.valid(v, now) {
			return v, nil
		}
		t.mu.Lock()
		delete(t.cache, raw)
		t.mu.Unlock()
		return verified{}, errBadToken
	}
	var c claims
	tok, err := t.parser.ParseWithClaims(raw, &c, t.accessKey)
	if errors.Is(err, errKeyUnknown) {
		// The claims are not verified: the bookmark only tells auth what to wait for,
		// as a client's bookmark header does, within the same bounds.
		bm, _ := crdt.ParseBookmark(c.Bookmark)
		return verified{created: bm}, fmt.Errorf("%w: %w", errBadToken, err)
	}
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
	v.kid, _ = tok.Header["kid"].(string)
	v.eddsa = tok.Method.Alg() == jwt.SigningMethodEdDSA.Alg()
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

// valid reports whether the verified token v still verifies at now: it has not expired
// (beyond the leeway), and the key that signed it has not retired.
func (t *tokens) valid(v verified, now time.Time) bool {
	return now.Before(v.expires.Add(tokenLeeway)) && t.stillVerifies(v, now)
}

// stillVerifies reports whether the key that signed the verified token v still verifies
// at now.
func (t *tokens) stillVerifies(v verified, now time.Time) bool {
	if v.eddsa {
		_, ok := t.ring.Load().verifying(v.kid, now)
		return ok
	}
	_, err := t.set.Load().verifying(v.kid, now)
	return err == nil
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
	// Mark and Seen are those of the session the token was issued with (its creation
	// timestamp and the owner's sessions_until its node held, one-mark bookmarks): a sign
	// out everywhere ends the token's exemption when it revokes that session
	// (crdt.User.Revokes). Absent in tokens of earlier releases (their iat is used).
	Mark string `json:"hlc,omitempty"`
	Seen string `json:"seen,omitempty"`
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

// signDevice returns a device token for userID under username, issued with the session
// created at mark by a node that held seen as the owner's sessions_until.
func (t *tokens) signDevice(userID, username string, mark, seen crdt.Timestamp) (string, error) {
	now := t.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, deviceClaims{
		Username: username,
		Mark:     oneMark(mark),
		Seen:     oneMark(seen),
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

// oneMark returns the text of a bookmark of ts alone ("" for zero).
func oneMark(ts crdt.Timestamp) string {
	var b crdt.Bookmark
	b.Add(ts)
	return b.String()
}

// parseOneMark reads oneMark's text; anything else is zero.
func parseOneMark(s string) crdt.Timestamp {
	if b, err := crdt.ParseBookmark(s); err == nil {
		if ms := b.Marks(); len(ms) == 1 {
			return ms[0]
		}
	}
	return crdt.Timestamp{}
}

// issuedDevice is when a device token was issued: with the session of timestamp created,
// by a node that held seen as the owner's sessions_until (zero in tokens of earlier
// releases), at iat.
type issuedDevice struct {
	created, seen crdt.Timestamp
	iat           time.Time
}

// deviceOwner returns the id of the account that raw, a valid, unexpired device token of
// ours for a name username, was issued to, and when. A name can change hands (its owner
// erased, or a concurrent registration won), and the owner may have signed out everywhere
// since, so the caller checks both.
func (t *tokens) deviceOwner(raw, username string) (string, issuedDevice, bool) {
	if raw == "" || len(raw) > maxDeviceToken || username == "" {
		return "", issuedDevice{}, false
	}
	var c deviceClaims
	_, err := t.device.ParseWithClaims(raw, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		return t.set.Load().verifying(kid, t.now())
	})
	if err != nil || c.Subject == "" || c.Username != username || c.IssuedAt == nil {
		return "", issuedDevice{}, false
	}
	return c.Subject, issuedDevice{created: parseOneMark(c.Mark), seen: parseOneMark(c.Seen), iat: c.IssuedAt.Time}, true
}
