package scsstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/edgetest"
)

// The tests run against a real node in the test process, as scs's store tests run
// against a real Redis or Postgres: what they check is scs's (memstore_test.go,
// redisstore_test.go) — find after commit, a missing token, overwrite, expiry, delete,
// iteration, concurrent use — and, beyond them, what a replicated store adds: keys of one
// session changed at once by two requests both survive, and a destroyed session stays
// destroyed.

// startNode starts a node for the test and returns it with the API key of a new app.
func startNode(t *testing.T) (*edge.Node, string) {
	t.Helper()
	n := edgetest.Start(t, "scs-test", func(cfg *edge.Config) { cfg.ServiceRequestsPerApp = 1 << 30 })
	return n, edgetest.CreateApp(t, n, "shop")
}

// newService returns a client of the app (as another app server would have one) of n.
func newService(t *testing.T, n *edge.Node, key string) *client.ServiceClient {
	t.Helper()
	return newServiceConfig(t, client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}}, key)
}

func newServiceConfig(t *testing.T, cfg client.Config, key string) *client.ServiceClient {
	t.Helper()
	c, err := client.NewService(cfg, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Client().CloseIdleConnections)
	return c
}

// newStore returns a Store on its own client of n.
func newStore(t *testing.T, n *edge.Node, key string) *Store {
	t.Helper()
	return New(newService(t, n, key))
}

// newToken returns a token as scs makes one (generateToken).
func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

func mustFind(t *testing.T, s *Store, token string) []byte {
	t.Helper()
	b, found, err := s.Find(token)
	if err != nil || !found {
		t.Fatalf("Find(%q)=%v, %v", token, found, err)
	}
	return b
}

