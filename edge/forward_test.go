package edge

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster/placement"
	"github.com/valyala/fasthttp"
)

// TestForward: three nodes of one region with Replicas 1 — each user on one node. Every
// request reaches its user's node, whichever node it was sent to, and says which node
// forwarded it and which served it.
func TestForward(t *testing.T) {
	nodes, tab := startRegion(t, []string{"fw-a", "fw-b", "fw-c"}, nil)
	holderOf := func(p int) string { return tab.Owners(nodes[0].cfg.Region, p)[0].Name }

	// A user for each node, signed up through the first node.
	c0 := newTestClient(t, nodes[0])
	type user struct{ name, token, holder string }
	var users []user
	for i := 0; len(users) < 6 && i < 200; i++ {
		name := "fwuser" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		h := holderOf(crdt.NamePartition(name))
		if slices.ContainsFunc(users, func(u user) bool { return u.holder == h }) && len(users) < 3 {
			continue // first one per node
		}
		users = append(users, user{name: name, token: signUp(t, c0, name), holder: h})
	}
	for _, u := range users {
		for _, n := range nodes {
			resp, body := newTestClient(t, n).do("GET", "/v1/users/me", u.token, nil)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), u.name) {
				t.Fatalf("%s via %s: %d %s", u.name, n.cfg.NodeName, resp.StatusCode, body)
			}
			served, fwd := resp.Header.Get("X-Served-By"), resp.Header.Get(headerForwardedBy)
			switch {
			case served != u.holder:
				t.Errorf("%s via %s served by %s, want its holder %s", u.name, n.cfg.NodeName, served, u.holder)
			case n.cfg.NodeName == u.holder && fwd != "":
				t.Errorf("%s via its holder %s says forwarded by %q", u.name, n.cfg.NodeName, fwd)
			case n.cfg.NodeName != u.holder && fwd != n.cfg.NodeName:
				t.Errorf("%s via %s: forwarded by %q, want %s", u.name, n.cfg.NodeName, fwd, n.cfg.NodeName)
			}
			if resp.Header.Get("X-Request-Id") == "" || resp.Header.Get(headerBookmark) == "" {
				t.Errorf("%s via %s: a relayed answer lacks its headers: %v", u.name, n.cfg.NodeName, resp.Header)
			}
		}
	}
	// Through a node that does not hold the account: a sign-in records the client's
	// device and the holder that created it, a renewal retires the old token on every
	// node (the forwarded caller carries the token's generation), and an export comes
	// back whole.
	{
		u := users[0]
		via := nodes[slices.IndexFunc(nodes, func(n *Node) bool { return n.cfg.NodeName != u.holder })]
		cv := newTestClient(t, via)
		resp, body := cv.do("POST", "/v1/sessions", "", map[string]any{"username": u.name, "password": "correct horse"}, "User-Agent", firefoxLinux)
		var login struct {
			Token   string
			Session map[string]any
		}
		if err := json.Unmarshal(body, &login); resp.StatusCode != http.StatusCreated || err != nil {
			t.Fatalf("login via %s: %d %s", via.cfg.NodeName, resp.StatusCode, body)
		}
		if login.Session["device"] != "Firefox on Linux" || login.Session["node"] != u.holder || login.Session["client_address"] != "127.0.0.1" {
			t.Errorf("session signed in via %s: %v; want Firefox on Linux, created by %s, from 127.0.0.1", via.cfg.NodeName, login.Session, u.holder)
		}
		resp, body = cv.do("POST", "/v1/sessions/current/renew", login.Token, nil)
		var renewed struct{ Token string }
		if err := json.Unmarshal(body, &renewed); resp.StatusCode != http.StatusOK || err != nil || resp.Header.Get(headerForwardedBy) != via.cfg.NodeName {
			t.Fatalf("renew via %s: %d %s", via.cfg.NodeName, resp.StatusCode, body)
		}
		for _, n := range nodes {
			c := newTestClient(t, n)
			resp, body := c.do("GET", "/v1/sessions/current", login.Token, nil)
			wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
			if resp, body := c.do("GET", "/v1/sessions/current", renewed.Token, nil); resp.StatusCode != http.StatusOK {
				t.Errorf("renewed token via %s: %d %s", n.cfg.NodeName, resp.StatusCode, body)
			}
		}
		resp, body = cv.do("GET", "/v1/users/me/export", renewed.Token, nil)
		if resp.StatusCode != http.StatusOK || !json.Valid(body) || !strings.Contains(string(body), u.name) || resp.Header.Get(headerForwardedBy) != via.cfg.NodeName {
			t.Errorf("export via %s: %d, forwarded by %q: %s", via.cfg.NodeName, resp.StatusCode, resp.Header.Get(headerForwardedBy), body)
		}
	}

	// HEAD is relayed like GET: the answer's headers, and no body (a holder that left
	// out the body its Content-Length announced would have held the forward up).
	for _, u := range users {
		for _, n := range nodes {
			resp, body := newTestClient(t, n).do("HEAD", "/v1/users/me", u.token, nil)
			if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("X-Served-By") != u.holder {
				t.Errorf("HEAD /v1/users/me as %s via %s: %d, served by %q, %d bytes of body",
					u.name, n.cfg.NodeName, resp.StatusCode, resp.Header.Get("X-Served-By"), len(body))
			}
		}
	}

	// A bad token is refused where it arrives: nothing is forwarded for it.
	resp, body := newTestClient(t, nodes[1]).do("GET", "/v1/users/me", users[0].token+"x", nil)
	wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	if resp.Header.Get(headerForwardedBy) != "" {
		t.Errorf("a request with a bad token was forwarded")
	}

	// Live streams relayed through a node count against the user's streams there too:
	// past maxStreamsPerUser the node refuses at once, whichever node would serve them.
	u := users[0]
	via := nodes[slices.IndexFunc(nodes, func(n *Node) bool { return n.cfg.NodeName != u.holder })]
	cv := newTestClient(t, via)
	for range maxStreamsPerUser {
		openTestStream(t, cv, u.token)
	}
	relayed := func() int {
		via.broker.mu.Lock()
		defer via.broker.mu.Unlock()
		total := 0
		for _, k := range via.broker.relayed {
			total += k
		}
		return total
	}
	if got := relayed(); got != maxStreamsPerUser {
		t.Errorf("%s relays %d streams, counts %d", via.cfg.NodeName, maxStreamsPerUser, got)
	}
	extra := tryStream(t, cv, u.token)
	if extra.StatusCode != http.StatusTooManyRequests || extra.Header.Get(headerForwardedBy) != "" {
		t.Errorf("stream %d via %s: %d, forwarded by %q; want 429 from %[2]s itself", maxStreamsPerUser+1, via.cfg.NodeName, extra.StatusCode, extra.Header.Get(headerForwardedBy))
	}
}

