package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/alexedwards/scs/v2"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/client/scsstore"
	"github.com/sessiond/sessiond/edge/edgetest"
)

// The shop against a real node in-process: sign in, fill and empty a cart, sign out,
// through two app instances on one node (the Docker test, infra/example/e2e, spreads
// them over regions and kills a node); and bad input gets a 4xx.

// startNode starts a node for the test and returns it with the API key of a new app.
func startNode(t *testing.T) (*edge.Node, string) {
	t.Helper()
	n := edgetest.Start(t, "example-test", nil)
	return n, edgetest.CreateApp(t, n, "shop")
}

func startShop(t *testing.T, n *edge.Node, key, region string) *httptest.Server {
	t.Helper()
	c, err := client.NewService(client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	sm := scs.New()
	sm.Store = scsstore.New(c)
	sm.Codec = scsstore.NewJSONCodec()
	shop := &Shop{sm: sm, region: region, log: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(shop.Routes())
	t.Cleanup(srv.Close)
	return srv
}

type visitor struct {
	t  *testing.T
	hc *http.Client
}

func newVisitor(t *testing.T) *visitor {
	jar, _ := cookiejar.New(nil)
	return &visitor{t, &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (v *visitor) post(base, path string, form url.Values) (int, string) {
	v.t.Helper()
	resp, err := v.hc.PostForm(base+path, form)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (v *visitor) mustPost(base, path string, form url.Values) {
	v.t.Helper()
	if code, body := v.post(base, path, form); code != http.StatusSeeOther {
		v.t.Fatalf("POST %s: %d %s, want 303", path, code, body)
	}
}

func (v *visitor) state(base string) State {
	v.t.Helper()
	resp, err := v.hc.Get(base + "/state")
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		v.t.Fatal(err)
	}
	return st
}

func TestShop(t *testing.T) {
	n, key := startNode(t)
	a, b := startShop(t, n, key, "a").URL, startShop(t, n, key, "b").URL
	v := newVisitor(t)

	if st := v.state(a); st.User != "" || len(st.Cart) != 0 || st.Region != "a" {
		t.Fatalf("first state=%+v, want signed out and empty", st)
	}
	if code, _ := v.post(a, "/cart/add", url.Values{"item": {"tea"}}); code != http.StatusUnauthorized {
		t.Errorf("add before sign-in: %d, want 401", code)
	}
	v.mustPost(a, "/signin", url.Values{"user": {"ada"}})
	v.mustPost(a, "/cart/add", url.Values{"item": {"tea"}})
	v.mustPost(b, "/cart/add", url.Values{"item": {"tea"}})
	v.mustPost(b, "/cart/add", url.Values{"item": {"green cup"}})
	v.mustPost(a, "/cart/add", url.Values{"item": {"spoon"}})
	v.mustPost(b, "/cart/remove", url.Values{"item": {"spoon"}})
	want := map[string]int{"tea": 2, "green cup": 1}
	u, _ := url.Parse(a)
	var bm string
	for _, ck := range v.hc.Jar.Cookies(u) {
		if ck.Name == bookmarkCookie {
			bm = ck.Value
		}
	}
	if _, err := client.ParseBookmark(bm); err != nil || bm == "" {
		t.Errorf("the visitor's %s cookie %q is not a bookmark of its writes: %v", bookmarkCookie, bm, err)
	}
	for _, base := range []string{a, b} {
		if st := v.state(base); st.User != "ada" || !reflect.DeepEqual(st.Cart, want) {
			t.Errorf("state at %s=%+v, want ada with %v", base, st, want)
		}
	}
	resp, err := v.hc.Get(b + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range []string{"Signed in as <b>ada</b>", "tea × 2", "green cup × 1"} {
		if !strings.Contains(string(page), s) {
			t.Errorf("page lacks %q:\n%s", s, page)
		}
	}

	t.Run("BadInput", func(t *testing.T) {
		for _, tc := range []struct {
			path string
			form url.Values
		}{
			{"/signin", url.Values{"user": {""}}},
			{"/signin", url.Values{"user": {"<script>"}}},
			{"/signin", url.Values{"user": {strings.Repeat("a", 33)}}},
			{"/cart/add", url.Values{"item": {""}}},
			{"/cart/add", url.Values{"item": {"a/b"}}},
			{"/cart/add", url.Values{"item": {strings.Repeat("x", 10000)}}},
			{"/cart/remove", url.Values{}},
		} {
			if code, _ := v.post(a, tc.path, tc.form); code != http.StatusBadRequest {
				t.Errorf("POST %s %v: %d, want 400", tc.path, tc.form, code)
			}
		}
		if st := v.state(a); !reflect.DeepEqual(st.Cart, want) {
			t.Errorf("cart after bad input=%v, want %v", st.Cart, want)
		}
	})

	// Sign-in renews the token; sign-out ends the session everywhere.
	v.mustPost(b, "/signout", nil)
	for _, base := range []string{a, b} {
		if st := v.state(base); st.User != "" || len(st.Cart) != 0 {
			t.Errorf("state at %s after sign-out=%+v, want none", base, st)
		}
	}
}
