// Package gorillastore keeps the sessions of github.com/gorilla/sessions in sessiond: each
// session is a key of an app's key-value namespace (/v1/service/kv), replicated to every
// region and expiring with the session; the browser holds only the session's id, in a
// cookie signed (and, with an encryption key, encrypted) by securecookie. Store implements
// sessions.Store.
//
//	svc, err := client.NewService(client.Config{Endpoints: endpoints}, apiKey)
//	store := gorillastore.New(svc, hashKey) // hashKey: 32 or 64 random bytes, kept secret
//	session, err := store.Get(r, "session-name")
//	session.Values["user"] = "alice"
//	err = session.Save(r, w)
//
// Every value of Session.Values is a field of its own on the server, and a Save sends only
// the values that changed since the request got the session (a patch): two requests of one
// session served at the same time — by two app servers, or through nodes in two regions —
// that change different values both keep their change. Values keep their Go types through
// gob, as with gorilla's own stores: register the types you store with gob.Register. A
// string value under a string key is stored as a plain JSON string, so backends in other
// languages can read it. A session deleted (Options.MaxAge < 0) stays deleted: a Save of
// it from a request that got it before is dropped, not written back.
//
// The ServiceClient (package client) is the app's: it sends the app's API key, retries and fails
// over between nodes, and keeps the bookmark of every write it made, so every request it
// sends reads the app's own writes, whichever node answers.
//
// # Keys
//
// A session is the key KeyPrefix+id (DefaultKeyPrefix, "gorilla:session:", unless
// KeyPrefix says otherwise), id being 43 characters of base64url, 256 random bits drawn
// by the store. A cookie that verifies but holds an id of another shape — signed with the
// same keys by something else, such as another store — gets a new session without a
// request to the server; and no cookie names a key outside the prefix, so the app's other
// keys are out of a session's reach (keep no key of your own under the prefix, and give
// two Stores of one app different prefixes). Sessions kept by versions of this package
// before the prefix, under the bare id, are not found: their visitors start new sessions
// (sign in again), and the old keys expire on their own.
//
// Limits are the namespace's (docs/API.md): at most 255 values, string keys of at most 126
// bytes of printable UTF-8 (no control or format characters; other keys: at most 126 bytes
// once gob-encoded and base64-encoded), 64 KiB of encoded values per session, and a
// lifetime of at most 90 days (a longer one is cut to 90 days).
package gorillastore

import (
	"bytes"
	"encoding/base64"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"weak"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessiond/sessiond/edge/client"
)

// maxTTL is the longest lifetime the key-value namespace takes (functions.MaxKVTTL).
const maxTTL = 90 * 24 * time.Hour

// maxField is the longest field name the key-value namespace takes.
const maxField = 128

// maxBases bounds the sessions remembered for the requests in flight; beyond it, a Save
// sends the whole session.
const maxBases = 1 << 16

const (
	stringKeyPrefix = "s:" // a string key k is the field "s:"+k
	gobKeyPrefix    = "g:" // another key is "g:" and its gob encoding, base64url
)

// Store is a gorilla/sessions store in sessiond's key-value namespace. Set its fields
// before its first use; it is then safe for concurrent use.
type Store struct {
	// Codecs sign (and encrypt) the cookie that holds the session's id.
	Codecs []securecookie.Codec
	// Options are the cookie options every new session starts with (copied into it).
	// Default: Path "/", MaxAge 30 days, HttpOnly, SameSite Lax; set Secure when the app
	// is served over HTTPS.
	Options *sessions.Options
	// BrowserSessionTTL is how long the server keeps a session whose Options.MaxAge is 0
	// (a cookie that lasts until the browser closes). Default (and when not above 0) 24
	// hours; at most 90 days.
	BrowserSessionTTL time.Duration
	// KeyPrefix begins the key of every session: 1 to 213 bytes of A–Z a–z 0–9 - _ . ~ :
	// @ + =. The store owns every key under it: the app must keep none of its own there.
	// Default (and when empty) DefaultKeyPrefix. Another value makes Get and Save fail.
	KeyPrefix string

	c     *client.ServiceClient
	bases baseCache
}