// TestForwardedStreamEndsWhenItsKeyRetires: a stream relayed by a node that does not
// hold its user is cut off by that node once the signing key of the token it was opened
// with is retired, and the message that arrives after the retirement does not reach the
// client (found by an outside review: the relay wrote what it read before checking).
func TestForwardedStreamEndsWhenItsKeyRetires(t *testing.T) {
	nodes, tab := startRegion(t, []string{"fs-a", "fs-b", "fs-c"}, nil)
	c0 := newTestClient(t, nodes[0])
	alice := signUp(t, c0, "alice")
	signUp(t, c0, "bob")
	holder := tab.Owners(nodes[0].cfg.Region, crdt.NamePartition("alice"))[0].Name
	via := nodes[slices.IndexFunc(nodes, func(n *Node) bool { return n.cfg.NodeName != holder })]
	s := openTestStream(t, newTestClient(t, via), alice)

	kid, _ := tokenHeader(t, alice)["kid"].(string)
	resp, body := adminDo(c0, testKey, "POST", "/v1/admin/keys/rotate", map[string]any{"after_seconds": 0, "retire": kid})
	var rotated api.RotateKeyResponse
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &rotated) != nil {
		t.Fatalf("rotate and retire: %d %s", resp.StatusCode, body)
	}
	waitFor(t, 20*time.Second, "every node to know the retirement and sign with the new key", func() bool {
		for _, n := range nodes {
			ring := n.tokens.ring.Load()
			if _, ok := ring.verifying(kid, time.Now()); ok {
				return false
			}
			if k := ring.signer(time.Now()); k == nil || k.kid != rotated.Key.KID {
				return false
			}
		}
		return true
	})
	bob := logIn(t, c0, "bob") // with the new key
	if resp, body := c0.do("POST", "/v1/messages", bob, map[string]any{"to": "alice", "body": "after the retirement"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("send: status %d: %s", resp.StatusCode, body)
	}
	select {
	case <-s.ended:
	case <-time.After(2 * streamPing):
		t.Fatalf("the relayed stream is still open %v after its key was retired", 2*streamPing)
	}
	for {
		select {
		case ev := <-s.events:
			if ev.event == "message" {
				t.Errorf("the relayed stream delivered a message after its key was retired: %s", ev.data)
			}
		default:
			return
		}
	}
}

