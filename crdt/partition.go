package crdt

import "strings"

// Partitions of the key space. Placement (which nodes hold a key) and anti-entropy (which
// keys two nodes compare) work on partitions, not keys: every replicated key lives in one
// or two partitions, its homes, and the digest's leaves are the partitions, so two nodes
// that hold the same partitions compare exactly those leaves.
//
// Homes keep what one request touches together. A user's records — the claim on its
// username, the user record, its sessions — share one partition: the username's hash,
// which the handlers write into the IDs they generate for the user and its sessions (the
// first PartitionDigits hex digits of the ID). A conversation's log entries live in both
// participants' partitions, so each side reads and lists its conversations from its own.
// An ID that does not begin with PartitionDigits lowercase hex digits (none generated
// today; any older or foreign ID) is placed by its hash, consistently everywhere.
const (
	// Partitions is the number of partitions: the digest's leaves.
	Partitions = DigestLeaves
	// PartitionDigits is how many leading hex digits of an ID name its partition.
	PartitionDigits = 3
	// LogPrefix begins the replication key of a log entry: l/<conversation>/<entry id>.
	LogPrefix = "l/"
	// ClusterPartition is held by every node of every region, whatever the replication
	// factor: the cluster-wide records (ClusterPrefix) live there, which every node needs
	// at hand (app credentials, signing keys). It is also the home of the few users whose
	// username hashes to it (1 in Partitions), who are therefore held everywhere too.
	ClusterPartition = 0
	// ClusterPrefix begins the replication key of a cluster-wide record: g/<kind>/<name>.
	ClusterPrefix = "g/"
)

// Homes are the partitions a replicated key lives in: one, or two distinct ones.
type Homes struct {
	first, second int
}

// Home returns Homes of the single partition p.
func Home(p int) Homes { return Homes{p, p} }

// First returns the first (lowest) home.
func (h Homes) First() int { return h.first }

// Second returns the other home, and false when there is only one.
func (h Homes) Second() (int, bool) { return h.second, h.second != h.first }

// Contains reports whether p is one of the homes.
func (h Homes) Contains(p int) bool { return p == h.first || p == h.second }

// Append appends the homes to dst, lowest first.
func (h Homes) Append(dst []int) []int {
	dst = append(dst, h.first)
	if h.second != h.first {
		dst = append(dst, h.second)
	}
	return dst
}

// KeyHomes returns the homes of a replication key: records by the partition of their
// user (UserKey, SessionKey by the ID, ClaimKey by NamePartition), log entries (LogPrefix)
// by ConversationHomes, cluster-wide records (ClusterPrefix) in ClusterPartition,
// anything else by its hash. It is a pure function of the key.
func KeyHomes(key string) Homes {
	switch {
	case strings.HasPrefix(key, UserPrefix):
		return Home(IDPartition(key[len(UserPrefix):]))
	case strings.HasPrefix(key, SessionPrefix):
		return Home(IDPartition(key[len(SessionPrefix):]))
	case strings.HasPrefix(key, ClaimPrefix):
		return Home(NamePartition(key[len(ClaimPrefix):]))
	case strings.HasPrefix(key, ClusterPrefix):
		return Home(ClusterPartition)
	case strings.HasPrefix(key, LogPrefix):
		rest := key[len(LogPrefix):]
		if i := strings.LastIndexByte(rest, '/'); i >= 0 {
			return ConversationHomes(rest[:i])
		}
	}
	return Home(hashPartition(key))
}

// ConversationHomes returns the homes of a conversation's log: its participants'
// partitions (one when they share it).
func ConversationHomes(conv string) Homes {
	a, b, ok := Participants(conv)
	if !ok {
		return Home(hashPartition(conv))
	}
	pa, pb := IDPartition(a), IDPartition(b)
	if pb < pa {
		pa, pb = pb, pa
	}
	return Homes{pa, pb}
}

// NamePartition returns the partition of a username: its user's records live there.
func NamePartition(username string) int { return hashPartition(username) }

// IDPartition returns the partition an ID names in its first PartitionDigits hex digits,
// or, for an ID that does not begin with them, the partition of its hash.
func IDPartition(id string) int {
	if len(id) < PartitionDigits {
		return hashPartition(id)
	}
	p := 0
	for i := range PartitionDigits {
		c := id[i]
		switch {
		case '0' <= c && c <= '9':
			p = p<<4 | int(c-'0')
		case 'a' <= c && c <= 'f':
			p = p<<4 | int(c-'a'+10)
		default:
			return hashPartition(id)
		}
	}
	return p
}

// PartitionPrefix returns the PartitionDigits hex digits that begin an ID placed in p.
func PartitionPrefix(p int) string {
	const hexDigits = "0123456789abcdef"
	var b [PartitionDigits]byte
	for i := PartitionDigits - 1; i >= 0; i-- {
		b[i] = hexDigits[p&0xf]
		p >>= 4
	}
	return string(b[:])
}

// hashPartition spreads arbitrary strings over the partitions: FNV-1a (written out, so
// that it allocates nothing), finished with mix.
func hashPartition(s string) int {
	const offset64, prime64 = 14695981039346656037, 1099511628211
	h := uint64(offset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime64
	}
	return int(mix(h) >> (64 - 4*PartitionDigits))
}
