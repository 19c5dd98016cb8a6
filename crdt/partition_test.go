package crdt_test

import (
	"strings"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"pgregory.net/rapid"
)

func TestPartitionDigits(t *testing.T) {
	if n := 1 << (4 * crdt.PartitionDigits); n != crdt.Partitions {
		t.Fatalf("%d hex digits name %d partitions, want %d", crdt.PartitionDigits, n, crdt.Partitions)
	}
}

// TestIDPartition: an ID that begins with a partition's prefix is placed there; any other
// string is placed somewhere stable in range.
func TestIDPartition(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := rapid.IntRange(0, crdt.Partitions-1).Draw(t, "p")
		rest := rapid.StringMatching(`[0-9a-f]{0,29}`).Draw(t, "rest")
		if got := crdt.IDPartition(crdt.PartitionPrefix(p) + rest); got != p {
			t.Fatalf("IDPartition(%q) = %d, want %d", crdt.PartitionPrefix(p)+rest, got, p)
		}
		s := rapid.String().Draw(t, "any")
		if got := crdt.IDPartition(s); got < 0 || got >= crdt.Partitions || crdt.IDPartition(s) != got {
			t.Fatalf("IDPartition(%q) = %d, want a stable partition in range", s, got)
		}
	})
	for _, id := range []string{"", "ab", "ABC123", "xyz", "0g0"} {
		if got, again := crdt.IDPartition(id), crdt.IDPartition(id); got != again || got < 0 || got >= crdt.Partitions {
			t.Errorf("IDPartition(%q) = %d then %d", id, got, again)
		}
	}
}

// TestKeyHomes: a user's claim, record and sessions share the name's partition; a
// conversation's entries live with both participants.
func TestKeyHomes(t *testing.T) {
	p := crdt.NamePartition("alice")
	user := crdt.PartitionPrefix(p) + "11112222333344445555666677778"
	sess := crdt.PartitionPrefix(p) + "99998888777766665555444433332"
	q := (p + 1) % crdt.Partitions
	bob := crdt.PartitionPrefix(q) + "aaaabbbbccccddddeeeeffff00001"
	conv := crdt.ConversationID(user, bob)
	for _, tc := range []struct {
		name, key string
		want      []int
	}{
		{"Claim", crdt.ClaimKey("alice"), []int{p}},
		{"User", crdt.UserKey(user), []int{p}},
		{"Session", crdt.SessionKey(sess), []int{p}},
		{"Entry", crdt.LogPrefix + conv + "/0011", []int{min(p, q), max(p, q)}},
		{"EntryWithSelf", crdt.LogPrefix + crdt.ConversationID(user, user) + "/0011", []int{p}},
		{"ClusterWide", crdt.ClusterPrefix + "app/shop", []int{crdt.ClusterPartition}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := crdt.KeyHomes(tc.key).Append(nil)
			if len(got) != len(tc.want) || got[0] != tc.want[0] || got[len(got)-1] != tc.want[len(tc.want)-1] {
				t.Errorf("KeyHomes(%q) = %v, want %v", tc.key, got, tc.want)
			}
		})
	}
	if a, b := crdt.ConversationHomes(crdt.ConversationID(user, bob)), crdt.ConversationHomes(crdt.ConversationID(bob, user)); a != b {
		t.Errorf("ConversationHomes depends on the order of the participants: %v, %v", a.Append(nil), b.Append(nil))
	}
	rapid.Check(t, func(t *rapid.T) {
		k := rapid.String().Draw(t, "key")
		h := crdt.KeyHomes(k)
		for _, l := range h.Append(nil) {
			if l < 0 || l >= crdt.Partitions || !h.Contains(l) {
				t.Fatalf("KeyHomes(%q) = %v, want partitions in range", k, h.Append(nil))
			}
		}
		if crdt.KeyHomes(k) != h {
			t.Fatalf("KeyHomes(%q) is not stable", k)
		}
	})
}

// TestNamePartitionSpread: usernames spread over the partitions (no partition takes more
// than a few times its share of 100,000 names).
func TestNamePartitionSpread(t *testing.T) {
	counts := make([]int, crdt.Partitions)
	const n = 100_000
	var b strings.Builder
	for i := range n {
		b.Reset()
		b.WriteString("user")
		for j := i; j > 0; j /= 10 {
			b.WriteByte(byte('0' + j%10))
		}
		counts[crdt.NamePartition(b.String())]++
	}
	mean := float64(n) / crdt.Partitions
	for p, c := range counts {
		if float64(c) > 3*mean {
			t.Fatalf("partition %d holds %d of %d names (mean %.1f)", p, c, n, mean)
		}
	}
}
