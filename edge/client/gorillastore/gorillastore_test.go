package gorillastore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/edgetest"
)

// The tests run against a real node in the test process. What they check is what
// gorilla/sessions checks of its stores (store_test.go, sessions_test.go) and what
// well-kept third-party stores check (boj/redistore): a new session saved and loaded,
// flashes, custom types, options copied per session, MaxAge < 0 deleting, expiry, a
// cookie that does not verify, values too large; and, beyond them, what a replicated
// store adds: values of one session changed at once by two requests both survive, a
// deleted session stays deleted, and concurrent use.

var hashKey = bytes.Repeat([]byte{0x17}, 32)

const cookieName = "sid"

// startNode starts a node for the test and returns it with the API key of a new app.
func startNode(t *testing.T) (*edge.Node, string) {
	t.Helper()
	n := edgetest.Start(t, "gorilla-test", func(cfg *edge.Config) { cfg.ServiceRequestsPerApp = 1 << 30 })
	return n, edgetest.CreateApp(t, n, "shop")
}

// newClient returns a client of the app (as another app server would have one).
func newClient(t *testing.T, n *edge.Node, key string) *client.ServiceClient {
	t.Helper()
	return newClientConfig(t, client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}}, key)
}

func newClientConfig(t *testing.T, cfg client.Config, key string) *client.ServiceClient {
	t.Helper()
	c, err := client.NewService(cfg, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Client().CloseIdleConnections)
	return c
}

// request returns a request that carries the cookies a response set. It reads the
// recorder, which is not safe for concurrent use: goroutines sharing a response use
// requestWith its cookies instead.
func request(from *httptest.ResponseRecorder) *http.Request {
	if from == nil {
		return requestWith(nil)
	}
	return requestWith(from.Result().Cookies())
}

// requestWith returns a request that carries cookies.
func requestWith(cookies []*http.Cookie) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	for _, c := range cookies {
		r.AddCookie(c)
	}
	return r
}

// mustGet returns the session of r, failing on an error.
func mustGet(t *testing.T, s *Store, r *http.Request) *sessions.Session {
	t.Helper()
	session, err := s.Get(r, cookieName)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return session
}

// mustSave saves session and returns the response it set the cookie on.
func mustSave(t *testing.T, r *http.Request, session *sessions.Session) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := session.Save(r, w); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return w
}

func TestStore_NewSaveGet(t *testing.T) {
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)

	// Round 1: a request without a cookie gets a new session; flashes are added.
	r := request(nil)
	session := mustGet(t, s, r)
	if !session.IsNew || session.ID != "" || len(session.Values) != 0 {
		t.Fatalf("first Get: IsNew=%v ID=%q Values=%v, want a new empty session", session.IsNew, session.ID, session.Values)
	}
	if again := mustGet(t, s, r); again != session {
		t.Error("a second Get of one request returned another session")
	}
	if flashes := session.Flashes(); len(flashes) != 0 {
		t.Errorf("Flashes=%v, want none", flashes)
	}
	session.AddFlash("foo")
	session.AddFlash("bar")
	session.AddFlash("baz", "custom_key")
	session.Values["user"] = "alice"
	w := mustSave(t, r, session)
	cookies := w.Result().Cookies()
	if len(cookies) != 1 || cookies[0].Name != cookieName || cookies[0].MaxAge != 86400*30 || !cookies[0].HttpOnly {
		t.Fatalf("cookies=%v, want one %q, HttpOnly, Max-Age 30 days", cookies, cookieName)
	}
	if strings.Contains(cookies[0].Value, session.ID) {
		t.Error("the cookie holds the session id in the clear")
	}
	if len(session.ID) != 43 {
		t.Errorf("ID=%q, want 43 characters (256 bits)", session.ID)
	}
	id := session.ID

	// Round 2: the cookie brings the session back, flashes and all; reading flashes
	// consumes them.
	r2 := request(w)
	session = mustGet(t, s, r2)
	if session.IsNew || session.ID != id || session.Values["user"] != "alice" {
		t.Fatalf("second Get: IsNew=%v ID=%q user=%v, want the saved session", session.IsNew, session.ID, session.Values["user"])
	}
	if flashes := session.Flashes(); !reflect.DeepEqual(flashes, []any{"foo", "bar"}) {
		t.Errorf("Flashes=%v, want [foo bar]", flashes)
	}
	if flashes := session.Flashes(); len(flashes) != 0 {
		t.Errorf("Flashes after reading them=%v, want none", flashes)
	}
	if flashes := session.Flashes("custom_key"); !reflect.DeepEqual(flashes, []any{"baz"}) {
		t.Errorf("Flashes(custom_key)=%v, want [baz]", flashes)
	}
	w = mustSave(t, r2, session)

	// Round 3: flashes read and saved are gone; the rest stays.
	session = mustGet(t, s, request(w))
	if flashes := session.Flashes(); len(flashes) != 0 {
		t.Errorf("Flashes in round 3=%v, want none", flashes)
	}
	if session.Values["user"] != "alice" {
		t.Errorf("user=%v, want alice", session.Values["user"])
	}
	// The value is readable by other programs: a string under a string key is JSON.
	it, err := newClient(t, n, key).KVGet(context.Background(), DefaultKeyPrefix+id)
	if err != nil || string(it.Value["s:user"]) != `"alice"` {
		t.Errorf("stored user=%s, %v, want \"alice\"", it.Value["s:user"], err)
	}
}