func TestStore(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	sessionToken, jsonToken, expiringToken, pastToken, doomedToken := newToken(), newToken(), newToken(), newToken(), newToken()

	t.Run("FindMissing", func(t *testing.T) {
		b, found, err := s.Find(newToken())
		if err != nil || found || b != nil {
			t.Fatalf("Find=%q, %v, %v, want not found", b, found, err)
		}
		if _, found, err := s.Find("not a token/"); err != nil || found {
			t.Fatalf("Find of a malformed token=%v, %v, want not found and no error", found, err)
		}
	})
	t.Run("CommitNew", func(t *testing.T) {
		if err := s.Commit(sessionToken, []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, sessionToken); !bytes.Equal(b, []byte("encoded_data")) {
			t.Fatalf("Find=%q, want encoded_data", b)
		}
		// The session is the key prefix+token, and nothing else.
		if _, err := s.c.KVGet(context.Background(), DefaultKeyPrefix+sessionToken); err != nil {
			t.Errorf("KVGet(prefix+token): %v", err)
		}
		if _, err := s.c.KVGet(context.Background(), sessionToken); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("KVGet(token): %v, want not_found", err)
		}
	})
	t.Run("CommitUpdated", func(t *testing.T) {
		if err := s.Commit(sessionToken, []byte("new_encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, sessionToken); !bytes.Equal(b, []byte("new_encoded_data")) {
			t.Fatalf("Find=%q, want new_encoded_data", b)
		}
	})
	t.Run("CommitJSON", func(t *testing.T) {
		in := []byte(`{"deadline":"2030-01-01T00:00:00Z","v:a":"x","v:n":{"t":"int","v":3}}`)
		if err := s.Commit(jsonToken, in, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, jsonToken); !bytes.Equal(b, in) {
			t.Fatalf("Find=%s, want %s", b, in)
		}
	})
	t.Run("CommitPrintableKeys", func(t *testing.T) {
		// Every key JSONCodec encodes, the server takes.
		values := map[string]any{"ключ 🔑": 1, "👩\u200d💻": "zwj", "a b¿?": true, strings.Repeat("é", maxKey/2): "long"}
		b, err := NewJSONCodec().Encode(time.Now().Add(time.Minute), values)
		if err != nil {
			t.Fatal(err)
		}
		token := newToken()
		if err := s.Commit(token, b, time.Now().Add(time.Minute)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		_, got, err := NewJSONCodec().Decode(mustFind(t, s, token))
		if err != nil || len(got) != len(values) {
			t.Fatalf("Decode=%v, %v, want %d values", got, err, len(values))
		}
	})
	t.Run("Expiry", func(t *testing.T) {
		if err := s.Commit(expiringToken, []byte("encoded_data"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		mustFind(t, s, expiringToken)
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, found, err := s.Find(expiringToken)
			if err != nil {
				t.Fatal(err)
			}
			if !found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("session still found 10s after its expiry")
			}
			time.Sleep(50 * time.Millisecond)
		}
		// A commit with an expiry already past deletes.
		if err := s.Commit(pastToken, []byte("x"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(pastToken, []byte("x"), time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, found, _ := s.Find(pastToken); found {
			t.Error("a session committed with a past expiry is found")
		}
	})
	t.Run("ErrZeroExpiry", func(t *testing.T) {
		// A zero expiry (a session decoded without a deadline) is an error, not a delete.
		token := newToken()
		if err := s.Commit(token, []byte("x"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(token, []byte("y"), time.Time{}); err == nil {
			t.Error("Commit with a zero expiry succeeded")
		}
		if b := mustFind(t, s, token); string(b) != "x" {
			t.Errorf("Find after a commit with a zero expiry=%q, want x", b)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		if err := s.Commit(doomedToken, []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(doomedToken); err != nil {
			t.Fatal(err)
		}
		if _, found, err := s.Find(doomedToken); err != nil || found {
			t.Fatalf("Find after Delete=%v, %v", found, err)
		}
		if err := s.Delete(newToken()); err != nil {
			t.Errorf("Delete of a missing token: %v", err)
		}
		// A commit after the delete (a request that loaded the session before it was
		// destroyed) does not bring it back, and is no error.
		if err := s.Commit(doomedToken, []byte("late"), time.Now().Add(time.Minute)); err != nil {
			t.Errorf("Commit after Delete: %v", err)
		}
		if _, found, _ := s.Find(doomedToken); found {
			t.Error("a deleted session came back")
		}
	})
}

// TestStoreForeignKeys: the app keeps keys of its own in the namespace, among them one
// that looks like a session (a token's shape, a session's value). A token that names
// one — a visitor's cookie can hold any — finds nothing, and neither a commit nor a
// delete of it touches the key.
func TestStoreForeignKeys(t *testing.T) {
	n, key := startNode(t)
	app := newService(t, n, key)
	ctx := context.Background()
	record := map[string]json.RawMessage{
		"deadline": json.RawMessage(`"2099-01-01T00:00:00Z"`),
		"v:user":   json.RawMessage(`"admin"`),
	}
	rawToken := newToken() // a key of the token's shape, without the prefix
	foreign := []string{"feature-flags", rawToken, "scs:session:short"}
	for _, k := range foreign {
		if _, err := app.KVPut(ctx, k, record, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	// Every request the store sends is counted: a token not of scs's shape sends none.
	var requests atomic.Int32
	s := New(newServiceConfig(t, client.Config{
		Endpoints: []string{"http://" + n.HTTPAddr()},
		Observe:   func(client.Attempt) { requests.Add(1) },
	}, key))

	for _, token := range foreign {
		if b, found, err := s.Find(token); err != nil || found {
			t.Errorf("Find(%q)=%q, %v, %v, want not found", token, b, found, err)
		}
		if err := s.Delete(token); err != nil {
			t.Errorf("Delete(%q): %v", token, err)
		}
	}
	if err := s.Commit("feature-flags", []byte("x"), time.Now().Add(time.Minute)); err == nil {
		t.Error("Commit of a malformed token succeeded")
	}
	if err := s.Commit("feature-flags", []byte("x"), time.Now().Add(-time.Minute)); err == nil {
		t.Error("Commit of a malformed token with a past expiry succeeded")
	}
	// Only the token-shaped one is asked for (as prefix+token): a find and a delete.
	if got := requests.Load(); got != 2 {
		t.Errorf("%d requests, want 2 (the find and delete of the token-shaped key)", got)
	}
	// A commit of the token-shaped one, expired or not, writes prefix+token only.
	if err := s.Commit(rawToken, []byte("x"), time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	all, err := s.All()
	if err != nil || len(all) != 0 {
		t.Errorf("All=%v, %v, want no session", all, err)
	}

	for _, k := range foreign {
		if it, err := app.KVGet(ctx, k); err != nil || string(it.Value["v:user"]) != `"admin"` {
			t.Errorf("app's KVGet(%q)=%v, %v, want its value", k, it.Value, err)
		}
		if _, err := app.KVPut(ctx, k, record, time.Hour); err != nil {
			t.Errorf("app's KVPut(%q): %v, want it written (no tombstone)", k, err)
		}
	}
}

func TestNewWithPrefix(t *testing.T) {
	for _, prefix := range []string{"s:", "a", "app.sessions@eu+1=~_-:", strings.Repeat("p", client.MaxKeyPrefix)} {
		if _, err := NewWithPrefix(nil, prefix); err != nil {
			t.Errorf("NewWithPrefix(%q): %v", prefix, err)
		}
	}
	for _, prefix := range []string{"", "a/b", "a b", "é:", "a%3A", strings.Repeat("p", client.MaxKeyPrefix+1)} {
		if _, err := NewWithPrefix(nil, prefix); err == nil {
			t.Errorf("NewWithPrefix(%q) succeeded", prefix)
		}
	}
}

// TestStorePrefixes: two stores of one app with different prefixes keep their sessions
// apart; the same token names two sessions.
func TestStorePrefixes(t *testing.T) {
	n, key := startNode(t)
	c := newService(t, n, key)
	a := New(c)
	b, err := NewWithPrefix(c, "admin:session:")
	if err != nil {
		t.Fatal(err)
	}
	token := newToken()
	if err := a.Commit(token, []byte("shop"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := b.Find(token); err != nil || found {
		t.Fatalf("the other store's Find=%v, %v, want not found", found, err)
	}
	if err := b.Commit(token, []byte("admin"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(token); err != nil {
		t.Fatal(err)
	}
	if got := mustFind(t, a, token); string(got) != "shop" {
		t.Errorf("Find=%q after the other store deleted its session, want shop", got)
	}
	if all, err := b.All(); err != nil || len(all) != 0 {
		t.Errorf("the other store's All=%v, %v, want none", all, err)
	}
}

func TestStoreAll(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	all, err := s.All()
	if err != nil || all == nil || len(all) != 0 {
		t.Fatalf("All of none=%v, %v, want an empty map", all, err)
	}
	// The app's other keys are not sessions.
	for _, k := range []string{"feature-flags", newToken(), DefaultKeyPrefix + "short"} {
		if _, err := s.c.KVPut(context.Background(), k, map[string]json.RawMessage{"a": json.RawMessage("1")}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	want := make(map[string][]byte)
	var tokens []string
	for i := range 250 {
		token := newToken()
		b := []byte(fmt.Sprint("data ", i))
		if err := s.Commit(token, b, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		want[token] = b
		tokens = append(tokens, token)
	}
	for _, token := range []string{tokens[7], tokens[123]} {
		if err := s.Delete(token); err != nil {
			t.Fatal(err)
		}
		delete(want, token)
	}
	all, err = s.AllCtx(context.Background())
	if err != nil || !maps.EqualFunc(all, want, bytes.Equal) {
		t.Fatalf("All: %d sessions, %v; want %d", len(all), err, len(want))
	}
}

// TestStoreAllBounded: a server that keeps giving a next cursor — the same one again,
// or ever new ones — does not keep AllCtx going.
func TestStoreAllBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		next func(i int) string
	}{
		{"ErrSameCursor", func(int) string { return "AAAA" }},
		{"ErrCycle", func(i int) string { return fmt.Sprint("c", i%3) }},
		{"ErrEndless", func(i int) string { return fmt.Sprint("c", i) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pages atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/service/kv" {
					http.NotFound(w, r)
					return
				}
				i := int(pages.Add(1))
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(map[string]any{"items": []any{}, "next": tc.next(i)})
			}))
			t.Cleanup(srv.Close)
			s := New(newServiceConfig(t, client.Config{Endpoints: []string{srv.URL}, MaxAttempts: 1}, "sdapp_test"))
			s.maxPages = 50
			all, err := s.AllCtx(context.Background())
			if err == nil {
				t.Fatalf("AllCtx=%v, want an error", all)
			}
			if got := pages.Load(); got > 50 {
				t.Errorf("%d pages read, want at most 50", got)
			}
		})
	}
}

// TestStoreConcurrent: many goroutines commit, find and delete sessions at once, some
// the same ones; every goroutine reads back what it wrote to its own session.
func TestStoreConcurrent(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	shared := newToken()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			own := newToken()
			for i := range 10 {
				want := []byte(fmt.Sprint(g, ":", i))
				if err := s.Commit(own, want, time.Now().Add(time.Minute)); err != nil {
					errs <- err
					return
				}
				if b, found, err := s.Find(own); err != nil || !found || !bytes.Equal(b, want) {
					errs <- fmt.Errorf("goroutine %d: Find=%q, %v, %v, want %q", g, b, found, err, want)
					return
				}
				if err := s.Commit(shared, want, time.Now().Add(time.Minute)); err != nil {
					errs <- err
					return
				}
				if _, _, err := s.Find(shared); err != nil {
					errs <- err
					return
				}
			}
			if err := s.Delete(own); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, found, _ := s.Find(shared); !found {
		t.Error("the shared session is gone")
	}
}

func TestJSONCodec(t *testing.T) {
	type cart struct {
		Items []string
		Total int
	}
	c := NewJSONCodec()
	c.Register("cart", cart{})
	c.Register("cart-ptr", &cart{})
	deadline := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	values := map[string]any{
		"s": "text", "b": true, "i": 42, "i8": int8(-8), "i16": int16(16), "i32": int32(-32), "i64": int64(1) << 60,
		"u": uint(7), "u8": uint8(8), "u16": uint16(16), "u32": uint32(32), "u64": uint64(1) << 63,
		"f32": float32(1.5), "f64": 2.25, "bytes": []byte{0, 1, 255}, "time": time.Date(2029, 5, 6, 7, 8, 9, 10, time.UTC),
		"nil": nil, "cart": cart{Items: []string{"a"}, Total: 3}, "cart-ptr": &cart{Total: 1},
	}
	b, err := c.Encode(deadline, values)
	if err != nil {
		t.Fatal(err)
	}
	d, got, err := c.Decode(b)
	if err != nil || !d.Equal(deadline) || !reflect.DeepEqual(got, values) {
		t.Fatalf("round trip: %v %v, %v\n got  %#v\n want %#v", d, deadline, err, got, values)
	}
	// The same session encodes to the same bytes: commits compare encodings.
	if b2, _ := c.Encode(deadline, values); !bytes.Equal(b, b2) {
		t.Error("two encodings of one session differ")
	}
	for _, tc := range []struct {
		name string
		v    map[string]any
	}{
		{"ErrUnregistered", map[string]any{"k": struct{ X int }{}}},
		{"ErrEmptyKey", map[string]any{"": 1}},
		{"ErrLongKey", map[string]any{string(bytes.Repeat([]byte("k"), maxKey+1)): 1}},
		{"ErrControlKey", map[string]any{"a\nb": 1}},
		{"ErrZeroWidthSpace", map[string]any{"a\u200bb": 1}}, // the server refuses format characters
		{"ErrBidiOverride", map[string]any{"\u202eab": 1}},
		{"ErrBOM", map[string]any{"\ufeffa": 1}},
		{"ErrInvalidUTF8", map[string]any{"a\xffb": 1}},
	} {
		if _, err := c.Encode(deadline, tc.v); err == nil {
			t.Errorf("%s: Encode succeeded", tc.name)
		}
	}
	// What is not a session with a deadline is refused: scs would take it as a session
	// expiring at the zero time, and commit it as expired.
	for _, tc := range []struct{ name, in string }{
		{"ErrGob", "gob bytes"},
		{"ErrArray", `[1]`},
		{"ErrNull", `null`},
		{"ErrNoDeadline", `{"beta":true,"v:user":"admin"}`},
		{"ErrEmptyObject", `{}`},
		{"ErrDeadlineNumber", `{"deadline":0}`},
		{"ErrDeadlineNull", `{"deadline":null}`},
		{"ErrDeadlineText", `{"deadline":"tomorrow"}`},
		{"ErrZeroDeadline", `{"deadline":"0001-01-01T00:00:00Z","v:user":"admin"}`},
	} {
		if d, v, err := c.Decode([]byte(tc.in)); err == nil {
			t.Errorf("%s: Decode=%v, %v, want an error", tc.name, d, v)
		}
	}
	// Values written by something else decode as encoding/json sees them.
	_, got, err = c.Decode([]byte(`{"deadline":"2030-01-01T00:00:00Z","v:n":3,"v:o":{"a":[1]},"other":1}`))
	if want := map[string]any{"n": 3.0, "o": map[string]any{"a": []any{1.0}}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("foreign values: %#v, %v", got, err)
	}
}

// app is a web app on scs over a Store: GET /put?k=v puts v under key k, GET /get?k=
// writes the value of k, /destroy destroys the session. Handlers block on hold, when
// set, between loading the session and changing it.
type app struct {
	sm   *scs.SessionManager
	srv  *httptest.Server
	hold atomic.Pointer[func()]
}

func newApp(t *testing.T, s *Store) *app {
	a := &app{sm: scs.New()}
	a.sm.Store = s
	a.sm.Codec = NewJSONCodec()
	mux := http.NewServeMux()
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		if h := a.hold.Load(); h != nil {
			(*h)()
		}
		for k, v := range r.URL.Query() {
			a.sm.Put(r.Context(), k, v[0])
		}
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, a.sm.GetString(r.Context(), r.URL.Query().Get("k")))
	})
	mux.HandleFunc("/destroy", func(w http.ResponseWriter, r *http.Request) {
		if err := a.sm.Destroy(r.Context()); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	a.srv = httptest.NewServer(a.sm.LoadAndSave(mux))
	t.Cleanup(a.srv.Close)
	return a
}

func get(t *testing.T, hc *http.Client, url string) string {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// TestConcurrentKeysMerge: two app servers, each with its own Store, serve two requests of
// one session at once; each changes another key. Both changes survive: each commit sends
// only what its request changed. (A store that wrote the whole session would keep only
// the later commit's.)
func TestConcurrentKeysMerge(t *testing.T) {
	n, key := startNode(t)
	a, b := newApp(t, newStore(t, n, key)), newApp(t, newStore(t, n, key))
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	get(t, hc, a.srv.URL+"/put?user=alice&cart=0")
	// The session cookie is for 127.0.0.1: both servers get it.
	var loaded sync.WaitGroup
	loaded.Add(2)
	hold := func() { loaded.Done(); loaded.Wait() } // both requests have found the session
	a.hold.Store(&hold)
	b.hold.Store(&hold)
	var wg sync.WaitGroup
	wg.Go(func() { get(t, hc, a.srv.URL+"/put?cart=3") })
	wg.Go(func() { get(t, hc, b.srv.URL+"/put?theme=dark") })
	wg.Wait()
	a.hold.Store(nil)
	b.hold.Store(nil)
	for k, want := range map[string]string{"user": "alice", "cart": "3", "theme": "dark"} {
		if got := get(t, hc, a.srv.URL+"/get?k="+k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
}

// TestDestroyWins: a request that loaded a session before another destroyed it commits
// after the destruction: the session stays destroyed.
func TestDestroyWins(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	a := newApp(t, s)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	get(t, hc, a.srv.URL+"/put?user=alice")
	u, _ := url.Parse(a.srv.URL)
	cookies := jar.Cookies(u)
	if len(cookies) != 1 {
		t.Fatalf("cookies %v", cookies)
	}
	token := cookies[0].Value
	loaded, destroyed := make(chan struct{}), make(chan struct{})
	hold := func() { close(loaded); <-destroyed }
	a.hold.Store(&hold)
	var wg sync.WaitGroup
	wg.Go(func() { get(t, hc, a.srv.URL+"/put?cart=9") })
	<-loaded
	a.hold.Store(nil)
	if err := s.Delete(token); err != nil { // another request's Destroy
		t.Fatal(err)
	}
	close(destroyed)
	wg.Wait()
	if _, found, err := s.Find(token); err != nil || found {
		t.Errorf("Find after destroy and a late commit=%v, %v, want not found", found, err)
	}
}

// TestVisitorCookie: a visitor's cookie can hold anything, also the name of a key the app
// keeps for itself (Cookie: session=feature-flags), or of one that looks like a session.
// The visitor gets a new session: the key is neither shown nor changed nor deleted, with
// or without an idle timeout (which commits every session a request finds), whether the
// request writes the session or only reads it.
func TestVisitorCookie(t *testing.T) {
	n, key := startNode(t)
	app := newService(t, n, key)
	ctx := context.Background()
	sessionLike := map[string]json.RawMessage{
		"deadline": json.RawMessage(`"2099-01-01T00:00:00Z"`),
		"v:user":   json.RawMessage(`"admin"`),
	}
	foreign := map[string]map[string]json.RawMessage{
		"feature-flags":                {"beta": json.RawMessage(`true`)}, // no deadline
		"admin-session":                sessionLike,
		newToken():                     sessionLike, // a token's shape, without the prefix
		DefaultKeyPrefix + "not-token": sessionLike,
	}
	for k, v := range foreign {
		if _, err := app.KVPut(ctx, k, v, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for _, idle := range []time.Duration{0, 30 * time.Minute} {
		a := newApp(t, newStore(t, n, key))
		a.sm.IdleTimeout = idle
		for k := range foreign {
			for _, path := range []string{"/get?k=user", "/put?csrf=x"} {
				req, _ := http.NewRequest(http.MethodGet, a.srv.URL+path, nil)
				req.AddCookie(&http.Cookie{Name: a.sm.Cookie.Name, Value: k})
				resp, err := a.srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || len(body) != 0 {
					t.Errorf("IdleTimeout %v, cookie %q, GET %s: %d %q, want 200 and no user", idle, k, path, resp.StatusCode, body)
				}
				for _, c := range resp.Cookies() {
					if c.Value == k {
						t.Errorf("IdleTimeout %v, cookie %q, GET %s: the session kept the visitor's token", idle, k, path)
					}
				}
				it, err := app.KVGet(ctx, k)
				if err != nil || !maps.EqualFunc(it.Value, foreign[k], func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
					t.Errorf("IdleTimeout %v, cookie %q, GET %s: app's KVGet=%s, %v, want its value", idle, k, path, it.Value, err)
				}
			}
		}
	}
	// No key got a tombstone: the app writes them all again.
	for k, v := range foreign {
		if _, err := app.KVPut(ctx, k, v, time.Hour); err != nil {
			t.Errorf("app's KVPut(%q): %v", k, err)
		}
	}
}

// TestAppSessions: what an app on scs does with its own sessions still works through the
// prefix: a session is saved and found by its cookie, its key is the prefix and the
// token, and a Destroy deletes it.
func TestAppSessions(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	a := newApp(t, s)
	a.sm.IdleTimeout = 30 * time.Minute
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	get(t, hc, a.srv.URL+"/put?user=alice")
	if got := get(t, hc, a.srv.URL+"/get?k=user"); got != "alice" {
		t.Fatalf("user=%q, want alice", got)
	}
	u, _ := url.Parse(a.srv.URL)
	cookies := jar.Cookies(u)
	if len(cookies) != 1 || !client.IsRandomID(cookies[0].Value) {
		t.Fatalf("cookies %v, want one token", cookies)
	}
	token := cookies[0].Value
	it, err := s.c.KVGet(context.Background(), DefaultKeyPrefix+token)
	if err != nil || string(it.Value["v:user"]) != `"alice"` {
		t.Fatalf("KVGet(prefix+token)=%s, %v", it.Value, err)
	}
	get(t, hc, a.srv.URL+"/destroy")
	if _, err := s.c.KVGet(context.Background(), DefaultKeyPrefix+token); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("KVGet after Destroy: %v, want not_found", err)
	}
	if got := get(t, hc, a.srv.URL+"/get?k=user"); got != "" {
		t.Errorf("user after Destroy=%q, want none", got)
	}
}
