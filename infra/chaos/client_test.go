package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestClientResult: what the suite's client reports of one exchange, which the checker
// reads: status, body, headers and the Jepsen outcome, with only the headers it was given.
func TestClientResult(t *testing.T) {
	var got http.Header
	var gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("X-Served-By", "n1")
		w.Header().Set(headerForwardedBy, "n2")
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(201)
			fmt.Fprint(w, `{"x":1}`)
		case "/behind":
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"behind","message":"m"}}`)
		case "/unavailable":
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"m"}}`)
		case "/html":
			w.WriteHeader(404)
			fmt.Fprint(w, `<html>no</html>`)
		case "/slow":
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	c := newClient(300 * time.Millisecond)
	ctx := context.Background()

	r := c.DoHeaders(ctx, srv.URL, "POST", "/ok", map[string]string{"Authorization": "Bearer T", "X-Sessiond-Bookmark": "B"}, map[string]int{"a": 1})
	if r.Status != 201 || string(r.Body) != `{"x":1}` || r.Outcome != OK || r.ServedBy != "n1" || r.Entry() != "n2" || r.End.Before(r.Start) {
		t.Errorf("2xx: %+v", r)
	}
	if got.Get("Authorization") != "Bearer T" || got.Get("X-Sessiond-Bookmark") != "B" || got.Get("Content-Type") != "application/json" || gotBody != `{"a":1}` {
		t.Errorf("request headers %v, body %q", got, gotBody)
	}
	r = c.Do(ctx, srv.URL, "GET", "/ok", "", "", nil)
	if got.Get("Authorization") != "" || got.Get("X-Sessiond-Bookmark") != "" {
		t.Errorf("a request without token or bookmark sent %v", got)
	}
	if r = c.Do(ctx, srv.URL, "POST", "/behind", "T", "1.2.3.4", nil); r.Status != 503 || !r.Behind() || r.Outcome != Fail || r.Header.Get("Retry-After") != "1" {
		t.Errorf("behind: %+v", r)
	}
	if got.Get("X-Forwarded-For") != "1.2.3.4" {
		t.Errorf("xff not sent: %v", got)
	}
	if r = c.Do(ctx, srv.URL, "POST", "/unavailable", "", "", nil); r.Status != 503 || r.ErrorCode() != "unavailable" || r.Outcome != Info {
		t.Errorf("unavailable: %+v", r)
	}
	if r = c.Do(ctx, srv.URL, "GET", "/html", "", "", nil); r.Status != 404 || string(r.Body) != "<html>no</html>" || r.Outcome != Fail {
		t.Errorf("html 404: %+v", r)
	}
	if r = c.Do(ctx, srv.URL, "POST", "/slow", "", "", nil); r.Err == nil || r.Outcome != Info {
		t.Errorf("timeout: %+v, want an error of unknown outcome", r)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	if r = c.Do(ctx, dead, "POST", "/ok", "", "", nil); r.Err == nil || r.Outcome != Fail {
		t.Errorf("refused: %+v, want a failure (nothing sent)", r)
	}
}
