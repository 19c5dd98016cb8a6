package scsstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"reflect"
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

// newStore returns a Store on its own client (as another app server would have) of n.
func newStore(t *testing.T, n *edge.Node, key string) *Store {
	t.Helper()
	c, err := client.NewService(client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Client().CloseIdleConnections)
	return New(c)
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

	t.Run("FindMissing", func(t *testing.T) {
		b, found, err := s.Find("missing_session_token")
		if err != nil || found || b != nil {
			t.Fatalf("Find=%q, %v, %v, want not found", b, found, err)
		}
		if _, found, err := s.Find("not a token/"); err != nil || found {
			t.Fatalf("Find of a malformed token=%v, %v, want not found and no error", found, err)
		}
	})
	t.Run("CommitNew", func(t *testing.T) {
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, "session_token"); !bytes.Equal(b, []byte("encoded_data")) {
			t.Fatalf("Find=%q, want encoded_data", b)
		}
	})
	t.Run("CommitUpdated", func(t *testing.T) {
		if err := s.Commit("session_token", []byte("new_encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, "session_token"); !bytes.Equal(b, []byte("new_encoded_data")) {
			t.Fatalf("Find=%q, want new_encoded_data", b)
		}
	})
	t.Run("CommitJSON", func(t *testing.T) {
		in := []byte(`{"deadline":"2030-01-01T00:00:00Z","v:a":"x","v:n":{"t":"int","v":3}}`)
		if err := s.Commit("json_token", in, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if b := mustFind(t, s, "json_token"); !bytes.Equal(b, in) {
			t.Fatalf("Find=%s, want %s", b, in)
		}
	})
	t.Run("Expiry", func(t *testing.T) {
		if err := s.Commit("expiring_token", []byte("encoded_data"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		mustFind(t, s, "expiring_token")
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, found, err := s.Find("expiring_token")
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
		if err := s.Commit("past_token", []byte("x"), time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, found, _ := s.Find("past_token"); found {
			t.Error("a session committed with a past expiry is found")
		}
	})
	t.Run("Delete", func(t *testing.T) {
		if err := s.Commit("doomed_token", []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete("doomed_token"); err != nil {
			t.Fatal(err)
		}
		if _, found, err := s.Find("doomed_token"); err != nil || found {
			t.Fatalf("Find after Delete=%v, %v", found, err)
		}
		if err := s.Delete("never_token"); err != nil {
			t.Errorf("Delete of a missing token: %v", err)
		}
		// A commit after the delete (a request that loaded the session before it was
		// destroyed) does not bring it back, and is no error.
		if err := s.Commit("doomed_token", []byte("late"), time.Now().Add(time.Minute)); err != nil {
			t.Errorf("Commit after Delete: %v", err)
		}
		if _, found, _ := s.Find("doomed_token"); found {
			t.Error("a deleted session came back")
		}
	})
}

func TestStoreAll(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	all, err := s.All()
	if err != nil || all == nil || len(all) != 0 {
		t.Fatalf("All of none=%v, %v, want an empty map", all, err)
	}
	want := make(map[string][]byte)
	for i := range 250 {
		token := fmt.Sprintf("token_%03d", i)
		b := []byte(fmt.Sprint("data ", i))
		if err := s.Commit(token, b, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		want[token] = b
	}
	for _, token := range []string{"token_007", "token_123"} {
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

// TestStoreConcurrent: many goroutines commit, find and delete sessions at once, some
// the same ones; every goroutine reads back what it wrote to its own session.
func TestStoreConcurrent(t *testing.T) {
	n, key := startNode(t)
	s := newStore(t, n, key)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			own := fmt.Sprint("own_", g)
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
				if err := s.Commit("shared", want, time.Now().Add(time.Minute)); err != nil {
					errs <- err
					return
				}
				if _, _, err := s.Find("shared"); err != nil {
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
	if _, found, _ := s.Find("shared"); !found {
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
	} {
		if _, err := c.Encode(deadline, tc.v); err == nil {
			t.Errorf("%s: Encode succeeded", tc.name)
		}
	}
	if _, _, err := c.Decode([]byte("gob bytes")); err == nil {
		t.Error("Decode of something else succeeded")
	}
	// Values written by something else decode as encoding/json sees them.
	_, got, err = c.Decode([]byte(`{"v:n":3,"v:o":{"a":[1]},"other":1}`))
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
