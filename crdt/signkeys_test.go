package crdt_test

import (
	"bytes"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// TestSigningKey: a signing key record read back, and its updates merged in any order on
// several replicas, give every replica the same view: the first public key and start
// written, the latest signed_until and expires_until, the sealings last written and not deleted.
func TestSigningKey(t *testing.T) {
	pub := bytes.Repeat([]byte{7}, 32)
	from := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	created := crdt.Timestamp{Wall: from.Add(-time.Minute).UnixNano(), Node: 3}
	k := crdt.NewSigningKey(pub, from, created)
	got := crdt.ReadSigningKey("kid", &k)
	if got.KID != "kid" || !bytes.Equal(got.Public, pub) || got.Created != created || !got.From.Equal(from) || !got.SignedUntil.IsZero() || !got.ExpiresUntil.IsZero() || got.Sealed != nil {
		t.Fatalf("ReadSigningKey(new) = %+v", got)
	}

	rapid.Check(t, func(t *rapid.T) {
		at := func(i int) crdt.Timestamp { return crdt.Timestamp{Wall: created.Wall + int64(i), Node: 3} }
		var updates []crdt.Map
		until, expires := time.Time{}, time.Time{}
		live := map[string][]byte{}
		for i := range rapid.IntRange(1, 12).Draw(t, "updates") {
			ts := at(i + 1)
			switch rapid.IntRange(0, 3).Draw(t, "kind") {
			case 0:
				u := from.Add(time.Duration(rapid.IntRange(0, 1000).Draw(t, "until")) * time.Second)
				if u.After(until) {
					until = u
				}
				updates = append(updates, crdt.SignedWith(u, ts))
			case 1:
				id := rapid.SampledFrom([]string{"a", "b"}).Draw(t, "seal")
				v := []byte{byte(i)}
				live[id] = v
				updates = append(updates, crdt.SealSigningKey(id, v, ts))
			case 2:
				id := rapid.SampledFrom([]string{"a", "b"}).Draw(t, "unseal")
				delete(live, id)
				updates = append(updates, crdt.UnsealSigningKey([]string{id}, ts))
			case 3:
				e := from.Add(time.Duration(rapid.IntRange(0, 1000).Draw(t, "expires")) * time.Hour)
				if e.After(expires) {
					expires = e
				}
				updates = append(updates, crdt.ExpiresWith(e, ts))
			}
		}
		// A second creation by another node loses to the first (first writer wins).
		updates = append(updates, crdt.NewSigningKey(bytes.Repeat([]byte{8}, 32), from.Add(time.Hour), crdt.Timestamp{Wall: created.Wall + 1000, Node: 9}))
		for r := range 3 {
			m := k.Clone()
			for _, u := range rapid.Permutation(updates).Draw(t, "order") {
				m.Merge(u)
			}
			got := crdt.ReadSigningKey("kid", &m)
			if !bytes.Equal(got.Public, pub) || got.Created != created || !got.From.Equal(from) || !got.SignedUntil.Equal(until) || !got.ExpiresUntil.Equal(expires) {
				t.Fatalf("replica %d: %+v; want the first public key and start, signed until %v, expires until %v", r, got, until, expires)
			}
			if len(got.Sealed) != len(live) {
				t.Fatalf("replica %d: sealings %v, want %v", r, got.Sealed, live)
			}
			for id, v := range live {
				if !bytes.Equal(got.Sealed[id], v) {
					t.Fatalf("replica %d: sealing %q = %v, want %v", r, id, got.Sealed[id], v)
				}
			}
		}
	})
}
