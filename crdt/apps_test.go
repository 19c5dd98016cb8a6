package crdt_test

import (
	"bytes"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// TestReadAppKeys: each key of an app retires at the soonest end of the graces of the
// keys added after it, whatever order the record's writes merged in; a malformed key
// field (a peer's bytes) is left out.
func TestReadAppKeys(t *testing.T) {
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: base.Add(d).UnixNano(), Node: node}
	}
	hash := func(b byte) []byte { return bytes.Repeat([]byte{b}, crdt.AppKeyHashSize) }
	writes := []crdt.Map{
		crdt.NewApp(hash(0), at(0, 1)),
		crdt.RotateApp("aa", hash(1), 48*time.Hour, at(time.Hour, 1)),
		crdt.RotateApp("bb", hash(2), time.Hour, at(2*time.Hour, 2)), // concurrent with aa on node 2, say
		crdt.RotateApp("cc", hash(3), 30*24*time.Hour, at(3*time.Hour, 1)),
	}
	var bad crdt.Map
	bad.Claim(crdt.FieldAppKeyPrefix+"dd", []byte("short"), at(4*time.Hour, 1))
	writes = append(writes, bad)
	want := map[string]time.Time{
		"0":  base.Add(3 * time.Hour), // bb's: 2h+1h, before aa's 1h+48h and cc's
		"aa": base.Add(3 * time.Hour),
		"bb": base.Add(3*time.Hour + 30*24*time.Hour),
		"cc": {},
	}
	rapid.Check(t, func(t *rapid.T) {
		var m crdt.Map
		for _, i := range rapid.Permutation([]int{0, 1, 2, 3, 4}).Draw(t, "order") {
			m.Merge(writes[i])
		}
		a := crdt.ReadApp("shop", &m)
		if len(a.Keys) != len(want) {
			t.Fatalf("keys %+v, want %d (the malformed one left out)", a.Keys, len(want))
		}
		for i, k := range a.Keys {
			if i > 0 && !a.Keys[i-1].Created.Less(k.Created) {
				t.Fatalf("keys not oldest first: %+v", a.Keys)
			}
			if w, ok := want[k.ID]; !ok || !k.Retires.Equal(w) {
				t.Errorf("key %s retires %v, want %v", k.ID, k.Retires, w)
			}
			if len(k.Hash) != crdt.AppKeyHashSize {
				t.Errorf("key %s hash of %d bytes", k.ID, len(k.Hash))
			}
		}
	})
}
