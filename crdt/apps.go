package crdt

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"slices"
	"strings"
	"time"
)

// App credentials. An app (a website's backend, say) calls the service API with an API
// key; the node keeps, per app, a cluster-wide record (ClusterPrefix, so every node holds
// it whatever the replication factor, and authenticates the app locally) with a hash of
// the key, never the key itself.
//
// An app's record: the key's hash (first-writer-wins: of two creations of one name on
// nodes that had not heard of each other, the earlier in HLC order wins everywhere, and the
// other's key stops working once they meet), the keys that rotations added, and the
// revoked flag (monotonic: a late or concurrent write of the record cannot bring a
// revoked key back). A name is never reused: a revoked app's record stays, so a new app
// cannot inherit the old one's subjects and sessions.
//
// A rotation adds a key (first-writer-wins, under a random ID) with a grace period: every
// older key stops working that long after the rotation (AppKeyInfo.Retires). A key's end
// is a pure function of the keys added after it, and adding one only brings ends closer,
// so no write, late or concurrent, brings a retired key back. Of two rotations at once,
// the later (in HLC order) retires the earlier's key after its own grace.
const (
	// AppPrefix begins the key of an app's record: g/app/<name>.
	AppPrefix = ClusterPrefix + "app/"

	FieldAppKey     = "key"     // FWW: the hash of the app's API key; its TS is the creation time
	FieldAppRevoked = "revoked" // Flag: the app's key no longer opens anything
	// FieldAppKeyPrefix begins the field of a key a rotation added: key/<ID> (FWW), whose
	// value is the key's hash (AppKeyHashSize bytes) and the grace of the keys before it
	// (8 bytes, nanoseconds, big-endian); its TS is the rotation's time.
	FieldAppKeyPrefix = "key/"
	// AppKeyHashSize is the size of a key's hash.
	AppKeyHashSize = 32
	// FieldAppSessionsUntil (Max) ends every session of the app's subjects created at or
	// before its TS, and FieldAppSessionsWindow (Max, wall nanoseconds) those created
	// concurrently up to it, as a user's sign-out everywhere does (User.Revokes): the
	// answer to a leaked key (EndAppSessions).
	FieldAppSessionsUntil  = "sessions_until"
	FieldAppSessionsWindow = "sessions_window"
	// FieldAppQuota (LWW) is the app's own bound on what it stores, set by an operator
	// over the nodes' --app-quota: 8 bytes, big-endian, in bytes; negative: no bound. A
	// tombstone, like no field, leaves the nodes' own.
	FieldAppQuota = "quota"
)

// AppKey returns the record key of the app called name.
func AppKey(name string) string { return AppPrefix + name }

// App is the typed view of an app's record.
type App struct {
	Name      string
	KeyHash   []byte    // the first key's; aliases the Map's value
	Created   Timestamp // when the winning key was written; zero: no key (only a revocation arrived)
	Revoked   bool
	RevokedAt Timestamp // the earliest revocation; zero when not revoked
	// Keys are the app's keys, the first one (ID "0") included when known, oldest first.
	Keys []AppKeyInfo
	// SessionsUntil and SessionsWindow are the latest end of its subjects' sessions
	// (EndAppSessions); zero when there was none. See Ends.
	SessionsUntil  Timestamp
	SessionsWindow int64
	// Quota is the app's own bound on what it stores, in bytes (negative: none), when
	// HasQuota; else the nodes' --app-quota applies. See ReadAppQuota.
	Quota    int64
	HasQuota bool
}

// Ends reports whether the app's latest end of its subjects' sessions ends session s
// (one of its subjects'): s was created at or before SessionsUntil in HLC order, or
// concurrently with it — by a node that had not yet received it (s.AppSeenUntil is
// older) — and stamped no later than SessionsWindow. A session created after its node
// received the end is never ended by it. The rule is User.Revokes's.
func (a App) Ends(s Session) bool {
	if a.SessionsUntil.IsZero() {
		return false
	}
	if !a.SessionsUntil.Less(s.Created) {
		return true
	}
	return s.AppSeenUntil.Less(a.SessionsUntil) && s.Created.Wall <= a.SessionsWindow
}

// AppKeyInfo is one of an app's keys.
type AppKeyInfo struct {
	ID      string // "0" for the key the app was created with
	Hash    []byte // aliases the Map's value
	Created Timestamp
	grace   time.Duration
	// Retires is when the key stops working: Created of the first later key whose grace
	// ends soonest, plus that grace; zero for a key no later key retires.
	Retires time.Time
}