var _ sessions.Store = (*Store)(nil)

// New returns a Store that keeps sessions in the key-value namespace of the app whose API
// key c sends. keyPairs are securecookie's, as for gorilla's CookieStore: an
// authentication key (32 or 64 bytes) and optionally an encryption key (16, 24 or 32
// bytes), more pairs for key rotation (the first pair signs, all verify).
func New(c *client.ServiceClient, keyPairs ...[]byte) *Store {
	s := &Store{
		Codecs: securecookie.CodecsFromPairs(keyPairs...),
		Options: &sessions.Options{
			Path:     "/",
			MaxAge:   86400 * 30,
			HttpOnly: true,
			SameSite: http.SameSiteLaxMode,
		},
		BrowserSessionTTL: 24 * time.Hour,
		c:                 c,
		bases:             baseCache{m: make(map[weak.Pointer[sessions.Session]]map[string]json.RawMessage)},
	}
	s.MaxAge(s.Options.MaxAge)
	return s
}

// MaxAge sets the lifetime, in seconds, of new sessions and of their cookies' signatures
// (securecookie refuses a cookie signed longer ago). 0 makes cookies last until the
// browser closes (the server keeps the session BrowserSessionTTL); a session is deleted by
// setting its own Options.MaxAge below 0 and saving it.
func (s *Store) MaxAge(age int) {
	s.Options.MaxAge = age
	for _, codec := range s.Codecs {
		if sc, ok := codec.(*securecookie.SecureCookie); ok {
			sc.MaxAge(age)
		}
	}
}

// Get returns the session name of r, from the request's registry: the same *Session for
// every Get of one request. See New for what it returns.
func (s *Store) Get(r *http.Request, name string) (*sessions.Session, error) {
	return sessions.GetRegistry(r).Get(s, name)
}

// New returns the session name of r without caching it in the request's registry. It is
// never nil. When r has no cookie name, or its session does not exist (expired, deleted),
// or the cookie's id is not of the shape the store makes (see Keys in the package
// documentation), the session is new (IsNew, no ID: Save makes a fresh one, never the id
// the client sent). A cookie that does not verify, an invalid KeyPrefix, or a node that
// cannot be reached, gives a new session and the error.
func (s *Store) New(r *http.Request, name string) (*sessions.Session, error) {
	session := sessions.NewSession(s, name)
	opts := *s.Options
	session.Options = &opts
	session.IsNew = true
	cookie, err := r.Cookie(name)
	if err != nil {
		return session, nil
	}
	var id string
	if err := securecookie.DecodeMulti(name, cookie.Value, &id, s.Codecs...); err != nil {
		return session, err
	}
	if !client.IsRandomID(id) {
		return session, nil
	}
	prefix, err := s.prefix()
	if err != nil {
		return session, err
	}
	it, err := s.c.KVGet(r.Context(), prefix+id)
	if errors.Is(err, client.ErrNotFound) {
		return session, nil
	}
	if err != nil {
		return session, err
	}
	values, err := decodeValues(it.Value)
	if err != nil {
		return session, err
	}
	session.ID, session.Values, session.IsNew = id, values, false
	s.bases.put(session, it.Value)
	return session, nil
}

