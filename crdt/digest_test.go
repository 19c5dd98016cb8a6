package crdt_test

import (
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"testing"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// genKeySpace draws a replica's key → canonical value set from small pools, so that two
// draws often agree on most keys.
func genKeySpace() *rapid.Generator[map[string]string] {
	keys := rapid.OneOf(
		rapid.Map(rapid.IntRange(0, 40), func(i int) string { return crdt.SessionKey("s" + strconv.Itoa(i)) }),
		rapid.Map(rapid.IntRange(0, 10), func(i int) string { return crdt.UserKey("u" + strconv.Itoa(i)) }),
		rapid.String(),
	)
	values := rapid.OneOf(rapid.SampledFrom([]string{"", "v1", "v2", "\x00"}), rapid.String())
	return rapid.MapOfN(keys, values, 0, 60)
}

func digestOf(t *rapid.T, kv map[string]string, label string) crdt.Digest {
	var d crdt.Digest
	for _, k := range rapid.Permutation(slices.Sorted(maps.Keys(kv))).Draw(t, label) {
		d.Toggle(k, crdt.PairHash(k, []byte(kv[k])))
	}
	return d
}

// checkShape checks that branches and the root are the XOR of what they cover.
func checkShape(t *rapid.T, d *crdt.Digest) {
	branches := d.Branches()
	empty := true
	for b := range crdt.DigestBranches {
		for i, l := range d.LeavesOf(b) {
			if l != d.Leaf(b*crdt.DigestBranches+i) {
				t.Fatalf("LeavesOf(%d)[%d]=%x, want Leaf(%d)=%x", b, i, l, b*crdt.DigestBranches+i, d.Leaf(b*crdt.DigestBranches+i))
			}
			empty = empty && l == 0
		}
		if branches[b] != d.Branch(b) {
			t.Fatalf("Branches()[%d]=%x, Branch(%d)=%x", b, branches[b], b, d.Branch(b))
		}
	}
	if (d.Root() == 0) != empty {
		t.Fatalf("Root()=%x with all leaves empty: %v", d.Root(), empty)
	}
}

// TestDigestTwoHomes: a key with two homes counts in both leaves, and does not cancel
// itself out of the branch or the root when both leaves are in one branch.
func TestDigestTwoHomes(t *testing.T) {
	key := crdt.LogPrefix + "000aaaa:001bbbb/entry"
	if h := crdt.KeyHomes(key); h.First() != 0 || !h.Contains(1) {
		t.Fatalf("KeyHomes(%q) = %v, want partitions 0 and 1", key, h.Append(nil))
	}
	var d crdt.Digest
	d.Toggle(key, crdt.PairHash(key, []byte("v")))
	if d.Leaf(0) == 0 || d.Leaf(1) != d.Leaf(0) {
		t.Errorf("Leaf(0)=%x Leaf(1)=%x, want the pair's hash in both", d.Leaf(0), d.Leaf(1))
	}
	if d.Branch(0) == 0 || d.Root() == 0 {
		t.Errorf("Branch(0)=%x Root()=%x: the two homes cancelled out", d.Branch(0), d.Root())
	}
}

// TestDigestEqualIffSame: two replicas' digests are equal iff their key → value sets are
// (up to 64-bit hash collisions), whatever order the writes were toggled in.
func TestDigestEqualIffSame(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a := genKeySpace().Draw(t, "a")
		b := maps.Clone(a)
		switch rapid.IntRange(0, 3).Draw(t, "change") {
		case 0: // same set
		case 1:
			b = genKeySpace().Draw(t, "b")
		case 2: // one value changed
			if len(a) > 0 {
				b[rapid.SampledFrom(slices.Sorted(maps.Keys(a))).Draw(t, "key")] += "!"
			}
		case 3: // one key added or removed
			if k := rapid.String().Draw(t, "key"); rapid.Bool().Draw(t, "remove") && len(a) > 0 {
				delete(b, rapid.SampledFrom(slices.Sorted(maps.Keys(a))).Draw(t, "removed"))
			} else {
				b[k] = rapid.String().Draw(t, "value")
			}
		}
		da, db := digestOf(t, a, "orderA"), digestOf(t, b, "orderB")
		checkShape(t, &da)
		if same := maps.Equal(a, b); (da.Root() == db.Root()) != same || (da == db) != same {
			t.Fatalf("Root()=%x vs %x, digests equal=%v, want equal=%v", da.Root(), db.Root(), da == db, same)
		}
	})
}

