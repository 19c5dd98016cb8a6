// Package adminauth authenticates an operator's requests to a node's admin routes
// (/v1/admin/) with the cluster key, for the command line tools that talk to a running
// node (sessiond backup, and later tools of the same kind).
//
// A request carries
//
//	Authorization: Sessiond-Admin t=<unix seconds>,n=<nonce>,d=<node>,s=<signature>
//
// where the nonce is 16 random bytes in hex, the node is the base64url identity of the
// node the request is for (its name and a random value drawn at its start: Identity,
// which a node tells in the HeaderIdentity of its GET /healthz answers and of its
// refusals), and the signature is the base64url
// HMAC-SHA256, under a key derived from the cluster key with HKDF-SHA256 and the label
// "sessiond/admin/v1" (Key), of the method, the request target (path and query, as
// sent), the timestamp, the nonce, the node and the SHA-256 of the body, each on its own
// line. A node accepts a request signed under any of its cluster keys (the first signs,
// the others are still accepted during a rotation) for its identity, whose timestamp is
// within Window of its clock, and each nonce once: a captured request can be replayed
// neither later, nor within the window, nor on another node, nor on the same node
// restarted (its identity is new). A signature binds the method, the target, the node and
// the body, so none can be changed.
//
// It imports only the standard library.
package adminauth

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Scheme is the Authorization scheme of admin requests.
const Scheme = "Sessiond-Admin"

// label derives the admin key from a cluster key: no other protocol uses it.
const label = "sessiond/admin/v1"

// Window is how far a request's timestamp may be from the node's clock, either way.
const Window = time.Minute

// maxNode bounds the node name a request may be signed for, in bytes.
const maxNode = 256

// maxNonces bounds the nonces a Verifier remembers: requests signed with the cluster key
// within one Window. Beyond it, Verify refuses with ErrBusy.
const maxNonces = 4096

// Errors of Verify. Every one but ErrBusy means the request is not authenticated.
var (
	ErrMissing   = errors.New("no " + Scheme + " authorization")
	ErrMalformed = errors.New("malformed " + Scheme + " authorization")
	ErrStale     = errors.New("request timestamp outside the accepted window: check the clocks of this host and the node")
	ErrSignature = errors.New("bad signature: wrong cluster key, or the request was altered")
	ErrReplayed  = errors.New("request replayed: each signed request is accepted once")
	ErrOtherNode = errors.New("request signed for another node, or for this one before it restarted: sign it again for " + HeaderIdentity)
	ErrBusy      = errors.New("too many admin requests within the window")
)

// HeaderIdentity is the response header in which a node tells its identity (Identity).
const HeaderIdentity = "X-Sessiond-Admin-Node"

// Key derives the admin key from a cluster key.
func Key(clusterKey []byte) []byte {
	k, err := hkdf.Key(sha256.New, clusterKey, nil, label, 32)
	if err != nil { // only for lengths HKDF cannot produce
		panic(err)
	}
	return k
}

// Sign returns the Authorization header value of a request for the node whose identity
// (Verifier.Identity, told in HeaderIdentity) is node, with
// method, target (the path and query as sent: net/url's URL.RequestURI) and body, signed
// at now under clusterKey.
func Sign(clusterKey []byte, node, method, target string, body []byte, now time.Time) string {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:]) // never fails (crypto/rand)
	t := strconv.FormatInt(now.Unix(), 10)
	n := hex.EncodeToString(nonce[:])
	sig := mac(Key(clusterKey), method, target, t, n, node, body)
	return Scheme + " t=" + t + ",n=" + n + ",d=" + base64.RawURLEncoding.EncodeToString([]byte(node)) +
		",s=" + base64.RawURLEncoding.EncodeToString(sig)
}

func mac(key []byte, method, target, t, nonce, node string, body []byte) []byte {
	bodySum := sha256.Sum256(body)
	h := hmac.New(sha256.New, key)
	for _, s := range []string{label, method, target, t, nonce, node, hex.EncodeToString(bodySum[:])} {
		h.Write([]byte(s))
		h.Write([]byte{'\n'})
	}
	return h.Sum(nil)
}