// ReadApp returns the typed view of the record m of the app called name. A rotated key
// whose field is malformed (a peer's bytes) is left out.
func ReadApp(name string, m *Map) App {
	a := App{Name: name}
	if f, ok := m.Field(FieldAppKey); ok && f.Kind == KindFWW {
		a.KeyHash, a.Created = f.Value, f.TS
		a.Keys = append(a.Keys, AppKeyInfo{ID: "0", Hash: f.Value, Created: f.TS})
	}
	for n, f := range m.fields {
		id, ok := strings.CutPrefix(n, FieldAppKeyPrefix)
		if !ok {
			continue
		}
		if f.Kind != KindFWW || len(f.Value) != AppKeyHashSize+8 || id == "" {
			continue
		}
		grace := binary.BigEndian.Uint64(f.Value[AppKeyHashSize:])
		a.Keys = append(a.Keys, AppKeyInfo{ID: id, Hash: f.Value[:AppKeyHashSize:AppKeyHashSize], Created: f.TS,
			grace: time.Duration(min(grace, uint64(math.MaxInt64)))})
	}
	slices.SortFunc(a.Keys, func(x, y AppKeyInfo) int {
		return cmp.Or(x.Created.Compare(y.Created), strings.Compare(x.ID, y.ID))
	})
	// Each key retires at the soonest end of the graces of the keys after it.
	var soonest time.Time
	for i := len(a.Keys) - 1; i >= 0; i-- {
		k := &a.Keys[i]
		k.Retires = soonest
		if end := k.Created.Time().Add(k.grace); i > 0 && (soonest.IsZero() || end.Before(soonest)) {
			soonest = end
		}
	}
	a.RevokedAt, a.Revoked = m.Flag(FieldAppRevoked)
	a.SessionsUntil, a.SessionsWindow = appSessionsEnd(m)
	a.Quota, a.HasQuota = ReadAppQuota(m)
	return a
}

// ReadAppQuota returns the app's own quota from its record m (FieldAppQuota), and false
// when it has none (or a malformed one: a peer's bytes), so the nodes' own applies.
func ReadAppQuota(m *Map) (bytes int64, ok bool) {
	v, ok := m.Get(FieldAppQuota)
	if !ok || len(v) != 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(v)), true // #nosec G115 -- written from an int64
}

// SetAppQuota returns the update, at ts, that gives the app its own quota of bytes
// (negative: no bound) in place of the nodes' --app-quota.
func SetAppQuota(bytes int64, ts Timestamp) Map {
	var m Map
	m.Set(FieldAppQuota, binary.BigEndian.AppendUint64(nil, uint64(bytes)), ts) // #nosec G115 -- read back as int64
	return m
}

// ClearAppQuota returns the update, at ts, that takes the app's own quota away: the
// nodes' --app-quota applies again.
func ClearAppQuota(ts Timestamp) Map {
	var m Map
	m.Delete(FieldAppQuota, ts)
	return m
}

// ReadAppSessionsEnd returns the view of the record m of the app called name that
// checking its subjects' sessions needs (App.Ends): ReadApp's without the keys.
func ReadAppSessionsEnd(name string, m *Map) App {
	a := App{Name: name}
	a.SessionsUntil, a.SessionsWindow = appSessionsEnd(m)
	return a
}

func appSessionsEnd(m *Map) (until Timestamp, window int64) {
	if f, ok := m.Field(FieldAppSessionsUntil); ok && f.Kind == KindMax {
		until = f.TS
	}
	return until, m.MaxOf(FieldAppSessionsWindow)
}

// EndAppSessions returns the update that ends every session of an app's subjects created
// at or before ts, and those created concurrently and stamped up to window after it
// (see App.Ends).
func EndAppSessions(ts Timestamp, window time.Duration) Map {
	var m Map
	m.Raise(FieldAppSessionsUntil, ts.Wall, ts)
	m.Raise(FieldAppSessionsWindow, ts.Wall+int64(window), ts)
	return m
}

// RotateApp returns the update that adds the key with ID id, hashing to keyHash
// (AppKeyHashSize bytes), at ts: the app's older keys stop working grace after ts.
func RotateApp(id string, keyHash []byte, grace time.Duration, ts Timestamp) Map {
	v := binary.BigEndian.AppendUint64(slices.Clip(slices.Clone(keyHash)), uint64(max(grace, 0)))
	var m Map
	m.Claim(FieldAppKeyPrefix+id, v, ts)
	return m
}

// NewApp returns the record of a new app whose API key hashes to keyHash, created at ts.
func NewApp(keyHash []byte, ts Timestamp) Map {
	var m Map
	m.Claim(FieldAppKey, keyHash, ts)
	return m
}

// RevokeApp returns the update that revokes an app's key at ts.
func RevokeApp(ts Timestamp) Map {
	var m Map
	m.SetFlag(FieldAppRevoked, ts)
	return m
}

// subjectLabel separates subject IDs from any other use of SHA-256.
const subjectLabel = "sessiond/subject/v1"

// SubjectID returns the user ID of subject of app: 32 hex digits of the SHA-256 of the
// app's name and the subject, so every node finds a subject's records without a lookup,
// and its partition (IDPartition, the first PartitionDigits digits) is a hash of the pair.
// No two apps share a subject's records. A registered user's ID is random: 116 bits that
// a subject's ID matches with negligible probability, and the record's FieldApp tells
// them apart anyway.
func SubjectID(app, subject string) string {
	h := sha256.New()
	h.Write([]byte(subjectLabel + "\n" + app + "\n" + subject))
	return hex.EncodeToString(h.Sum(nil)[:16])
}
