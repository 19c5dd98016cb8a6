package functions

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// App is an app's credentials as the admin routes show them (package api owns the JSON).
type App = api.App

// view returns the API's view of app a at now, with what it stores when a.Meter is set.
func (ap *Apps) view(a crdt.App, now time.Time) App {
	out := App{Name: a.Name, CreatedAt: a.Created.Time(), Revoked: a.Revoked, Keys: []api.AppKey{}}
	if ap.Meter != nil {
		u := ap.Meter.AppUsage(a.Name)
		out.Stored = &api.AppStored{Records: u.Records, Bytes: u.Bytes}
	}
	if a.HasQuota {
		mib := int64(-1)
		if a.Quota >= 0 {
			mib = a.Quota >> 20
		}
		out.QuotaMiB = &mib
	}
	if a.Revoked {
		t := a.RevokedAt.Time()
		out.RevokedAt = &t
	}
	if !a.SessionsUntil.IsZero() {
		t := a.SessionsUntil.Time()
		out.SessionsEndedAt = &t
	}
	for _, k := range a.Keys {
		if !k.Retires.IsZero() && !now.Before(k.Retires) {
			continue
		}
		v := api.AppKey{ID: k.ID, CreatedAt: k.Created.Time()}
		if !k.Retires.IsZero() {
			t := k.Retires
			v.RetiresAt = &t
		}
		out.Keys = append(out.Keys, v)
	}
	return out
}

// Limits of app credentials.
const (
	MinAppName = 2
	MaxAppName = 32
	// MaxApps bounds the apps one node creates: revoked ones count, since their records
	// stay (a name is never reused). Nodes that cannot reach each other may each create up
	// to it; List shows at most twice as many.
	MaxApps = 1000
	// MaxAppKeys bounds an app's keys, its first included: a key's record field stays
	// after it retires (a monthly rotation for eight years fits). Past it, create a new app.
	MaxAppKeys = 100
	// MaxAppKeyGrace bounds how long a rotation lets the older keys keep working.
	MaxAppKeyGrace = 30 * 24 * time.Hour
)

// ValidAppName checks an app's name: MinAppName to MaxAppName of [a-z0-9-], beginning
// with a letter or digit. The name appears in the app's API key, between '_'s.
func ValidAppName(name string) error {
	if len(name) < MinAppName || len(name) > MaxAppName {
		return Errorf(EInvalid, "app name must be %d to %d characters", MinAppName, MaxAppName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0) {
			return Errorf(EInvalid, "app name may contain only a-z, 0-9 and '-' (not first)")
		}
	}
	return nil
}

// APIKey is an app's API key:
//
//	sdapp_<app>_<secret: 64 hex digits>[.<bookmark>]
//
// The secret is 256 random bits; the node keeps only its hash (KeyHash). The bookmark,
// when present, is that of the app's creation (crdt.Bookmark's text form): a node that
// does not yet hold the app's record meets it before refusing the key, so a key works on
// every node as soon as it is printed. It is advisory: the key authenticates without it.
type APIKey struct {
	App      string
	Secret   [32]byte
	Bookmark crdt.Bookmark
}

// APIKeyPrefix begins every API key, so that a key is told from a session token at a
// glance (and by secret scanners).
const APIKeyPrefix = "sdapp_"

// MaxAPIKey bounds the text of an API key ParseAPIKey reads.
const MaxAPIKey = len(APIKeyPrefix) + MaxAppName + 1 + 64 + 1 + crdt.MaxBookmarkText

var errMalformedKey = Errorf(EUnauthorized, "malformed API key: want "+APIKeyPrefix+"<app>_<64 hex digits>, as `sessiond apps create` printed it")

// IsAPIKey reports whether s looks like an API key (its prefix): a credential that opens
// the service routes only.
func IsAPIKey(s string) bool { return strings.HasPrefix(s, APIKeyPrefix) }