type cart struct {
	Items []string
	Total int
}

func TestStore_Types(t *testing.T) {
	gob.Register(cart{})
	gob.Register(map[string]int{})
	gob.Register(time.Time{}) // as for gorilla's own stores: types other than the basic ones are registered
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	want := map[any]any{
		"cart":  cart{Items: []string{"tea", "cup"}, Total: 7},
		"count": 42,
		"ratio": 2.5,
		"bytes": []byte{0, 1, 255},
		"when":  time.Date(2029, 5, 6, 7, 8, 9, 10, time.UTC),
		"yes":   true,
		"empty": "",
		7:       "an int key",
		"nil":   nil,
		"strs":  []string{"a", "b"},
		"map":   map[string]int{"x": 1},
		strings.Repeat("k", maxField-len(stringKeyPrefix)): "the longest key",
		"ключ 🔑":   "printable",
		"👩\u200d💻": "a joiner",
	}
	for k, v := range want {
		session.Values[k] = v
	}
	w := mustSave(t, r, session)
	got := mustGet(t, s, request(w)).Values
	if len(got) != len(want) {
		t.Errorf("got %d values, want %d", len(got), len(want))
	}
	for k, v := range want {
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("Values[%v]=%#v, want %#v", k, got[k], v)
		}
	}

	for _, tc := range []struct {
		name string
		k, v any
	}{
		{"ErrUnregistered", "k", struct{ X int }{1}},
		{"ErrLongKey", strings.Repeat("k", maxField-len(stringKeyPrefix)+1), 1},
		{"ErrChannel", "k", make(chan int)},
		{"ErrZeroWidthSpace", "a\u200bb", 1}, // the server refuses format characters
		{"ErrControlKey", "a\nb", 1},
		{"ErrInvalidUTF8", "a\xffb", 1}, // JSON would store it as "a\ufffdb"
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := request(nil)
			session := mustGet(t, s, r)
			session.Values[tc.k] = tc.v
			w := httptest.NewRecorder()
			if err := session.Save(r, w); err == nil {
				t.Fatal("Save succeeded")
			}
			if len(w.Result().Cookies()) != 0 {
				t.Error("a failed Save set a cookie")
			}
		})
	}
	t.Run("ErrTooLarge", func(t *testing.T) {
		r := request(nil)
		session := mustGet(t, s, r)
		session.Values["big"] = strings.Repeat("x", 70<<10)
		w := httptest.NewRecorder()
		if err := session.Save(r, w); !errors.Is(err, client.ErrTooLarge) && !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("Save of 70 KiB: %v, want too_large or invalid_argument", err)
		}
		if len(w.Result().Cookies()) != 0 {
			t.Error("a failed Save set a cookie")
		}
	})
}

// TestStore_OptionsCopied: a session's options are its own (gorilla's GH-8).
func TestStore_OptionsCopied(t *testing.T) {
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)
	session, err := s.New(request(nil), cookieName)
	if err != nil {
		t.Fatal(err)
	}
	s.Options.Path = "/foo"
	if session.Options.Path != "/" {
		t.Errorf("session Path=%q after the store's changed, want /", session.Options.Path)
	}
	session.Options.Domain = "example.org"
	if s.Options.Domain != "" {
		t.Errorf("store Domain=%q after a session's changed, want none", s.Options.Domain)
	}
}

