package main

import (
	"context"
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/alexedwards/scs/v2"

	"github.com/sessiond/sessiond/edge/client"
)

// The shop: a sign-in as any name (the app's own accounts are out of scope) and a cart,
// both kept in the visitor's scs session, which lives in sessiond. Each cart line is a
// session key of its own ("cart:" + item → quantity), so with scsstore's JSONCodec two
// requests that add different items at once (two tabs, two regions) both keep theirs.

const (
	userKey    = "user"
	cartPrefix = "cart:"
	maxItems   = 50   // distinct items in a cart (a session holds at most 255 keys)
	maxQty     = 99   // of one item
	maxForm    = 4096 // bytes of a form body
)

var (
	namePattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)
	itemPattern = regexp.MustCompile(`^[A-Za-z0-9 _.-]{1,40}$`)
)

// bookmarkCookie keeps a visitor's bookmark (client.CarryBookmarks): the instance of
// another region shows the visitor at once what they wrote through this one.
const bookmarkCookie = "shop_bookmark"

// Shop serves the pages. Its handlers run inside sm.LoadAndSave.
type Shop struct {
	sm     *scs.SessionManager
	region string // shown on the page and in the state, to tell the instances apart
	log    *slog.Logger
}

// State is what GET /state returns: the visitor's session as the app sees it.
type State struct {
	User   string         `json:"user"`
	Cart   map[string]int `json:"cart"`
	Region string         `json:"region"`
}

// Routes returns the shop's handler, sessions loaded and saved around it.
func (s *Shop) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /state", s.state)
	mux.HandleFunc("POST /signin", s.signIn)
	mux.HandleFunc("POST /signout", s.signOut)
	mux.HandleFunc("POST /cart/add", s.add)
	mux.HandleFunc("POST /cart/remove", s.remove)
	outer := http.NewServeMux()
	outer.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	// Outside LoadAndSave, so that the bookmark cookie records the session's commit.
	outer.Handle("/", client.CarryBookmarks(bookmarkCookie, s.sm.Cookie.Secure)(s.sm.LoadAndSave(mux)))
	return outer
}

func (s *Shop) read(ctx context.Context) State {
	st := State{User: s.sm.GetString(ctx, userKey), Cart: map[string]int{}, Region: s.region}
	for _, k := range s.sm.Keys(ctx) {
		if item, ok := strings.CutPrefix(k, cartPrefix); ok {
			st.Cart[item] = s.sm.GetInt(ctx, k)
		}
	}
	return st
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sessiond shop</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto}form{display:inline}li{margin:.3rem 0}small{color:#666}</style>
</head><body>
<h1>sessiond shop</h1>
<p><small>served by the {{.Region}} instance; your session lives in sessiond</small></p>
{{if .User}}
<p>Signed in as <b>{{.User}}</b>. <form method="post" action="/signout"><button>Sign out</button></form></p>
<h2>Cart</h2>
{{if .Items}}<ul>{{range .Items}}<li>{{.Name}} × {{.Qty}}
 <form method="post" action="/cart/remove"><input type="hidden" name="item" value="{{.Name}}"><button>Remove one</button></form></li>{{end}}</ul>
{{else}}<p>Your cart is empty.</p>{{end}}
<form method="post" action="/cart/add"><input name="item" placeholder="tea" required maxlength="40"> <button>Add</button></form>
{{else}}
<form method="post" action="/signin"><label>Sign in as <input name="user" placeholder="ada" required maxlength="32"></label> <button>Sign in</button></form>
{{end}}
{{with .Error}}<p style="color:#b00">{{.}}</p>{{end}}
</body></html>
`))

type line struct {
	Name string
	Qty  int
}

func (s *Shop) page(w http.ResponseWriter, r *http.Request) {
	st := s.read(r.Context())
	var items []line
	for name, q := range st.Cart {
		items = append(items, line{name, q})
	}
	slices.SortFunc(items, func(a, b line) int { return strings.Compare(a.Name, b.Name) })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := pageTmpl.Execute(w, map[string]any{"User": st.User, "Items": items, "Region": s.region, "Error": r.URL.Query().Get("error")}); err != nil {
		s.log.Warn("render page", "err", err)
	}
}

func (s *Shop) state(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(s.read(r.Context()))
}

// form parses a bounded form body; false when it answered with an error.
func form(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return false
	}
	return true
}

func (s *Shop) signIn(w http.ResponseWriter, r *http.Request) {
	if !form(w, r) {
		return
	}
	name := strings.TrimSpace(r.PostForm.Get("user"))
	if !namePattern.MatchString(name) {
		http.Error(w, "a name is 1 to 32 letters, digits, '.', '_' or '-'", http.StatusBadRequest)
		return
	}
	// A new token at sign-in (session fixation defence); the cart comes along.
	if err := s.sm.RenewToken(r.Context()); err != nil {
		s.fail(w, "renew token", err)
		return
	}
	s.sm.Put(r.Context(), userKey, name)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Shop) signOut(w http.ResponseWriter, r *http.Request) {
	if err := s.sm.Destroy(r.Context()); err != nil {
		s.fail(w, "destroy session", err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// item returns the form's item, answering 400 (false) when it is not one; the cart is
// for signed-in visitors (401 otherwise).
func (s *Shop) item(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !form(w, r) {
		return "", false
	}
	if s.sm.GetString(r.Context(), userKey) == "" {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return "", false
	}
	item := strings.TrimSpace(r.PostForm.Get("item"))
	if !itemPattern.MatchString(item) {
		http.Error(w, "an item is 1 to 40 letters, digits, spaces, '.', '_' or '-'", http.StatusBadRequest)
		return "", false
	}
	return item, true
}

func (s *Shop) add(w http.ResponseWriter, r *http.Request) {
	item, ok := s.item(w, r)
	if !ok {
		return
	}
	ctx, k := r.Context(), cartPrefix+item
	q := s.sm.GetInt(ctx, k)
	if q == 0 && len(s.read(ctx).Cart) >= maxItems {
		http.Error(w, "the cart is full", http.StatusBadRequest)
		return
	}
	s.sm.Put(ctx, k, min(q+1, maxQty))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Shop) remove(w http.ResponseWriter, r *http.Request) {
	item, ok := s.item(w, r)
	if !ok {
		return
	}
	ctx, k := r.Context(), cartPrefix+item
	if q := s.sm.GetInt(ctx, k); q > 1 {
		s.sm.Put(ctx, k, q-1)
	} else {
		s.sm.Remove(ctx, k)
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Shop) fail(w http.ResponseWriter, what string, err error) {
	s.log.Error(what, "err", err)
	http.Error(w, "the session store is not answering; try again", http.StatusServiceUnavailable)
}