// ParseAPIKey parses the text of an API key. Any fault is EUnauthorized.
func ParseAPIKey(s string) (APIKey, error) {
	var k APIKey
	rest, ok := strings.CutPrefix(s, APIKeyPrefix)
	if !ok || len(s) > MaxAPIKey {
		return k, errMalformedKey
	}
	name, rest, ok := strings.Cut(rest, "_")
	if !ok || ValidAppName(name) != nil {
		return k, errMalformedKey
	}
	secret, bm, hasBM := strings.Cut(rest, ".")
	if len(secret) != 2*len(k.Secret) {
		return k, errMalformedKey
	}
	if _, err := hex.Decode(k.Secret[:], []byte(secret)); err != nil {
		return k, errMalformedKey
	}
	if hasBM {
		b, err := crdt.ParseBookmark(bm)
		if err != nil || b.IsZero() || strings.Contains(bm, ",") {
			return k, errMalformedKey
		}
		k.Bookmark = b
	}
	k.App = strings.Clone(name) // s may alias a request buffer
	return k, nil
}

// String returns the text of the key, as ParseAPIKey reads it.
func (k APIKey) String() string {
	s := APIKeyPrefix + k.App + "_" + hex.EncodeToString(k.Secret[:])
	if !k.Bookmark.IsZero() {
		s += "." + k.Bookmark.String()
	}
	return s
}

// keyHashLabel separates the hashes of API keys from any other use of SHA-256.
const keyHashLabel = "sessiond/app-key/v1"

// KeyHash returns what the app's record keeps of the key: the SHA-256 of a label, the
// app's name and the secret. A salt or a slow hash would add nothing: the secret is 256
// random bits, not a password.
func (k APIKey) KeyHash() []byte {
	h := sha256.New()
	h.Write([]byte(keyHashLabel + "\n" + k.App + "\n"))
	h.Write(k.Secret[:])
	return h.Sum(nil)
}

// AppStore is the persistence Apps needs: the node's replica (edge adapts storage.DB).
type AppStore interface {
	Record(ctx context.Context, key string) (crdt.Map, bool, error)
	Update(ctx context.Context, fn func(tx Tx) error) error
	// RecordsUnder returns up to limit records whose keys begin with prefix, in key
	// order, and whether more were left out.
	RecordsUnder(ctx context.Context, prefix string, limit int) ([]string, []crdt.Map, bool, error)
}

// Apps creates, lists, revokes and authenticates app credentials. It holds no state
// between calls and is safe for concurrent use.
type Apps struct {
	Store AppStore
	Clock Clock
	// MaxSkew is the cluster's --max-skew: the window of EndSessions (0: a minute).
	MaxSkew time.Duration
	// Meter, if set, tells what each app stores, which the views show.
	Meter UsageMeter
}

// ErrAppRevoked is what Authenticate returns for the right key of a revoked app.
var ErrAppRevoked = Errorf(EUnauthorized, "this API key's app was revoked")

var errBadAPIKey = Errorf(EUnauthorized, "invalid API key")

// Create creates the app called name and returns it with its API key, whose text the
// caller shows once. A name this node knows of, revoked or not, is EConflict, and so is
// a creation past MaxApps. The key carries the bookmark of the creation.
func (a *Apps) Create(ctx context.Context, name string) (App, APIKey, error) {
	if err := ValidAppName(name); err != nil {
		return App{}, APIKey{}, err
	}
	keys, _, _, err := a.Store.RecordsUnder(ctx, crdt.AppPrefix, MaxApps)
	if err != nil {
		return App{}, APIKey{}, err
	}
	if len(keys) >= MaxApps {
		return App{}, APIKey{}, Errorf(EConflict, "the cluster holds %d apps, revoked ones included, the most it may", len(keys))
	}
	key := APIKey{App: name}
	rand.Read(key.Secret[:]) // never fails (crypto/rand)
	var rec crdt.Map
	err = a.Store.Update(ctx, func(tx Tx) error {
		_, ok, err := tx.Record(crdt.AppKey(name))
		if err != nil {
			return err
		}
		if ok {
			return Errorf(EConflict, "app %q exists (a revoked app keeps its name: choose another)", name)
		}
		ts := a.Clock.Next()
		rec = crdt.NewApp(key.KeyHash(), ts)
		key.Bookmark = crdt.Bookmark{}
		key.Bookmark.Add(ts)
		rec, err = tx.Merge(crdt.AppKey(name), rec)
		return err
	})
	if err != nil {
		return App{}, APIKey{}, err
	}
	return a.view(crdt.ReadApp(name, &rec), a.Clock.PhysicalNow()), key, nil
}