// Save stores session and sets its cookie on w. A session whose Options.MaxAge is below 0
// is deleted for good, and its cookie removed (an ID not of the shape the store makes
// names no session of its own: nothing is deleted). A new session gets a fresh random id;
// an ID of another shape, set by the program, is an error. A session that the same
// program got from the store sends only what changed since; a session deleted meanwhile
// stays deleted: Save drops it, sets no cookie and returns nil. Values whose types gob
// cannot encode, keys the namespace does not take, sessions beyond the namespace's
// limits, and an invalid KeyPrefix are errors and store nothing.
func (s *Store) Save(r *http.Request, w http.ResponseWriter, session *sessions.Session) error {
	name := session.Name()
	prefix, err := s.prefix()
	if err != nil {
		return err
	}
	if session.Options.MaxAge < 0 {
		if client.IsRandomID(session.ID) {
			s.bases.drop(session)
			if err := s.c.KVDelete(r.Context(), prefix+session.ID); err != nil {
				return err
			}
		}
		http.SetCookie(w, sessions.NewCookie(name, "", session.Options))
		return nil
	}
	fields, err := encodeValues(session.Values)
	if err != nil {
		return err
	}
	ttl := s.ttl(session.Options.MaxAge)
	if session.ID == "" {
		session.ID = client.RandomID()
	} else if !client.IsRandomID(session.ID) {
		return fmt.Errorf("gorillastore: session ID %q: want one the store made (%d characters of base64url), or none", session.ID, idLen)
	}
	stored, err := s.store(r, session, prefix+session.ID, fields, ttl)
	if err != nil || !stored {
		return err
	}
	encoded, err := securecookie.EncodeMulti(name, session.ID, s.Codecs...)
	if err != nil {
		return err
	}
	http.SetCookie(w, sessions.NewCookie(name, encoded, session.Options))
	return nil
}

// ttl returns how long the server keeps a session whose cookie's MaxAge is maxAge (> 0
// seconds, or 0 for a browser session): at most 90 days.
func (s *Store) ttl(maxAge int) time.Duration {
	if maxAge > 0 {
		return time.Duration(min(int64(maxAge), int64(maxTTL/time.Second))) * time.Second
	}
	if s.BrowserSessionTTL <= 0 {
		return 24 * time.Hour
	}
	return min(s.BrowserSessionTTL, maxTTL)
}