// TestStore_Delete: MaxAge < 0 deletes the session and its cookie, for good: a request
// that got it before and saves after the deletion does not bring it back.
func TestStore_Delete(t *testing.T) {
	n, key := startNode(t)
	c := newClient(t, n, key)
	s := New(c, hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	session.Values["user"] = "alice"
	signedIn := mustSave(t, r, session)
	id := session.ID

	late := request(signedIn) // a request of the same session, served meanwhile
	lateSession := mustGet(t, s, late)

	out := request(signedIn)
	session = mustGet(t, s, out)
	session.Options.MaxAge = -1
	w := mustSave(t, out, session)
	cookies := w.Result().Cookies()
	if len(cookies) != 1 || cookies[0].MaxAge >= 0 || cookies[0].Value != "" {
		t.Fatalf("cookies after delete=%v, want %q removed", cookies, cookieName)
	}
	if _, err := c.KVGet(context.Background(), DefaultKeyPrefix+id); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("KVGet of a deleted session: %v, want not_found", err)
	}

	lateSession.Values["cart"] = 3
	w = httptest.NewRecorder()
	if err := lateSession.Save(late, w); err != nil {
		t.Fatalf("late Save: %v", err)
	}
	if len(w.Result().Cookies()) != 0 {
		t.Error("a Save of a deleted session set a cookie")
	}
	// The old cookie (still validly signed) finds nothing: a new session, which gets a
	// fresh id, not the deleted one.
	again := request(signedIn)
	session = mustGet(t, s, again)
	if !session.IsNew || session.ID != "" || len(session.Values) != 0 {
		t.Fatalf("Get with the deleted session's cookie: IsNew=%v ID=%q Values=%v", session.IsNew, session.ID, session.Values)
	}
	session.Values["user"] = "bob"
	mustSave(t, again, session)
	if session.ID == id || session.ID == "" {
		t.Errorf("the new session's ID=%q, want a fresh one", session.ID)
	}

	// Deleting a session that was never saved sets the cookie's removal only.
	r = request(nil)
	session = mustGet(t, s, r)
	session.Options.MaxAge = -1
	mustSave(t, r, session)
}