// TestDigestToggle: toggling a pair in and then out again restores the digest exactly,
// and an update (old pair out, new pair in) equals a digest built from scratch.
func TestDigestToggle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		kv := genKeySpace().Draw(t, "kv")
		d := digestOf(t, kv, "order")
		before := d
		k, v := rapid.String().Draw(t, "key"), rapid.String().Draw(t, "value")
		h := crdt.PairHash(k, []byte(v))
		d.Toggle(k, h)
		if d.Root() == before.Root() {
			t.Fatalf("Toggle(%q) left Root()=%x unchanged", k, d.Root())
		}
		d.Toggle(k, h)
		if d != before {
			t.Fatalf("Toggle(%q) twice: Root()=%x, want %x", k, d.Root(), before.Root())
		}

		// Update k to v: toggle the old pair out, the new in.
		if old, ok := kv[k]; ok {
			d.Toggle(k, crdt.PairHash(k, []byte(old)))
		}
		d.Toggle(k, h)
		kv[k] = v
		if fresh := digestOf(t, kv, "freshOrder"); d != fresh {
			t.Fatalf("updated Root()=%x, want %x (built from scratch)", d.Root(), fresh.Root())
		}
	})
}

// TestDigestDiff walks two digests from the root down, the way anti-entropy does, and
// checks that it finds exactly the differing keys while visiting only the branches and
// leaves that hold them.
func TestDigestDiff(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a := genKeySpace().Draw(t, "a")
		b := maps.Clone(a)
		for range rapid.IntRange(0, 5).Draw(t, "changes") {
			k := rapid.OneOf(rapid.SampledFrom(append(slices.Sorted(maps.Keys(a)), "x")), rapid.String()).Draw(t, "key")
			switch rapid.IntRange(0, 2).Draw(t, "how") {
			case 0:
				delete(b, k)
			case 1:
				b[k] = rapid.String().Draw(t, "value")
			case 2:
				delete(a, k)
			}
		}
		want := make(map[string]bool)
		for k := range a {
			if v, ok := b[k]; !ok || v != a[k] {
				want[k] = true
			}
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				want[k] = true
			}
		}
		wantLeaves := make(map[int]bool)
		for k := range want {
			for _, l := range crdt.KeyHomes(k).Append(nil) {
				wantLeaves[l] = true
			}
		}

		da, db := digestOf(t, a, "orderA"), digestOf(t, b, "orderB")
		got := make(map[string]bool)
		visited := make(map[int]bool)
		if da.Root() != db.Root() {
			ba, bb := da.Branches(), db.Branches()
			for br := range crdt.DigestBranches {
				if ba[br] == bb[br] {
					continue
				}
				la, lb := da.LeavesOf(br), db.LeavesOf(br)
				for i := range la {
					if la[i] == lb[i] {
						continue
					}
					leaf := br*crdt.DigestBranches + i
					visited[leaf] = true
					// Exchange the keys of this leaf and compare their values.
					for _, kv := range []map[string]string{a, b} {
						for k := range kv {
							if !crdt.KeyHomes(k).Contains(leaf) {
								continue
							}
							va, oka := a[k]
							vb, okb := b[k]
							if oka != okb || va != vb {
								got[k] = true
							}
						}
					}
				}
			}
		}
		if !maps.Equal(got, want) {
			t.Fatalf("differing keys found %q, want %q", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
		if !maps.Equal(visited, wantLeaves) {
			t.Fatalf("leaves visited %v, want %v", visited, wantLeaves)
		}
	})
}

func BenchmarkDigestToggle(b *testing.B) {
	var d crdt.Digest
	key := crdt.SessionKey("0f8c1d3e-6a55-4bc0-9a1e-2d3c4b5a6978")
	h := crdt.PairHash(key, make([]byte, 200))
	b.ReportAllocs()
	for b.Loop() {
		d.Toggle(key, h)
	}
}

func BenchmarkDigestRoot(b *testing.B) {
	var d crdt.Digest
	for b.Loop() {
		d.Root()
	}
}

func BenchmarkPairHash(b *testing.B) {
	key := crdt.SessionKey("0f8c1d3e-6a55-4bc0-9a1e-2d3c4b5a6978")
	for _, n := range []int{100, 4096} {
		value := make([]byte, n)
		b.Run(strconv.Itoa(n)+"B", func(b *testing.B) {
			b.SetBytes(int64(len(key) + n))
			b.ReportAllocs()
			for b.Loop() {
				crdt.PairHash(key, value)
			}
		})
	}
}

// TestPairHashIsFNV1a: PairHash is Mix64 of FNV-1a over key, a 0 byte and value — its
// values are part of what nodes of different releases agree on (digest leaves), so they
// must never change: the definition, and known values.
func TestPairHashIsFNV1a(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		key := rapid.String().Draw(t, "key")
		value := rapid.SliceOf(rapid.Byte()).Draw(t, "value")
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write(value)
		if got, want := crdt.PairHash(key, value), crdt.Mix64(h.Sum64()); got != want {
			t.Fatalf("PairHash(%q, %x) = %#x, want %#x", key, value, got, want)
		}
	})
	for _, tc := range []struct {
		key, value string
		want       uint64
	}{
		{"", "", 0x25fc6dd36ce04b20},
		{"s/abc", "v", 0x547bdc5f7ec37373},
	} {
		if got := crdt.PairHash(tc.key, []byte(tc.value)); got != tc.want {
			t.Errorf("PairHash(%q, %q) = %#x, want %#x", tc.key, tc.value, got, tc.want)
		}
	}
}