// store writes fields as session's value, under key: a patch against what was found,
// else whole. It reports false when the session was deleted.
func (s *Store) store(r *http.Request, session *sessions.Session, key string, fields map[string]json.RawMessage, ttl time.Duration) (bool, error) {
	ctx := r.Context()
	if base, ok := s.bases.get(session); ok {
		keepUnchanged(base, fields)
		set, del := client.KVDiff(base, fields)
		_, err := s.c.KVPatch(ctx, key, set, del, ttl)
		switch {
		case err == nil:
			s.bases.put(session, fields)
			return true, nil
		case errors.Is(err, client.ErrKeyDeleted):
			s.bases.drop(session)
			return false, nil
		case !errors.Is(err, client.ErrNotFound): // expired or swept since: written whole below
			return false, err
		}
	}
	_, err := s.c.KVPut(ctx, key, fields, ttl)
	if errors.Is(err, client.ErrKeyDeleted) {
		s.bases.drop(session)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.bases.put(session, fields)
	return true, nil
}

// keepUnchanged gives each field of fields whose value differs from base's in its bytes
// but not in what it decodes to the bytes of base, so that a Save sends only the values
// that changed: gob encodes a map in a random order, so an untouched map value encodes
// differently from one Save to the next, and sending it would overwrite another
// request's change to it.
func keepUnchanged(base, fields map[string]json.RawMessage) {
	for name, raw := range fields {
		old, ok := base[name]
		if !ok || bytes.Equal(old, raw) {
			continue
		}
		var a, b gobValue
		if json.Unmarshal(old, &a) != nil || json.Unmarshal(raw, &b) != nil || a.Gob == nil || b.Gob == nil {
			continue
		}
		va, errA := gobDecode(a.Gob)
		vb, errB := gobDecode(b.Gob)
		if errA == nil && errB == nil && reflect.DeepEqual(va, vb) {
			fields[name] = old
		}
	}
}

// box carries a value through gob: an interface field, so the value's concrete type
// travels with it (types other than the basic ones must be gob.Register'ed).
type box struct{ V any }

// gobValue is the JSON form of a value that is not a string under a string key.
type gobValue struct {
	Gob []byte `json:"gob"` // gob of box{V}; base64 in JSON
}

func gobEncode(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(box{V: v}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func gobDecode(b []byte) (any, error) {
	var x box
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&x); err != nil {
		return nil, err
	}
	return x.V, nil
}

// encodeValues returns the fields that values are stored as.
func encodeValues(values map[any]any) (map[string]json.RawMessage, error) {
	fields := make(map[string]json.RawMessage, len(values))
	for k, v := range values {
		name, err := fieldName(k)
		if err != nil {
			return nil, err
		}
		if str, ok := v.(string); ok {
			if _, strKey := k.(string); strKey {
				b, _ := json.Marshal(str) // a string always marshals
				fields[name] = b
				continue
			}
		}
		g, err := gobEncode(v)
		if err != nil {
			return nil, fmt.Errorf("gorillastore: session value %v: %w", k, err)
		}
		b, _ := json.Marshal(gobValue{Gob: g}) // bytes always marshal
		fields[name] = b
	}
	return fields, nil
}

// fieldName returns the field a session key is stored under. A string key must be what
// the namespace takes in a field name (valid UTF-8 — JSON would change it otherwise — and
// printable), rather than the Save failing on the server.
func fieldName(k any) (string, error) {
	var name string
	if str, ok := k.(string); ok {
		if !utf8.ValidString(str) || !client.PrintableFieldName(str) {
			return "", fmt.Errorf("gorillastore: session key %q: want printable UTF-8 (no control or format characters)", str)
		}
		name = stringKeyPrefix + str
	} else {
		g, err := gobEncode(k)
		if err != nil {
			return "", fmt.Errorf("gorillastore: session key %v: %w", k, err)
		}
		name = gobKeyPrefix + base64.RawURLEncoding.EncodeToString(g)
	}
	if len(name) > maxField {
		return "", fmt.Errorf("gorillastore: session key %.40v…: longer than %d bytes stored", k, maxField-2)
	}
	return name, nil
}

// decodeValues returns the values that fields store (encodeValues' inverse). Fields it
// did not write (another program's) are skipped when their names are not its, and read as
// encoding/json reads into an interface{} when their values are not.
func decodeValues(fields map[string]json.RawMessage) (map[any]any, error) {
	values := make(map[any]any, len(fields))
	for name, raw := range fields {
		var k any
		if str, ok := strings.CutPrefix(name, stringKeyPrefix); ok {
			k = str
		} else if enc, ok := strings.CutPrefix(name, gobKeyPrefix); ok {
			g, err := base64.RawURLEncoding.DecodeString(enc)
			if err != nil {
				return nil, fmt.Errorf("gorillastore: session key %q: %w", name, err)
			}
			if k, err = gobDecode(g); err != nil {
				return nil, fmt.Errorf("gorillastore: session key %q: %w", name, err)
			}
		} else {
			continue
		}
		var gv gobValue
		if len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &gv) == nil && gv.Gob != nil {
			v, err := gobDecode(gv.Gob)
			if err != nil {
				return nil, fmt.Errorf("gorillastore: session value %v: %w", k, err)
			}
			values[k] = v
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("gorillastore: session value %v: %w", k, err)
		}
		values[k] = v
	}
	return values, nil
}

// baseCache remembers, for each *sessions.Session got from the store, the fields it was
// found with (or last saved with), which its Save compares with. gorilla makes a Session
// per request (the request's registry), so the entry lives as long as the Session: it is
// held by a weak pointer and dropped by a cleanup when the Session is collected, whatever
// the request's context.
type baseCache struct {
	mu sync.Mutex
	m  map[weak.Pointer[sessions.Session]]map[string]json.RawMessage
}

func (b *baseCache) put(s *sessions.Session, fields map[string]json.RawMessage) {
	k := weak.Make(s)
	b.mu.Lock()
	_, had := b.m[k]
	if !had && len(b.m) >= maxBases {
		b.mu.Unlock()
		return
	}
	b.m[k] = maps.Clone(fields)
	b.mu.Unlock()
	if !had {
		runtime.AddCleanup(s, b.forget, k)
	}
}

func (b *baseCache) forget(k weak.Pointer[sessions.Session]) {
	b.mu.Lock()
	delete(b.m, k)
	b.mu.Unlock()
}

func (b *baseCache) get(s *sessions.Session) (map[string]json.RawMessage, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.m[weak.Make(s)]
	return f, ok
}

func (b *baseCache) drop(s *sessions.Session) { b.forget(weak.Make(s)) }

func (b *baseCache) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}
