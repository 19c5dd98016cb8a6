package edge

import (
	"crypto/ed25519"
	"encoding/base64"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// TestThumbprint: a kid is the RFC 7638 thumbprint of the key's JWK; the example is RFC
// 8037's (appendix A.3).
func TestThumbprint(t *testing.T) {
	x, err := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if err != nil {
		t.Fatal(err)
	}
	const want = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
	if got := thumbprint(x); got != want {
		t.Errorf("thumbprint = %q, want %q", got, want)
	}
	if !okpKID(want) {
		t.Errorf("okpKID(%q) = false", want)
	}
	for _, kid := range []string{"", "0123456789ab", want[:42], want + "A", want[:42] + "+", want[:42] + "="} {
		if okpKID(kid) {
			t.Errorf("okpKID(%q) = true, want false", kid)
		}
	}
}

// testSignKey is a signing key record made for a test, with its private key.
type testSignKey struct {
	newKey
	priv ed25519.PrivateKey
	rec  crdt.Map
}

// makeSignKey returns a key created at created (node node) that signs from from, sealed
// under clusterKeys.
func makeSignKey(tb testing.TB, clusterKeys [][]byte, created time.Time, node crdt.NodeID, from time.Time) testSignKey {
	tb.Helper()
	k := generateKey(clusterKeys)
	var priv ed25519.PrivateKey
	for _, ck := range clusterKeys {
		p, ok := open([][]byte{ck}, crdt.SigningKey{KID: k.kid, Public: k.public, Sealed: k.sealed})
		if !ok {
			tb.Fatalf("a fresh key does not open under the cluster key it was sealed under")
		}
		priv = p
	}
	return testSignKey{newKey: k, priv: priv, rec: k.record(from, crdt.Timestamp{Wall: created.UnixNano(), Node: node})}
}

// views returns the typed views of keys' records.
func views(keys ...testSignKey) []crdt.SigningKey {
	var out []crdt.SigningKey
	for _, k := range keys {
		m := k.rec.Clone()
		out = append(out, crdt.ReadSigningKey(k.kid, &m))
	}
	return out
}

func kids(ks []*signKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.kid)
	}
	return out
}

