package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge/adminauth"
)

// TestDoAdminThroughStickyBalancer: behind a load balancer that spreads requests round
// robin but pins a client that carries its cookie (infra/lb's :8080), doAdmin's request
// reaches the node it signed for, and that node alone accepts it.
func TestDoAdminThroughStickyBalancer(t *testing.T) {
	key := make([]byte, 32)
	var nodes []*httptest.Server
	var served [3]atomic.Int32
	for i := range 3 {
		name := "node-" + strconv.Itoa(i)
		v := adminauth.NewVerifier([][]byte{key}, name, time.Now)
		nodes = append(nodes, httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(adminauth.HeaderIdentity, v.Identity())
			if r.URL.Path == "/healthz" {
				return
			}
			body, _ := io.ReadAll(r.Body)
			if err := v.Verify(r.Method, r.RequestURI, body, r.Header.Get("Authorization")); err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			served[i].Add(1)
		})))
		t.Cleanup(nodes[i].Close)
	}
	var next atomic.Int32
	lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(next.Add(1)) % len(nodes)
		if c, err := r.Cookie("lb_node"); err == nil {
			i, _ = strconv.Atoi(c.Value)
		} else {
			http.SetCookie(w, &http.Cookie{Name: "lb_node", Value: strconv.Itoa(i)})
		}
		req, _ := http.NewRequest(r.Method, nodes[i].URL+r.RequestURI, r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(lb.Close)

	for i := range 6 {
		resp, err := doAdmin(&http.Client{Timeout: 10 * time.Second}, key, http.MethodPost, lb.URL+"/v1/admin/x?n="+strconv.Itoa(i), []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d through the balancer: %d", i, resp.StatusCode)
		}
	}
	total := 0
	for i := range served {
		total += int(served[i].Load())
	}
	if total != 6 {
		t.Errorf("%d requests accepted, want 6", total)
	}
}
