package client

import (
	"net/http"
)

// CarryBookmarks returns middleware that keeps each visitor's bookmark in a cookie called
// name: a request's handlers run under WithBookmark with the bookmark the cookie held,
// and the response sets the cookie to what their calls to sessiond left it, before its
// headers go out. An app that runs in several regions, each instance calling its own
// region's nodes, then shows a visitor at least what that visitor wrote through any of
// them: the node waits for (or fetches) the writes the bookmark names. A cookie that
// does not hold a bookmark is ignored. The cookie is HttpOnly, SameSite=Lax, on path /,
// Secure when secure is set; it holds no secret (bookmarks name writes, not contents).
func CarryBookmarks(name string, secure bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var b *Bookmark
			if ck, err := r.Cookie(name); err == nil {
				b, _ = ParseBookmark(ck.Value)
			}
			if b == nil {
				b = new(Bookmark)
			}
			bw := &bookmarkWriter{ResponseWriter: w, b: b, was: b.String(), name: name, secure: secure}
			next.ServeHTTP(bw, r.WithContext(WithBookmark(r.Context(), b)))
		})
	}
}

// bookmarkWriter sets the bookmark cookie, when the bookmark changed, as the headers go
// out.
type bookmarkWriter struct {
	http.ResponseWriter
	b            *Bookmark
	was, name    string
	secure, sent bool
}

func (w *bookmarkWriter) setCookie() {
	if w.sent {
		return
	}
	w.sent = true
	if now := w.b.String(); now != w.was {
		// #nosec G124 -- Secure is the caller's (set it when serving over HTTPS); the
		// cookie holds no secret, only the names of writes.
		http.SetCookie(w.ResponseWriter, &http.Cookie{Name: w.name, Value: now, Path: "/",
			HttpOnly: true, Secure: w.secure, SameSite: http.SameSiteLaxMode})
	}
}

func (w *bookmarkWriter) WriteHeader(code int) {
	w.setCookie()
	w.ResponseWriter.WriteHeader(code)
}

func (w *bookmarkWriter) Write(p []byte) (int, error) {
	w.setCookie()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the writer underneath (flushing, deadlines).
func (w *bookmarkWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