// TestStore_Expiry: a session lives as long as its MaxAge; one with MaxAge 0 has a
// browser-session cookie and lives BrowserSessionTTL on the server.
func TestStore_Expiry(t *testing.T) {
	n, key := startNode(t)
	c := newClient(t, n, key)
	s := New(c, hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	session.Options.MaxAge = 1
	session.Values["user"] = "alice"
	w := mustSave(t, r, session)
	deadline := time.Now().Add(10 * time.Second)
	for {
		session := mustGet(t, s, request(w))
		if session.IsNew {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("session still found 10s after its expiry")
		}
		time.Sleep(50 * time.Millisecond)
	}

	s.BrowserSessionTTL = time.Hour
	r = request(nil)
	session = mustGet(t, s, r)
	session.Options.MaxAge = 0
	session.Values["user"] = "alice"
	w = mustSave(t, r, session)
	if ck := w.Result().Cookies(); len(ck) != 1 || ck[0].MaxAge != 0 || !ck[0].Expires.IsZero() {
		t.Errorf("cookie=%v, want one without Max-Age or Expires", ck)
	}
	it, err := c.KVGet(context.Background(), DefaultKeyPrefix+session.ID)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(it.ExpiresAt); left < 59*time.Minute || left > 61*time.Minute {
		t.Errorf("expires in %v, want an hour", left)
	}
}

func TestStore_BadCookie(t *testing.T) {
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	session.Values["user"] = "alice"
	w := mustSave(t, r, session)
	good := w.Result().Cookies()[0]

	for _, tc := range []struct {
		name, value string
	}{
		{"ErrTampered", good.Value[:len(good.Value)-4] + "AAAA"},
		{"ErrGarbage", "not a cookie"},
		{"ErrOtherKey", func() string {
			v, _ := securecookie.New(bytes.Repeat([]byte{1}, 32), nil).Encode(cookieName, session.ID)
			return v
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
			r.AddCookie(&http.Cookie{Name: cookieName, Value: tc.value})
			got, err := s.Get(r, cookieName)
			if err == nil {
				t.Error("Get succeeded")
			}
			if got == nil || !got.IsNew || got.ID != "" || len(got.Values) != 0 {
				t.Errorf("Get=%+v, want a new empty session", got)
			}
		})
	}
	t.Run("UnknownID", func(t *testing.T) {
		// Validly signed, but no such session (a fixation attempt, or one swept): a new
		// session without the client's id.
		v, _ := securecookie.EncodeMulti(cookieName, "chosen-by-the-client", s.Codecs...)
		r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		r.AddCookie(&http.Cookie{Name: cookieName, Value: v})
		got := mustGet(t, s, r)
		if !got.IsNew || got.ID != "" {
			t.Errorf("Get: IsNew=%v ID=%q, want a new session without an id", got.IsNew, got.ID)
		}
		mustSave(t, r, got)
		if got.ID == "chosen-by-the-client" {
			t.Error("Save kept the client's id")
		}
	})
	t.Run("KeyRotation", func(t *testing.T) {
		// A store with a new key first and the old one second reads the old cookies.
		rotated := New(s.c, bytes.Repeat([]byte{0x99}, 32), nil, hashKey, nil)
		got, err := rotated.Get(request(w), cookieName)
		if err != nil || got.Values["user"] != "alice" {
			t.Errorf("Get with rotated keys: %v, %v", got.Values, err)
		}
	})
}

// TestStore_ConcurrentValuesMerge: two app servers, each with its own Store and client,
// serve two requests of one session at once; each changes another value. Both changes
// survive: each Save sends only what its request changed. (A store that wrote the whole
// session would keep only the later Save's.)
func TestStore_ConcurrentValuesMerge(t *testing.T) {
	n, key := startNode(t)
	a, b := New(newClient(t, n, key), hashKey), New(newClient(t, n, key), hashKey)
	r := request(nil)
	session := mustGet(t, a, r)
	session.Values["user"] = "alice"
	session.Values["cart"] = 0
	session.Values["theme"] = "light"
	w := mustSave(t, r, session)

	ra, rb := request(w), request(w)
	sa, sb := mustGet(t, a, ra), mustGet(t, b, rb) // both have the session before either saves
	sa.Values["cart"] = 3
	delete(sb.Values, "theme")
	sb.Values["lang"] = "fr"
	mustSave(t, rb, sb)
	mustSave(t, ra, sa)

	got := mustGet(t, a, request(w)).Values
	want := map[any]any{"user": "alice", "cart": 3, "lang": "fr"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Values=%v, want %v", got, want)
	}

	// A second Save in one request sends what changed since the first.
	r2 := request(w)
	session = mustGet(t, a, r2)
	session.Values["cart"] = 4
	mustSave(t, r2, session)
	other := mustGet(t, b, request(w))
	other.Values["lang"] = "de"
	mustSave(t, request(w), other)
	session.Values["user"] = "alice2"
	mustSave(t, r2, session)
	got = mustGet(t, a, request(w)).Values
	want = map[any]any{"user": "alice2", "cart": 4, "lang": "de"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after two Saves in one request: Values=%v, want %v", got, want)
	}
}

// TestStore_ConcurrentMapValue: gob encodes a map in a random order, so a map value a
// request did not touch encodes differently when it saves. That must not count as a
// change: another request's change to the map, saved in between, stays.
func TestStore_ConcurrentMapValue(t *testing.T) {
	gob.Register(map[string]int{})
	n, key := startNode(t)
	a, b := New(newClient(t, n, key), hashKey), New(newClient(t, n, key), hashKey)
	prefs := map[string]int{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8}
	r := request(nil)
	session := mustGet(t, a, r)
	session.Values["prefs"] = prefs
	session.Values["cart"] = "empty"
	w := mustSave(t, r, session)
	for i := range 10 { // a map of 8 keys encodes the same twice in a row rarely
		ra, rb := request(w), request(w)
		sa, sb := mustGet(t, a, ra), mustGet(t, b, rb)
		changed := maps.Clone(prefs)
		changed["z"] = i
		sb.Values["prefs"] = changed
		mustSave(t, rb, sb)
		sa.Values["cart"] = fmt.Sprint("item", i)
		mustSave(t, ra, sa)
		got := mustGet(t, a, request(w)).Values
		if !reflect.DeepEqual(got["prefs"], changed) || got["cart"] != fmt.Sprint("item", i) {
			t.Fatalf("round %d: Values=%v, want prefs %v and cart item%d", i, got, changed, i)
		}
	}
}

// TestStore_Concurrent: many goroutines get and save sessions at once, each its own and
// one shared, and read back what they wrote to their own.
func TestStore_Concurrent(t *testing.T) {
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)
	r := request(nil)
	shared := mustGet(t, s, r)
	sharedCookies := mustSave(t, r, shared).Result().Cookies()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			var own *httptest.ResponseRecorder
			for i := range 10 {
				r := request(own)
				session, err := s.Get(r, cookieName)
				if err != nil {
					errs <- err
					return
				}
				if i > 0 && session.Values["i"] != i-1 {
					errs <- fmt.Errorf("goroutine %d round %d: i=%v, want %d", g, i, session.Values["i"], i-1)
					return
				}
				session.Values["i"] = i
				w := httptest.NewRecorder()
				if err := session.Save(r, w); err != nil {
					errs <- err
					return
				}
				if own == nil {
					own = w
				}
				r = requestWith(sharedCookies)
				sh, err := s.Get(r, cookieName)
				if err != nil || sh.IsNew {
					errs <- fmt.Errorf("goroutine %d: shared session: IsNew=%v, %v", g, sh.IsNew, err)
					return
				}
				sh.Values[fmt.Sprint("g", g)] = i
				if err := sh.Save(r, httptest.NewRecorder()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every goroutine changed its own value of the shared session: all are there.
	got := mustGet(t, s, requestWith(sharedCookies)).Values
	for g := range 16 {
		if v := got[fmt.Sprint("g", g)]; v != 9 {
			t.Errorf("shared g%d=%v, want 9", g, v)
		}
	}
}

// TestStore_BasesForgotten: what the store remembers of a session goes with the session.
func TestStore_BasesForgotten(t *testing.T) {
	n, key := startNode(t)
	s := New(newClient(t, n, key), hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	w := mustSave(t, r, session)
	for range 20 {
		mustGet(t, s, request(w))
	}
	if got := s.bases.len(); got == 0 {
		t.Fatal("no session remembered")
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.bases.len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still remembered after they were collected", s.bases.len())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStore_TTL(t *testing.T) {
	s := New(nil, hashKey)
	for _, tc := range []struct {
		maxAge  int
		browser time.Duration
		want    time.Duration
	}{
		{60, 0, time.Minute},
		{86400 * 365, 0, maxTTL},
		{math.MaxInt, 0, maxTTL},
		{0, time.Hour, time.Hour},
		{0, 0, 24 * time.Hour},
		{0, -time.Second, 24 * time.Hour},
		{0, 1000 * time.Hour * 24, maxTTL},
	} {
		s.BrowserSessionTTL = tc.browser
		if got := s.ttl(tc.maxAge); got != tc.want {
			t.Errorf("ttl(MaxAge %d, BrowserSessionTTL %v)=%v, want %v", tc.maxAge, tc.browser, got, tc.want)
		}
	}
}

// newRawID returns an id of the shape the store makes.
func newRawID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// signed returns a request whose cookie holds id, signed with s's keys: what another
// store or program that shares the keys would set.
func signed(t *testing.T, s *Store, id string) *http.Request {
	t.Helper()
	v, err := securecookie.EncodeMulti(cookieName, id, s.Codecs...)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	r.AddCookie(&http.Cookie{Name: cookieName, Value: v})
	return r
}

// TestStore_ForeignKeys: the app keeps keys of its own in the namespace, among them some
// that look like sessions. A validly signed cookie that names one (signed by something
// else that shares the keys) gets a new session: the key is neither shown, nor
// overwritten, nor deleted by a MaxAge < 0.
func TestStore_ForeignKeys(t *testing.T) {
	n, key := startNode(t)
	app := newClient(t, n, key)
	ctx := context.Background()
	record := map[string]json.RawMessage{"s:user": json.RawMessage(`"admin"`)}
	foreign := []string{"feature-flags", newRawID(), DefaultKeyPrefix + "short"}
	for _, k := range foreign {
		if _, err := app.KVPut(ctx, k, record, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	var requests atomic.Int32
	s := New(newClientConfig(t, client.Config{
		Endpoints: []string{"http://" + n.HTTPAddr()},
		Observe:   func(client.Attempt) { requests.Add(1) },
	}, key), hashKey)
	for _, k := range foreign {
		for _, maxAge := range []int{0, -1} {
			r := signed(t, s, k)
			session := mustGet(t, s, r)
			if !session.IsNew || session.ID != "" || len(session.Values) != 0 {
				t.Errorf("cookie %q: Get: IsNew=%v ID=%q Values=%v, want a new empty session", k, session.IsNew, session.ID, session.Values)
			}
			session.Values["csrf"] = "x"
			session.Options.MaxAge = maxAge
			mustSave(t, r, session)
			if maxAge >= 0 && (session.ID == k || !client.IsRandomID(session.ID)) {
				t.Errorf("cookie %q: the saved session's ID=%q, want a fresh one", k, session.ID)
			}
		}
	}
	// Requests: for the token-shaped key, a find of prefix+id twice; and one put per
	// saved session.
	if got, want := requests.Load(), int32(2+len(foreign)); got != want {
		t.Errorf("%d requests, want %d", got, want)
	}
	for _, k := range foreign {
		if it, err := app.KVGet(ctx, k); err != nil || string(it.Value["s:user"]) != `"admin"` || len(it.Value) != 1 {
			t.Errorf("app's KVGet(%q)=%s, %v, want its value", k, it.Value, err)
		}
		if _, err := app.KVPut(ctx, k, record, time.Hour); err != nil {
			t.Errorf("app's KVPut(%q): %v, want it written (no tombstone)", k, err)
		}
	}
}

// TestStore_ForeignID: an ID of another shape set by the program is not saved, and not
// deleted.
func TestStore_ForeignID(t *testing.T) {
	n, key := startNode(t)
	c := newClient(t, n, key)
	if _, err := c.KVPut(context.Background(), "feature-flags", map[string]json.RawMessage{"beta": json.RawMessage(`true`)}, time.Hour); err != nil {
		t.Fatal(err)
	}
	s := New(c, hashKey)
	r := request(nil)
	session := mustGet(t, s, r)
	session.ID = "feature-flags"
	w := httptest.NewRecorder()
	if err := session.Save(r, w); err == nil {
		t.Error("Save of a session with a foreign ID succeeded")
	}
	if len(w.Result().Cookies()) != 0 {
		t.Error("a failed Save set a cookie")
	}
	session.Options.MaxAge = -1
	mustSave(t, r, session)
	if it, err := c.KVGet(context.Background(), "feature-flags"); err != nil || string(it.Value["beta"]) != "true" {
		t.Errorf("app's KVGet=%s, %v, want its value", it.Value, err)
	}
}

// TestStore_KeyPrefix: a Store with a KeyPrefix of its own keeps its sessions apart from
// one with the default; an invalid KeyPrefix is an error.
func TestStore_KeyPrefix(t *testing.T) {
	n, key := startNode(t)
	c := newClient(t, n, key)
	a, b := New(c, hashKey), New(c, hashKey)
	b.KeyPrefix = "admin:session:"
	r := request(nil)
	session := mustGet(t, b, r)
	session.Values["user"] = "root"
	w := mustSave(t, r, session)
	if it, err := c.KVGet(context.Background(), "admin:session:"+session.ID); err != nil || string(it.Value["s:user"]) != `"root"` {
		t.Errorf("KVGet(KeyPrefix+id)=%s, %v", it.Value, err)
	}
	if got := mustGet(t, b, request(w)); got.Values["user"] != "root" {
		t.Errorf("Get=%v, want the saved session", got.Values)
	}
	if got := mustGet(t, a, request(w)); !got.IsNew {
		t.Errorf("the default store's Get=%v, want a new session", got.Values)
	}

	for _, prefix := range []string{"a/b", "a b", "é:", strings.Repeat("p", client.MaxKeyPrefix+1)} {
		bad := New(c, hashKey)
		bad.KeyPrefix = prefix
		if _, err := bad.New(request(w), cookieName); err == nil {
			t.Errorf("KeyPrefix %q: Get succeeded", prefix)
		}
		r := request(nil)
		session, _ := bad.New(r, cookieName)
		if err := session.Save(r, httptest.NewRecorder()); err == nil {
			t.Errorf("KeyPrefix %q: Save succeeded", prefix)
		}
	}
}