// listBound bounds List: nodes that could not reach each other may each have created up
// to MaxApps.
const listBound = 2 * MaxApps

// List returns the apps this node holds, revoked ones included, by name.
func (a *Apps) List(ctx context.Context) ([]App, error) {
	keys, ms, _, err := a.Store.RecordsUnder(ctx, crdt.AppPrefix, listBound)
	if err != nil {
		return nil, err
	}
	out := make([]App, 0, len(keys))
	now := a.Clock.PhysicalNow()
	for i, k := range keys {
		out = append(out, a.view(crdt.ReadApp(strings.TrimPrefix(k, crdt.AppPrefix), &ms[i]), now))
	}
	return out, nil
}

// Get returns the app called name, as this node holds it, or ENotFound.
func (a *Apps) Get(ctx context.Context, name string) (App, error) {
	if err := ValidAppName(name); err != nil {
		return App{}, err
	}
	m, ok, err := a.Store.Record(ctx, crdt.AppKey(name))
	if err != nil {
		return App{}, err
	}
	if !ok {
		return App{}, Errorf(ENotFound, "no app %q on this node", name)
	}
	return a.view(crdt.ReadApp(name, &m), a.Clock.PhysicalNow()), nil
}

// Revoke revokes the app called name: its key stops opening anything on each node as
// the revocation reaches it, and no later write brings it back. Revoking a revoked app
// changes nothing. An app this node does not hold is ENotFound.
func (a *Apps) Revoke(ctx context.Context, name string) (App, error) {
	return a.updateApp(ctx, name, func(cur *crdt.Map) (crdt.Map, bool) {
		if crdt.ReadApp(name, cur).Revoked {
			return crdt.Map{}, false
		}
		return crdt.RevokeApp(a.Clock.Next()), true
	})
}

// updateApp merges into the record of the app called name, in one transaction, the
// update that write returns for its current state (none when write returns false), and
// returns the app as it then stands. An invalid name is EInvalid; an app this node has
// not received, ENotFound.
func (a *Apps) updateApp(ctx context.Context, name string, write func(cur *crdt.Map) (crdt.Map, bool)) (App, error) {
	if err := ValidAppName(name); err != nil {
		return App{}, err
	}
	var rec crdt.Map
	err := a.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.AppKey(name))
		if err != nil {
			return err
		}
		if !ok {
			return Errorf(ENotFound, "no app %q on this node (one created on another node a moment ago may not have arrived yet)", name)
		}
		update, changes := write(&m)
		if !changes {
			rec = m
			return nil
		}
		rec, err = tx.Merge(crdt.AppKey(name), update)
		return err
	})
	if err != nil {
		return App{}, err
	}
	return a.view(crdt.ReadApp(name, &rec), a.Clock.PhysicalNow()), nil
}

// Rotate adds a new key to the app called name and returns the app and the key, whose
// text the caller shows once: the app's older keys keep working for grace (0 to
// MaxAppKeyGrace; 0: they stop at once), then stop on every node. With endSessions, the
// rotation also ends every session of the app's subjects made so far (EndSessions), in
// the same write. A revoked app, or one with MaxAppKeys keys, is EConflict; one this
// node does not hold, ENotFound. The key carries the bookmark of the rotation, and
// authenticates the same subjects.
func (a *Apps) Rotate(ctx context.Context, name string, grace time.Duration, endSessions bool) (App, APIKey, error) {
	if err := ValidAppName(name); err != nil {
		return App{}, APIKey{}, err
	}
	if grace < 0 || grace > MaxAppKeyGrace {
		return App{}, APIKey{}, Errorf(EInvalid, "grace must be 0 to %d seconds", int64(MaxAppKeyGrace/time.Second))
	}
	key := APIKey{App: name}
	rand.Read(key.Secret[:]) // never fails (crypto/rand)
	var id [8]byte
	rand.Read(id[:])
	var rec crdt.Map
	err := a.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.AppKey(name))
		if err != nil {
			return err
		}
		app := crdt.ReadApp(name, &m)
		switch {
		case !ok || app.Created.IsZero():
			return Errorf(ENotFound, "no app %q on this node (one created on another node a moment ago may not have arrived yet)", name)
		case app.Revoked:
			return Errorf(EConflict, "app %q is revoked: create a new app", name)
		case len(app.Keys) >= MaxAppKeys:
			return Errorf(EConflict, "app %q has %d keys, the most it may: create a new app", name, len(app.Keys))
		}
		ts := a.Clock.Next()
		key.Bookmark = crdt.Bookmark{}
		key.Bookmark.Add(ts)
		up := crdt.RotateApp(hex.EncodeToString(id[:]), key.KeyHash(), grace, ts)
		if endSessions {
			up.Merge(crdt.EndAppSessions(ts, a.maxSkew()))
		}
		rec, err = tx.Merge(crdt.AppKey(name), up)
		return err
	})
	if err != nil {
		return App{}, APIKey{}, err
	}
	return a.view(crdt.ReadApp(name, &rec), a.Clock.PhysicalNow()), key, nil
}