// Verifier checks signed admin requests. Safe for concurrent use.
type Verifier struct {
	now      func() time.Time
	identity string // requests must be signed for it: the node's name and a random value

	mu     sync.Mutex
	keys   [][]byte             // admin keys, one per cluster key
	nonces map[string]time.Time // accepted nonce → when it leaves the window
}

// NewVerifier returns a Verifier that accepts requests signed under any of clusterKeys
// for its identity: node's name and a random value of its own, so that requests signed
// for an earlier Verifier (a node restarted) are refused. now is its clock (time.Now if
// nil).
func NewVerifier(clusterKeys [][]byte, node string, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	var boot [8]byte
	_, _ = rand.Read(boot[:]) // never fails (crypto/rand)
	v := &Verifier{now: now, identity: node + "/" + hex.EncodeToString(boot[:]), nonces: make(map[string]time.Time)}
	v.SetKeys(clusterKeys)
	return v
}

// Identity returns what requests must be signed for (Sign's node).
func (v *Verifier) Identity() string { return v.identity }

// SetKeys replaces the cluster keys requests may be signed under (key rotation).
func (v *Verifier) SetKeys(clusterKeys [][]byte) {
	keys := make([][]byte, len(clusterKeys))
	for i, k := range clusterKeys {
		keys[i] = Key(k)
	}
	v.mu.Lock()
	v.keys = keys
	v.mu.Unlock()
}

// Verify checks the Authorization header value auth of a request with method, target
// and body. It returns nil for a request signed under one of the keys, within Window of
// the clock, whose nonce it has not accepted before; else one of the package's errors,
// wrapped with detail. It keeps none of its arguments' memory: they may alias buffers the
// caller reuses.
func (v *Verifier) Verify(method, target string, body []byte, auth string) error {
	rest, ok := strings.CutPrefix(auth, Scheme+" ")
	if !ok {
		return ErrMissing
	}
	var t, nonce, node64, sig string
	for _, part := range strings.Split(rest, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			t = val
		case "n":
			nonce = val
		case "d":
			node64 = val
		case "s":
			sig = val
		}
	}
	secs, err := strconv.ParseInt(t, 10, 64)
	if err != nil || len(nonce) != 32 || sig == "" || node64 == "" || len(node64) > 4*maxNode/3+4 {
		return ErrMalformed
	}
	node, err := base64.RawURLEncoding.DecodeString(node64)
	if err != nil {
		return ErrMalformed
	}
	if _, err := hex.DecodeString(nonce); err != nil {
		return ErrMalformed
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return ErrMalformed
	}
	now := v.now()
	at := time.Unix(secs, 0)
	if d := now.Sub(at); d > Window || d < -Window {
		return fmt.Errorf("%w (signed %s, node's clock %s)", ErrStale, at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	match := false
	for _, k := range v.keys {
		if hmac.Equal(got, mac(k, method, target, t, nonce, string(node), body)) {
			match = true
		}
	}
	if !match {
		return ErrSignature
	}
	if string(node) != v.identity {
		return fmt.Errorf("%w (%q; this is %q)", ErrOtherNode, node, v.identity)
	}
	if _, seen := v.nonces[nonce]; seen {
		return ErrReplayed
	}
	if len(v.nonces) >= maxNonces {
		for n, until := range v.nonces {
			if now.After(until) {
				delete(v.nonces, n)
			}
		}
		if len(v.nonces) >= maxNonces {
			return ErrBusy
		}
	}
	// Remembered until the timestamp leaves the window: after that it is stale anyway.
	// Copied: auth may alias a buffer the caller reuses (fasthttp's), which would change
	// the key under the map into the next request's nonce.
	v.nonces[strings.Clone(nonce)] = at.Add(Window)
	return nil
}