// TestServeForwardedRefusesBadWrapping: a forwarded request's wrapping comes from a peer
// (which holds the cluster key), but is input all the same: a malformed caller gets 400,
// never a panic, and an over-long body 413.
func TestServeForwardedRefusesBadWrapping(t *testing.T) {
	cfg := testConfig(t, "fw-alone")
	cfg.Replicas = 1
	n := MustStartNode(t, cfg)
	for _, tc := range []struct {
		name, caller string
		body         string
		want         int
	}{
		{"ErrCallerFields", "only two", "", http.StatusBadRequest},
		{"ErrCallerTime", "u s notatime 1 ", "", http.StatusBadRequest},
		{"ErrCallerBookmark", "u s 1 2 !!!", "", http.StatusBadRequest},
		{"ErrBodyTooLarge", "", strings.Repeat("x", maxBody+1), http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ctx fasthttp.RequestCtx
			ctx.Request.Header.SetMethod("POST")
			ctx.Request.SetRequestURI("/sync/v1/forward")
			ctx.Request.SetBodyString(tc.body)
			ctx.Request.Header.Set(wrapMethod, "GET")
			ctx.Request.Header.Set(wrapURI, "/v1/users/me")
			if tc.caller != "" {
				ctx.Request.Header.Set(wrapCaller, tc.caller)
			}
			n.serveForwarded(&ctx)
			if got := ctx.Response.StatusCode(); got != tc.want {
				t.Errorf("status %d, want %d: %s", got, tc.want, ctx.Response.Body())
			}
		})
	}
	t.Run("OKCallerRoundTrip", func(t *testing.T) {
		var b crdt.Bookmark
		b.Add(crdt.Timestamp{Wall: 12345, Node: 9})
		v := verified{userID: "u1", sessionID: "s1", created: b, issued: time.Unix(0, 100), expires: time.Unix(0, 200)}
		got, err := decodeCaller(encodeCaller(&v))
		if err != nil || got.userID != v.userID || got.sessionID != v.sessionID || !got.issued.Equal(v.issued) ||
			!got.expires.Equal(v.expires) || got.created.String() != b.String() {
			t.Errorf("decodeCaller(encodeCaller(%+v)) = %+v, %v", v, got, err)
		}
	})
}

// TestForwardedLoginsLimitedWhereTheClientIs: with placement, a client's logins are
// served by the holders of their usernames, but the limit on failures from its address
// is applied and charged by the node the client reached, so a client pinned to one node
// is limited exactly, whatever the counters' exchange between nodes (switched off here).
func TestForwardedLoginsLimitedWhereTheClientIs(t *testing.T) {
	clock := windowStartClock(loginWindow)
	nodes, tab := startRegion(t, []string{"lim-a", "lim-b"}, func(cfg *Config) {
		cfg.Now = clock
		cfg.LoginPerAddress = 6
		cfg.CounterFlush = time.Hour // no node learns another's counts during the test
	})
	holderOf := func(name string) string { return tab.Owners(nodes[0].cfg.Region, crdt.NamePartition(name))[0].Name }
	nameOn := func(prefix, holder string) string {
		for i := 0; ; i++ {
			if name := fmt.Sprintf("%s%d", prefix, i); holderOf(name) == holder {
				return name
			}
		}
	}
	a := newTestClient(t, nodes[0])
	owner := nameOn("limowner", "lim-b")
	signUp(t, a, owner)
	// Three wrong guesses on accounts lim-a holds, three on accounts lim-b holds, all
	// through lim-a: six failures from this address, the limit.
	for i, holder := range []string{"lim-a", "lim-a", "lim-a", "lim-b", "lim-b", "lim-b"} {
		name := nameOn(fmt.Sprintf("nobody%d-", i), holder)
		resp, body := a.do("POST", "/v1/sessions", "", map[string]any{"username": name, "password": "not the password"})
		wantError(t, resp, body, http.StatusUnauthorized, "unauthorized")
		if by := resp.Header.Get("X-Served-By"); by != holder {
			t.Fatalf("login of %s served by %s, want its holder %s", name, by, holder)
		}
	}
	resp, body := a.do("POST", "/v1/sessions", "", map[string]any{"username": owner, "password": "correct horse"})
	wantError(t, resp, body, http.StatusTooManyRequests, "rate_limited")
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
}

// startRegion starts nodes called names in one region with Replicas 1 and anti-entropy
// every 500 ms, each joining the first, further configured by configure (nil: nothing
// more), and waits until every node sees all the others and holds its share. It returns
// the nodes and their placement.
func startRegion(t testing.TB, names []string, configure func(*Config)) ([]*Node, *placement.Table) {
	t.Helper()
	var nodes []*Node
	var members []placement.Member
	for i, name := range names {
		cfg := testConfig(t, name)
		cfg.Replicas = 1
		cfg.AntiEntropyEvery = 500 * time.Millisecond
		if configure != nil {
			configure(&cfg)
		}
		if i > 0 {
			cfg.Join = []string{nodes[0].membership.Addr()}
		}
		nodes = append(nodes, MustStartNode(t, cfg))
		members = append(members, placement.Member{Name: name, Region: cfg.Region})
	}
	waitFor(t, 20*time.Second, "every node to see the others and hold its share", func() bool {
		for _, n := range nodes {
			if n.replicator.Peers() != len(nodes)-1 || !n.replicator.Sharded() {
				return false
			}
		}
		return true
	})
	return nodes, placement.New(members, 1)
}