// TestKeyRing: which key signs and which keys verify, as time passes and keys are added,
// decided the same way on every node from the records.
func TestKeyRing(t *testing.T) {
	const life = 24 * time.Hour
	t0 := tokenEpoch
	ck := [][]byte{testKey}

	t.Run("OneKey", func(t *testing.T) {
		k1 := makeSignKey(t, ck, t0, 1, t0)
		r, problems := newKeyRing(views(k1), ck, life, time.Now())
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		if s := r.signer(t0.Add(-time.Second)); s != nil {
			t.Errorf("signer before the key's start = %s, want none", s.kid)
		}
		if s := r.signer(t0); s == nil || s.kid != k1.kid || !s.private.Equal(k1.priv) {
			t.Fatalf("signer = %v, want %s with its private key", s, k1.kid)
		}
		if _, ok := r.verifying(k1.kid, t0.Add(100*life)); !ok {
			t.Errorf("the current key stops verifying; it never retires while current")
		}
		if set := r.jwks(t0); len(set.Keys) != 1 || set.Keys[0] != (api.JWK{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k1.public), Kid: k1.kid, Alg: "EdDSA", Use: "sig"}) {
			t.Errorf("jwks = %+v", set)
		}
	})

	t.Run("Rotation", func(t *testing.T) {
		k1 := makeSignKey(t, ck, t0, 1, t0)
		created2, from2 := t0.Add(time.Hour), t0.Add(time.Hour+5*time.Minute)
		k2 := makeSignKey(t, ck, created2, 2, from2)
		r, _ := newKeyRing(views(k2, k1), ck, life, time.Now())
		if got := kids(r.order); !slices.Equal(got, []string{k2.kid, k1.kid}) {
			t.Fatalf("order = %q, want newest first", got)
		}
		// Published at once, signing from its start.
		if got := kids(r.live(created2)); !slices.Equal(got, []string{k2.kid, k1.kid}) {
			t.Errorf("live at the new key's creation = %q, want both", got)
		}
		if s := r.signer(from2.Add(-time.Nanosecond)); s.kid != k1.kid {
			t.Errorf("signer before the new key's start = %s, want the old one", s.kid)
		}
		if st := r.status(r.keys[k2.kid], created2); st != api.KeyNext {
			t.Errorf("new key's status before its start = %s, want next", st)
		}
		if s := r.signer(from2); s.kid != k2.kid {
			t.Errorf("signer at the new key's start = %s, want the new one", s.kid)
		}
		// The old key verifies until the last token it signed (at from2) expires.
		old := r.keys[k1.kid]
		if !old.superseded.Equal(from2) || !old.retires.Equal(from2.Add(life)) {
			t.Errorf("old key superseded %v, retires %v; want %v, %v", old.superseded, old.retires, from2, from2.Add(life))
		}
		if _, ok := r.verifying(k1.kid, from2.Add(life-time.Nanosecond)); !ok {
			t.Errorf("old key does not verify just before it retires")
		}
		if _, ok := r.verifying(k1.kid, from2.Add(life)); ok {
			t.Errorf("old key verifies once retired")
		}
		if got := kids(r.live(from2.Add(life))); !slices.Equal(got, []string{k2.kid}) {
			t.Errorf("live once the old key retired = %q, want the new one alone", got)
		}
		if st := r.status(old, from2.Add(life)); st != api.KeyRetired {
			t.Errorf("old key's status once retired = %s", st)
		}

		// A node reports it signed with the old key after the new one took over (it had
		// not heard of it): the old key verifies until that token expires.
		late := from2.Add(time.Hour)
		m := k1.rec.Clone()
		m.Merge(crdt.SignedWith(late, crdt.Timestamp{Wall: late.UnixNano(), Node: 3}))
		r, _ = newKeyRing([]crdt.SigningKey{crdt.ReadSigningKey(k1.kid, &m), views(k2)[0]}, ck, life, time.Now())
		if got := r.keys[k1.kid].retires; !got.Equal(late.Add(life)) {
			t.Errorf("retires after a late signature = %v, want %v", got, late.Add(life))
		}
	})

	t.Run("ConcurrentCreation", func(t *testing.T) {
		// Two nodes create the first key at once: the later HLC timestamp signs
		// everywhere (then the kid, at equal stamps), and the other verifies.
		a := makeSignKey(t, ck, t0, 1, t0)
		b := makeSignKey(t, ck, t0, 2, t0)
		for _, order := range [][]testSignKey{{a, b}, {b, a}} {
			r, _ := newKeyRing(views(order...), ck, life, time.Now())
			if s := r.signer(t0); s.kid != b.kid {
				t.Errorf("signer = %s, want %s (node 2's stamp is later)", s.kid, b.kid)
			}
			if _, ok := r.verifying(a.kid, t0.Add(life-time.Second)); !ok {
				t.Errorf("the other key does not verify")
			}
		}
	})

	t.Run("NoPrivateKeyHere", func(t *testing.T) {
		// The newest key is sealed under a cluster key this node lacks: it verifies, and
		// the node signs with the newest key it can open.
		k1 := makeSignKey(t, ck, t0, 1, t0)
		k2 := makeSignKey(t, [][]byte{otherKey}, t0.Add(time.Hour), 2, t0.Add(time.Hour))
		r, _ := newKeyRing(views(k1, k2), ck, life, time.Now())
		if s := r.signer(t0.Add(2 * time.Hour)); s == nil || s.kid != k1.kid {
			t.Errorf("signer = %v, want the key this node can open", s)
		}
		if _, ok := r.verifying(k2.kid, t0.Add(2*time.Hour)); !ok {
			t.Errorf("the key sealed elsewhere does not verify")
		}
		if r.keys[k2.kid].private != nil {
			t.Errorf("a key sealed under another cluster key opened")
		}
		// With both cluster keys (a rotation's step 1), it opens.
		r, _ = newKeyRing(views(k1, k2), [][]byte{testKey, otherKey}, life, time.Now())
		if s := r.signer(t0.Add(2 * time.Hour)); s == nil || s.kid != k2.kid {
			t.Errorf("signer with both cluster keys = %v, want the newest", s)
		}
	})

	t.Run("ErrMalformed", func(t *testing.T) {
		good := makeSignKey(t, ck, t0, 1, t0)
		other := makeSignKey(t, ck, t0, 2, t0)
		recs := views(good, other)
		recs[1].KID = good.kid[:len(good.kid)-1] + "x" // a record under a kid not its key's
		short := views(makeSignKey(t, ck, t0, 3, t0))[0]
		short.Public = short.Public[:31]
		recs = append(recs, short)
		r, problems := newKeyRing(recs, ck, life, time.Now())
		if len(problems) != 2 || len(r.order) != 1 || r.order[0].kid != good.kid {
			t.Errorf("ring of %q, problems %v; want the good key alone and two problems", kids(r.order), problems)
		}
	})

	t.Run("Bounded", func(t *testing.T) {
		var keys []testSignKey
		for i := range maxRingKeys + 3 {
			at := t0.Add(time.Duration(i) * time.Minute)
			keys = append(keys, makeSignKey(t, ck, at, 1, at))
		}
		// Long after: every replaced key has retired, so only the newest maxRingKeys stay
		// (TestKeyRingKeepsNeededKeys: one that still verifies stays too).
		later := t0.Add(time.Duration(len(keys))*time.Minute + 2*life)
		r, _ := newKeyRing(views(keys...), ck, life, later)
		if len(r.order) != maxRingKeys || len(r.keys) != maxRingKeys || r.order[0].kid != keys[len(keys)-1].kid {
			t.Errorf("ring holds %d keys (%d by kid), newest %s; want the %d newest", len(r.order), len(r.keys), r.order[0].kid, maxRingKeys)
		}
	})
}

