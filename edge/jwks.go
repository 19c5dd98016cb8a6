package edge

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
)

// jwksPath is where a node publishes the public keys of session tokens.
const jwksPath = "/.well-known/jwks.json"

// jwksMaxAge is how long a verifier may keep the key set it fetched (Cache-Control). A
// rotation publishes the new key this long before it signs (api.RotateDefaultAfter).
const jwksMaxAge = api.RotateDefaultAfter * time.Second

// jwks serves GET /.well-known/jwks.json: the public keys that verify at this moment
// (keyRing.jwks), for any backend to verify session tokens with. No token needed; any
// origin may read it (CORS); cacheable for jwksMaxAge, with an ETag for revalidation.
func (n *Node) jwks(c *fiber.Ctx) error {
	body, err := json.Marshal(n.tokens.ring.Load().jwks(n.cfg.Now()))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	c.Set(fiber.HeaderCacheControl, "public, max-age="+strconv.Itoa(int(jwksMaxAge.Seconds())))
	c.Set(fiber.HeaderETag, etag)
	c.Set(fiber.HeaderAccessControlAllowOrigin, "*")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	if etagMatches(c.Get(fiber.HeaderIfNoneMatch), etag) {
		return c.SendStatus(fiber.StatusNotModified)
	}
	return c.Send(body)
}

// etagMatches reports whether an If-None-Match header value names etag (RFC 9110,
// section 13.1.2: a list of entity tags, weak ones compared weakly, or *).
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// signingKeys serves GET /v1/admin/keys: the signing keys this node knows and what it
// signs with.
func (n *Node) signingKeys(c *fiber.Ctx) error {
	now := n.cfg.Now()
	ring := n.tokens.ring.Load()
	out := api.SigningKeys{Keys: []api.SigningKey{}, Alg: algEdDSA}
	for _, k := range ring.order {
		out.Keys = append(out.Keys, describeKey(ring, k, now))
	}
	switch {
	case ring.signer(now) == nil:
		out.Alg, out.Note = "HS256", "no signing key this node can open has started signing yet"
	case n.tokens.hs256Only():
		out.Alg, out.Note = "HS256", "a member of the cluster does not verify EdDSA tokens (an older release): EdDSA once every member does"
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(out)
}

// retireKey serves POST /v1/admin/keys/{kid}/retire: the key retires at once on every
// node (a leaked key): its tokens stop verifying and it leaves the key set. 409 for the
// key that signs now (rotate first), 404 for a kid the node does not know.
func (n *Node) retireKey(c *fiber.Ctx) error {
	k, err := n.signing.retire(c.UserContext(), c.Params("kid"))
	if errors.Is(err, errSigningNow) {
		return functions.Errorf(functions.EConflict, "signing key %s may sign now on a node whose clock is within --max-skew of this one's (it signs, starts soon, or was replaced a moment ago): replace and retire it in one step with sessiond keys rotate --after 0 --retire %s", c.Params("kid"), c.Params("kid"))
	}
	if err != nil {
		return err
	}
	return c.JSON(api.RotateKeyResponse{Key: describeKey(n.tokens.ring.Load(), k, n.cfg.Now())})
}

// rotateKey serves POST /v1/admin/keys/rotate: a new signing key, published at once, that
// every node signs with from after_seconds on (api.RotateKeyRequest); the keys it replaces
// verify until their last token expires, but the one retire names is retired at once.
// 429 while maxLiveKeys keys still verify (not counting one it retires), or while
// maxRotations keys were created within rotationWindow.
func (n *Node) rotateKey(c *fiber.Ctx) error {
	req := api.RotateKeyRequest{}
	if len(c.Request().Body()) > 0 { // as sent (see rawBody); decodeJSON refuses a compressed one
		if err := decodeJSON(c, &req); err != nil {
			return err
		}
	}
	after := int64(api.RotateDefaultAfter)
	if req.AfterSeconds != nil {
		after = *req.AfterSeconds
	}
	if after < 0 || after > api.MaxRotateAfter {
		return badRequest("after_seconds must be between 0 and %d", api.MaxRotateAfter)
	}
	if req.Retire != "" && after != 0 {
		return badRequest("retire needs after_seconds 0: the key named is retired as the new one starts")
	}
	if req.Retire != "" && !okpKID(req.Retire) {
		return badRequest("retire must name a signing key's kid (sessiond keys list shows them)")
	}
	k, retired, retry, err := n.signing.rotate(c.UserContext(), time.Duration(after)*time.Second, req.Retire)
	if errors.Is(err, errTooManyRecords) {
		return functions.Errorf(functions.EConflict, "the cluster holds %d signing key records, the most a node reads: no more rotations", maxKeyRecords)
	}
	if errors.Is(err, errTooManyKeys) {
		wait := time.Hour
		if !retry.IsZero() {
			wait = max(retry.Sub(n.cfg.Now()), time.Second)
		}
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(math.Ceil(wait.Seconds())))
		return functions.Errorf(functions.ERateLimited, "%d signing keys still verify: a rotation is refused until the first of them retires (in %s), or until you retire one (sessiond keys retire KID, or rotate with --retire KID)", maxLiveKeys, wait.Round(time.Second))
	}
	if errors.Is(err, errTooManyRotations) {
		wait := max(retry.Sub(n.cfg.Now()), time.Second)
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(math.Ceil(wait.Seconds())))
		return functions.Errorf(functions.ERateLimited, "%d signing keys were created within %s (%d for a rotation that retires one; key records are kept for good, and a node reads at most %d): the next rotation in %s", maxRotations, rotationWindow, 2*maxRotations, maxKeyRecords, wait.Round(time.Second))
	}
	if err != nil {
		return err
	}
	ring, now := n.tokens.ring.Load(), n.cfg.Now() // maybe reloaded since: describe keys as it knows them
	if rk, ok := ring.keys[k.kid]; ok {
		k = rk
	}
	resp := api.RotateKeyResponse{Key: describeKey(ring, k, now)}
	if retired != nil {
		if rk, ok := ring.keys[retired.kid]; ok {
			retired = rk
		}
		d := describeKey(ring, retired, now)
		resp.Retired = &d
	}
	return c.Status(fiber.StatusCreated).JSON(resp)
}