// EndSessions ends every session of the app called name's subjects made so far, on every
// node as the write reaches it: their tokens stop working (401) and introspection says
// inactive, also for sessions made at the same moment on a node that had not received
// the write yet, whose clock may run up to MaxSkew ahead (crdt.App.Ends). Sessions made
// afterwards are not affected. This is the answer to a leaked API key, whose holder may
// have made sessions for any subject: rotate (or revoke) and end them. It works on a
// revoked app too. An app this node does not hold is ENotFound.
func (a *Apps) EndSessions(ctx context.Context, name string) (App, error) {
	return a.updateApp(ctx, name, func(*crdt.Map) (crdt.Map, bool) {
		return crdt.EndAppSessions(a.Clock.Next(), a.maxSkew()), true
	})
}

// MaxAppQuotaMiB bounds an app's own quota (SetQuota): 1 PiB.
const MaxAppQuotaMiB = 1 << 30

// SetQuota gives the app called name a quota of its own, quotaMiB MiB (negative: no
// bound; 0: it may add nothing), in place of the nodes' --app-quota, on every node as the
// write replicates; nil takes it away (the nodes' own applies again). An app this node has
// not received is ENotFound; a quota over MaxAppQuotaMiB is EInvalid. A revoked app's
// quota may be set too (it stores what it stored).
func (a *Apps) SetQuota(ctx context.Context, name string, quotaMiB *int64) (App, error) {
	if quotaMiB != nil && *quotaMiB > MaxAppQuotaMiB {
		return App{}, Errorf(EInvalid, "quota_mib must be at most %d (negative: no bound)", MaxAppQuotaMiB)
	}
	return a.updateApp(ctx, name, func(*crdt.Map) (crdt.Map, bool) {
		if quotaMiB == nil {
			return crdt.ClearAppQuota(a.Clock.Next()), true
		}
		bytes := int64(-1)
		if *quotaMiB >= 0 {
			bytes = *quotaMiB << 20
		}
		return crdt.SetAppQuota(bytes, a.Clock.Next()), true
	})
}

func (a *Apps) maxSkew() time.Duration {
	if a.MaxSkew > 0 {
		return a.MaxSkew
	}
	return time.Minute
}

// Authenticate returns the name of the app whose key k is, checked against the app's
// record on this node: EUnauthorized when there is no such app here, the key is none of
// its keys (compared in constant time), the key was retired by a rotation
// (errKeyRetired), or — ErrAppRevoked — the app was revoked.
func (a *Apps) Authenticate(ctx context.Context, k APIKey) (string, error) {
	m, ok, err := a.Store.Record(ctx, crdt.AppKey(k.App))
	if err != nil {
		return "", err
	}
	if !ok {
		return "", errBadAPIKey
	}
	app := crdt.ReadApp(k.App, &m)
	hash := k.KeyHash()
	match := -1
	for i, key := range app.Keys {
		if subtle.ConstantTimeCompare(key.Hash, hash) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", errBadAPIKey
	}
	if app.Revoked {
		return "", ErrAppRevoked
	}
	if r := app.Keys[match].Retires; !r.IsZero() && !a.Clock.PhysicalNow().Before(r) {
		return "", errKeyRetired
	}
	return app.Name, nil
}

var errKeyRetired = Errorf(EUnauthorized, "this API key was replaced by a rotation (sessiond apps rotate) and has retired: use the new key")