// TestSeal: a sealing opens only under the cluster key it was sealed under and only for
// its own kid, and a tampered one does not open.
func TestSeal(t *testing.T) {
	k := makeSignKey(t, [][]byte{testKey}, tokenEpoch, 1, tokenEpoch)
	rec := crdt.SigningKey{KID: k.kid, Public: k.public, Sealed: k.sealed}
	if _, ok := open([][]byte{otherKey, testKey}, rec); !ok {
		t.Errorf("does not open with the cluster key among others")
	}
	if _, ok := open([][]byte{otherKey}, rec); ok {
		t.Errorf("opens with another cluster key")
	}
	// Moved to another key's record (another kid, same public key claimed).
	other := makeSignKey(t, [][]byte{testKey}, tokenEpoch, 1, tokenEpoch)
	if _, ok := open([][]byte{testKey}, crdt.SigningKey{KID: other.kid, Public: k.public, Sealed: k.sealed}); ok {
		t.Errorf("a sealing opens under another kid")
	}
	if _, ok := open([][]byte{testKey}, crdt.SigningKey{KID: k.kid, Public: other.public, Sealed: k.sealed}); ok {
		t.Errorf("a sealing opens for a record whose public key is not its")
	}
	sealed := slices.Clone(k.sealed[sealID(testKey)])
	sealed[len(sealed)-1] ^= 1
	if _, ok := open([][]byte{testKey}, crdt.SigningKey{KID: k.kid, Public: k.public, Sealed: map[string][]byte{sealID(testKey): sealed}}); ok {
		t.Errorf("a tampered sealing opens")
	}
	if s1, s2 := seal(testKey, k.kid, k.priv), seal(testKey, k.kid, k.priv); slices.Equal(s1, s2) {
		t.Errorf("two sealings of one key are equal: the nonce is not random")
	}
}

// TestKeyRingKeepsNeededKeys: a key that an app's long-lived token keeps verifying stays
// in the ring however many newer keys there are (daily rotations pass maxRingKeys within
// a year), while older keys no longer needed are left out.
func TestKeyRingKeepsNeededKeys(t *testing.T) {
	now := time.Now()
	base := now.Add(-100 * 24 * time.Hour)
	var recs []crdt.SigningKey
	var needed, stale string
	for i := range maxRingKeys + 10 {
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		created := base.Add(time.Duration(i) * 24 * time.Hour)
		ts := crdt.Timestamp{Wall: created.UnixNano(), Node: 1}
		m := crdt.NewSigningKey(pub, created, ts)
		kid := thumbprint(pub)
		switch i {
		case 0: // an app's session of a year signed with it
			m.Merge(crdt.ExpiresWith(now.Add(200*24*time.Hour), ts))
			needed = kid
		case 1:
			stale = kid
		}
		recs = append(recs, crdt.ReadSigningKey(kid, &m))
	}
	r, problems := newKeyRing(recs, nil, 25*time.Hour, now)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if _, ok := r.verifying(needed, now); !ok {
		t.Errorf("the key an app's token still needs left the ring (%d keys in it)", len(r.order))
	}
	if r.has(stale) {
		t.Errorf("a key beyond the newest %d that no token needs is still in the ring", maxRingKeys)
	}
	if len(r.order) != maxRingKeys+1 {
		t.Errorf("%d keys in the ring, want the newest %d and the needed one", len(r.order), maxRingKeys)
	}
}
