package edge

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// TestTokens_RotateRetires: a rotation that drops a cluster key keeps its token key
// verifying — never signing — until keep has passed, also for a node restarted from the
// same data directory; a node that never held the key does not accept its tokens.
func TestTokens_RotateRetires(t *testing.T) {
	clock := newFakeClock(tokenEpoch)
	dir := t.TempDir()
	const keep = 24 * time.Hour
	tk := newTokens([][]byte{testOldKey}, clock.Now)
	old, err := tk.sign(context.Background(), "u1", "s1", tokenEpoch.Add(keep), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, keys := range [][][]byte{{testOldKey, testKey}, {testKey, testOldKey}, {testKey}} {
		if err := tk.rotate(keys, dir, keep); err != nil {
			t.Fatal(err)
		}
		if _, err := tk.verify(old); err != nil {
			t.Fatalf("after rotating to %d keys, the old token: %v", len(keys), err)
		}
	}
	fresh, err := tk.sign(context.Background(), "u2", "s2", tokenEpoch.Add(time.Hour), crdt.Bookmark{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newTokens([][]byte{testKey}, clock.Now).verify(fresh); err != nil {
		t.Errorf("a token signed after the rotation, on a node with only the new key: %v (signed with a retired key?)", err)
	}

	restarted := newTokens([][]byte{testKey}, clock.Now)
	if err := restarted.loadRetired(dir, [][]byte{testKey}); err != nil {
		t.Fatal(err)
	}
	if _, err := restarted.verify(old); err != nil {
		t.Errorf("the old token on a node restarted from the same data: %v", err)
	}
	if _, err := newTokens([][]byte{testKey}, clock.Now).verify(old); err == nil {
		t.Errorf("the old token on a node that never held the old key: accepted")
	}

	clock.Add(keep + time.Second)
	later := newTokens([][]byte{testKey}, clock.Now)
	if err := later.loadRetired(dir, [][]byte{testKey}); err != nil {
		t.Fatal(err)
	}
	for name, x := range map[string]*tokens{"running": tk, "restarted": later} {
		if _, ok := x.set.Load().keys[keyID(deriveKey(testOldKey, purposeJWT))]; ok && name == "restarted" {
			t.Errorf("%s: an expired retired key was loaded", name)
		}
		if _, err := x.set.Load().verifying(keyID(deriveKey(testOldKey, purposeJWT)), clock.Now()); err == nil {
			t.Errorf("%s: the retired key still verifies after keep", name)
		}
	}
	if err := tk.rotate([][]byte{testKey}, dir, keep); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, retiredKeysFile)); !os.IsNotExist(err) {
		t.Errorf("retired keys file after every retired key expired: %v, want it removed", err)
	}
}