// BenchmarkForward: an authenticated read (GET /v1/sessions/current) sent to the node that
// holds the caller's partition (direct) and to the one that does not and forwards it
// (forwarded), one request at a time over a keep-alive connection, both nodes in this
// process: -cpuprofile shows what a forward adds on both sides. Figures of record come from
// the harness's placement part (BENCHMARKS.md), across processes.
func BenchmarkForward(b *testing.B) {
	nodes, tab := startRegion(b, []string{"bf-a", "bf-b"}, nil)
	token := signUp(b, newTestClient(b, nodes[0]), "benchforward")
	holder := tab.Owners(nodes[0].cfg.Region, crdt.NamePartition("benchforward"))[0].Name
	for _, n := range nodes {
		name := "direct"
		if n.cfg.NodeName != holder {
			name = "forwarded"
		}
		b.Run(name, func(b *testing.B) {
			c := newTestClient(b, n)
			for b.Loop() {
				resp, body := c.do("GET", "/v1/sessions/current", token, nil)
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("%d %s", resp.StatusCode, body)
				}
			}
		})
	}
}

// TestForwardReadsBodiesAsHandlersDo: route reads a sign-up's or login's body to find the
// username's holders. A body that routing could not read but the handler accepted was
// served where it arrived: a node without the name's claim then registered a taken name
// (a trailing U+00A0, which bytes.TrimSpace passed and encoding/json did not). And routing
// read bodies through c.Body(), which inflates a compressed body with no bound: a 561-byte
// gzip bomb took a node to 1 GB, and a compressed patch was unpacked and forwarded where
// its holder would have refused it (both found by an outside review).
func TestForwardReadsBodiesAsHandlersDo(t *testing.T) {
	nodes, tab := startRegion(t, []string{"rb-a", "rb-b"}, nil)
	nameOn := func(prefix, holder string) string {
		for i := 0; ; i++ {
			if name := fmt.Sprintf("%s%d", prefix, i); tab.Owners(nodes[0].cfg.Region, crdt.NamePartition(name))[0].Name == holder {
				return name
			}
		}
	}
	a, b := newTestClient(t, nodes[0]), newTestClient(t, nodes[1])
	owner := nameOn("rbowner", "rb-b")
	token := signUp(t, b, owner)

	t.Run("ErrTakenNameWithUnicodeSpace", func(t *testing.T) {
		for _, c := range []*testClient{a, b} {
			body := `{"username":"` + owner + `","password":"another password"}` + "\u00a0"
			resp, got := c.do("POST", "/v1/users", "", body)
			wantError(t, resp, got, http.StatusBadRequest, "invalid_argument")
		}
		resp, got := a.do("POST", "/v1/users", "", map[string]any{"username": owner, "password": "another password"})
		wantError(t, resp, got, http.StatusConflict, "username_taken")
	})

	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	_, _ = zw.Write(bytes.Repeat([]byte(" "), 64<<20)) // 64 MiB of JSON white space
	_ = zw.Close()
	for _, c := range []*testClient{a, b} {
		t.Run("ErrCompressedSignUp", func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, got := c.do("POST", "/v1/users", "", bomb.Bytes(), "Content-Encoding", "gzip")
			runtime.ReadMemStats(&after)
			wantError(t, resp, got, http.StatusBadRequest, "invalid_argument")
			// Inflated, the body alone would be 64 MiB (both nodes run in this process).
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
				t.Errorf("refusing a %d-byte compressed body allocated %d MiB", bomb.Len(), grew>>20)
			}
			if !strings.Contains(string(got), "Content-Encoding") || resp.Header.Get(headerForwardedBy) != "" {
				t.Errorf("answer %s, forwarded by %q; want Content-Encoding refused where it arrived", got, resp.Header.Get(headerForwardedBy))
			}
		})
		t.Run("ErrCompressedPatch", func(t *testing.T) {
			var patch bytes.Buffer
			zw := gzip.NewWriter(&patch)
			_, _ = zw.Write([]byte(`{"data":{"gz":"yes"}}`))
			_ = zw.Close()
			resp, got := c.do("PATCH", "/v1/sessions/current", token, patch.Bytes(), "Content-Encoding", "gzip")
			wantError(t, resp, got, http.StatusBadRequest, "invalid_argument")
		})
	}
	resp, got := a.do("GET", "/v1/sessions/current", token, nil)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(got), `"gz"`) {
		t.Errorf("session after the refused patches: %d %s", resp.StatusCode, got)
	}
}
