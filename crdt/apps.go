package crdt

import (
	"crypto/sha256"
	"encoding/hex"
)

// App credentials. An app (a website's backend, say) calls the service API with an API
// key; the node keeps, per app, a cluster-wide record (ClusterPrefix, so every node holds
// it whatever the replication factor, and authenticates the app locally) with a hash of
// the key, never the key itself.
//
// An app's record: the key's hash (first-writer-wins: of two creations of one name on
// nodes that had not heard of each other, the earlier in HLC order wins everywhere, and the
// other's key stops working once they meet), and the revoked flag (monotonic: a late
// or concurrent write of the record cannot bring a revoked key back). A name is never
// reused: a revoked app's record stays, so a new app cannot inherit the old one's
// subjects and sessions.
const (
	// AppPrefix begins the key of an app's record: g/app/<name>.
	AppPrefix = ClusterPrefix + "app/"

	FieldAppKey     = "key"     // FWW: the hash of the app's API key; its TS is the creation time
	FieldAppRevoked = "revoked" // Flag: the app's key no longer opens anything
)

// AppKey returns the record key of the app called name.
func AppKey(name string) string { return AppPrefix + name }

// App is the typed view of an app's record.
type App struct {
	Name      string
	KeyHash   []byte    // aliases the Map's value
	Created   Timestamp // when the winning key was written; zero: no key (only a revocation arrived)
	Revoked   bool
	RevokedAt Timestamp // the earliest revocation; zero when not revoked
}

// ReadApp returns the typed view of the record m of the app called name.
func ReadApp(name string, m *Map) App {
	a := App{Name: name}
	if f, ok := m.Field(FieldAppKey); ok && f.Kind == KindFWW {
		a.KeyHash, a.Created = f.Value, f.TS
	}
	a.RevokedAt, a.Revoked = m.Flag(FieldAppRevoked)
	return a
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
