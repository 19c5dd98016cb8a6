package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"time"

	"github.com/sessiond/sessiond/edge/adminauth"
)

// maxAdminTries bounds the times doAdmin signs one request: a load balancer in front of
// the nodes may send each try to another node.
const maxAdminTries = 4

// doAdmin sends a request signed with clusterKey to the admin route at target (a URL)
// and returns the node's answer, whatever its status; the caller closes its body. A
// signed request is good for one node only, as long as it runs (package adminauth):
// doAdmin asks the address which node answers there (adminauth.HeaderIdentity of GET
// /healthz) and signs for it. Behind a load balancer the request may reach another node,
// which refuses it with 401 and its own identity: doAdmin then signs again for that one,
// up to maxAdminTries signatures in all. It keeps the cookies it is
// given, so a balancer that pins clients by cookie (infra/lb's :8080) keeps it on one
// node; one that spreads every request (round robin without cookies) may defeat it:
// address a node.
func doAdmin(hc *http.Client, clusterKey []byte, method, target string, body []byte) (*http.Response, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if hc.Jar == nil {
		jar, _ := cookiejar.New(nil) // never fails without options
		c := *hc
		c.Jar = jar
		hc = &c
	}
	health := url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/healthz"}
	resp, err := hc.Get(health.String()) // #nosec G704 -- the operator names the node (--http)
	if err != nil {
		return nil, err
	}
	_ = resp.Body.Close()
	node := resp.Header.Get(adminauth.HeaderIdentity)
	if node == "" {
		return nil, fmt.Errorf("%s names no node (%s): is it a sessiond node of this release?", health.String(), adminauth.HeaderIdentity)
	}
	for try := 1; ; try++ {
		req, err := http.NewRequest(method, target, bytes.NewReader(body)) // #nosec G704 -- the operator names the node (--http)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("Authorization", adminauth.Sign(clusterKey, node, method, req.URL.RequestURI(), body, time.Now()))
		resp, err := hc.Do(req) // #nosec G704 -- the operator names the node (--http)
		if err != nil {
			return nil, err
		}
		served := resp.Header.Get(adminauth.HeaderIdentity)
		if resp.StatusCode != http.StatusUnauthorized || served == "" || served == node || try == maxAdminTries {
			return resp, nil
		}
		_ = resp.Body.Close()
		node = served
	}
}
