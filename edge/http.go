package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/ui"
)

// maxBody caps request bodies; larger ones are refused (413) before they are parsed.
const maxBody = 1 << 20

// maxHeaderBytes caps a request's line and header block (fasthttp's read buffer); larger
// ones are refused with 431. A token is about 400 bytes and a bookmark at most 1 KiB.
const maxHeaderBytes = 8 << 10

const localsPrincipal = "principal"

func (n *Node) newApp() *fiber.App {
	access := newAccessLog(n.log, n.cfg.AccessLogSample, n.trusted)
	// Immutable is off (Fiber's default): strings from the Ctx — path, method, headers,
	// params, queries — alias fasthttp's buffers, which the connection's next request
	// overwrites. Handlers read them only through param, query and header, which copy
	// (auth's token aside: see auth); what logs read (writeError, accessLog.record) is
	// copied there. Metric labels are
	// route patterns and constants. Copying every string Fiber hands out instead
	// (Immutable) cost 7% of the server handler's CPU on the session routes.
	app := fiber.New(fiber.Config{
		AppName:               "sessiond",
		DisableStartupMessage: true,
		// Paths are matched exactly: /V1/USERS/ME or /v1/users/me/ is no route, rather than
		// an API route answered with the UI's headers.
		CaseSensitive:  true,
		StrictRouting:  true,
		BodyLimit:      maxBody,
		ReadBufferSize: maxHeaderBytes,
		// No route takes a form: a multipart body is refused (415) unread, not parsed
		// into memory and temporary files first.
		DisablePreParseMultipartForm: true,
		ReadTimeout:                  30 * time.Second,
		IdleTimeout:                  2 * time.Minute,
		// Fiber calls ErrorHandler for what fasthttp refuses before any route runs (a
		// header block or body over the limit, a read timeout); observe writes the
		// errors of routes itself.
		ErrorHandler: func(c *fiber.Ctx, err error) error {
			start := time.Now()
			werr := n.writeError(c, err)
			access.record(c, "unmatched", c.Response().StatusCode(), start)
			return werr
		},
		EnableTrustedProxyCheck: len(n.cfg.TrustedProxies) > 0,
		TrustedProxies:          n.cfg.TrustedProxies,
		ProxyHeader:             proxyHeader(n.cfg.TrustedProxies),
	})
	app.Server().ConnState = n.conns.track
	// While the node stops, answers say Connection: close and are flushed at once, also
	// when more requests were pipelined behind them (conns.go).
	app.Server().CloseOnShutdown = true
	app.Use(func(c *fiber.Ctx) error { return n.observe(c, access) })
	if len(n.cfg.CORSOrigins) > 0 {
		app.Use(cors.New(cors.Config{
			AllowOrigins:  strings.Join(n.cfg.CORSOrigins, ","),
			AllowMethods:  "GET,POST,PATCH,DELETE",
			AllowHeaders:  "Authorization,Content-Type," + headerBookmark + "," + headerConsistency + "," + headerRequestID,
			ExposeHeaders: "X-Served-By,Retry-After," + headerBookmark + "," + headerLag + "," + headerRequestID + "," + headerForwardedBy,
			MaxAge:        600,
		}))
	}

	app.Get("/healthz", func(c *fiber.Ctx) error {
		c.Set(adminauth.HeaderIdentity, n.admin.Identity()) // what admin requests are signed for
		if n.storageFailed() {
			return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "storage failed"})
		}
		return c.JSON(fiber.Map{"status": "ok"})
	})
	app.Get("/readyz", n.readyz)
	app.Get("/metrics", adaptor.HTTPHandler(promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{})))
	app.Get(jwksPath, n.jwks)

	n.adminRoutes(app) // before /v1's middleware, which is for users' requests
	n.serviceRoutes(app)
	chain := []fiber.Handler{n.consistency}
	if n.cfg.Replicas > 0 {
		chain = []fiber.Handler{n.route, n.consistency} // forward.go
	}
	v1 := app.Group("/v1", chain...)
	v1.Post("/users", n.register)
	v1.Post("/sessions", n.login)
	v1.Get("/sessions/current", n.auth, n.currentSession)
	v1.Patch("/sessions/current", n.auth, n.patchSession)
	v1.Post("/sessions/current/renew", n.auth, n.renewSession)
	v1.Delete("/sessions/current", n.auth, n.logout)
	v1.Get("/sessions", n.auth, n.listSessions)
	v1.Delete("/sessions", n.auth, n.revokeAll)
	v1.Delete("/sessions/:id", n.auth, n.revokeSession)
	v1.Get("/users/me", n.auth, n.me)
	v1.Patch("/users/me", n.auth, n.patchMe)
	v1.Delete("/users/me", n.auth, n.deleteMe)
	v1.Get("/users/me/export", n.auth, n.exportMe)
	v1.Post("/messages", n.auth, n.sendMessage)
	v1.Get("/messages/stream", n.auth, n.streamMessages)
	v1.Get("/messages", n.auth, n.listMessages)
	v1.Get("/conversations", n.auth, n.conversations)
	v1.Get("/cluster", n.auth, n.clusterInfo)
	v1.Use(func(c *fiber.Ctx) error { return fiber.NewError(fiber.StatusNotFound, "no such route") })

	app.Use("/", filesystem.New(filesystem.Config{
		Root:         http.FS(ui.FS()),
		Index:        "index.html",
		MaxAge:       0,
		NotFoundFile: "",
	}))
	app.Use(func(c *fiber.Ctx) error { return fiber.NewError(fiber.StatusNotFound, "no such route") })
	return app
}

func proxyHeader(trusted []string) string {
	if len(trusted) > 0 {
		return fiber.HeaderXForwardedFor
	}
	return ""
}

// observe sets the common headers and the request id, gives the handler a context that
// ends when the node stops, and records the request's metrics and access log line.
func (n *Node) observe(c *fiber.Ctx, access *accessLog) error {
	start := c.Context().Time() // when fasthttp had read the request: one clock reading fewer
	n.commonHeaders(c)
	setRequestID(c)
	c.SetUserContext(n.ctx)
	err := c.Next()
	if err != nil {
		if werr := n.writeError(c, err); werr != nil {
			return werr
		}
	}
	route, status := c.Route().Path, c.Response().StatusCode()
	if status == fiber.StatusNotFound && !strings.HasPrefix(route, "/v1/") {
		route = "unmatched"
	}
	m := n.metrics.forRequest(route, methodLabel(c.Method()), status)
	m.requests.Inc()
	m.latency.Observe(time.Since(start).Seconds())
	access.record(c, route, status, start)
	return nil
}

// methodLabel returns a constant for the request method: Fiber's c.Method() aliases the
// request buffer, which is reused, and Prometheus keeps label values, so a retained
// method string would change under the metric. Unknown methods share one label, which
// also bounds the label's cardinality.
func methodLabel(m string) string {
	switch m {
	case fiber.MethodGet:
		return fiber.MethodGet
	case fiber.MethodHead:
		return fiber.MethodHead
	case fiber.MethodPost:
		return fiber.MethodPost
	case fiber.MethodPut:
		return fiber.MethodPut
	case fiber.MethodPatch:
		return fiber.MethodPatch
	case fiber.MethodDelete:
		return fiber.MethodDelete
	case fiber.MethodOptions:
		return fiber.MethodOptions
	}
	return "OTHER"
}

func (n *Node) readyz(c *fiber.Ctx) error {
	if n.storageFailed() {
		return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "storage failed"})
	}
	if !n.ready.Load() {
		return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "not ready"})
	}
	return c.JSON(fiber.Map{"status": "ready"})
}

// auth authenticates the request: a bearer token of ours naming a session that the
// replicated record says is usable now.
func (n *Node) auth(c *fiber.Ctx) error {
	// The one string of the Ctx a handler takes uncopied (see param): the token is only
	// parsed and looked up here, and tokens.verify copies the cache key it keeps. A copy
	// cost every authenticated request a 448-byte allocation, 5-10% of BenchmarkHandler/read.
	tok, err := n.caller(c)
	if err == nil {
		if rc := requestIn(c.UserContext()); rc != nil {
			rc.owner = tok.userID // signed by us: the caller
		}
	}
	if errors.Is(err, errTokenAhead) {
		// Issued by a node whose clock runs ahead of ours: not lag, but not the client's
		// fault either: retry once our clock has reached the token.
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(tok.issued.Sub(n.cfg.Now()).Seconds()))
		return errBehind
	}
	if errors.Is(err, errBehind) { // signed with a key this node could not get in time (caller)
		return err
	}
	if err != nil {
		if raw, ok := bearerToken(c.Get(fiber.HeaderAuthorization)); ok && functions.IsAPIKey(raw) {
			return functions.Errorf(functions.EForbidden, "an API key opens only the service routes (/v1/service/)")
		}
		return functions.Errorf(functions.EUnauthorized, "invalid or expired token")
	}
	p, err := n.authenticate(c, &tok)
	if functions.ErrorCode(err) == functions.EUnauthorized && !tok.created.IsZero() {
		// The session may be younger than this node's copy of the cluster's state: meet
		// the bookmark of its creation, then look again. Never a 401 caused by lag.
		//
		// Look again even when the bookmark is met at once: what this node knows it holds
		// vouches only for reads that begin after it is known. A push may have applied the
		// session, and recorded that it is held, between the read above and now.
		if err := n.await(c, tok.created); err != nil {
			return err
		}
		p, err = n.authenticate(c, &tok)
	}
	if err != nil {
		return err
	}
	if p.App != "" && !strings.HasPrefix(c.Route().Path, "/v1/sessions") {
		// A session an app made for its subject (service.go) is a session, not an
		// account: it has no profile, messages or cluster view, and cannot be erased.
		return functions.Errorf(functions.EForbidden, "a session an app created for its subject opens only the session routes (/v1/sessions…)")
	}
	if rc := requestIn(c.UserContext()); rc != nil {
		rc.principal, rc.authenticated = p, true // pooled: no allocation, unlike Locals
	} else {
		c.Locals(localsPrincipal, p)
	}
	return c.Next()
}

// authenticate reads the session of the caller's token and checks that it is usable
// (functions.Sessions.AuthenticateToken); one whose account lost its username may still
// leave.
func (n *Node) authenticate(c *fiber.Ctx, tok *verified) (functions.Principal, error) {
	p, err := n.sessions.AuthenticateToken(c.UserContext(), tok.userID, tok.sessionID, tok.gen, false)
	if functions.ErrorCode(err) == functions.EUsernameConflict && leaving(c) {
		p, err = n.sessions.AuthenticateToken(c.UserContext(), tok.userID, tok.sessionID, tok.gen, true)
	}
	return p, err
}

// caller returns the verified token of the request's caller: the bearer token's, or the
// one the node that forwarded the request verified (forward.go). A token signed with a
// signing key this node does not know yet waits for it (errBehind when it cannot).
func (n *Node) caller(c *fiber.Ctx) (verified, error) {
	if f := forwardedOf(c); f != nil && f.caller != nil {
		return *f.caller, nil
	}
	raw, ok := bearerToken(c.Get(fiber.HeaderAuthorization))
	if !ok {
		return verified{}, functions.Errorf(functions.EUnauthorized, "missing bearer token")
	}
	return n.verifyToken(c, raw)
}

// verifyToken verifies a session token that request c carries — its bearer token, or the
// token an app asks to introspect (service.go): the one place a request's token is
// verified, so that whatever verification waits for holds on every route.
func (n *Node) verifyToken(c *fiber.Ctx, raw string) (verified, error) {
	v, err := n.tokens.verify(raw)
	if err != nil && errors.Is(err, errKeyUnknown) && !v.created.IsZero() {
		// Signed with a key this node has not received yet? The key's creation is in the
		// token's bookmark: meet it where signing keys live, then look again. Never a 401
		// caused by lag; errBehind (503) if it cannot be met in time.
		if err := n.awaitIn(c, v.created, crdt.ClusterPartition); err != nil {
			return verified{}, err
		}
		v, err = n.tokens.verify(raw)
	}
	return v, err
}

// bearerToken returns the token of an Authorization header of the Bearer scheme, whose
// name is case-insensitive (RFC 7235, section 2.1), and whether there is one.
func bearerToken(h string) (string, bool) {
	const scheme = "Bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	raw := strings.TrimLeft(h[len(scheme):], " ")
	return raw, raw != ""
}

// param, query and header are how handlers read a request's strings: copies, which they
// may keep or hand to functions (which may keep them). The Ctx's own strings alias
// buffers that the connection's next request overwrites. auth's bearer token is the one
// exception, explained there.

// param returns the route parameter called name, copied.
func param(c *fiber.Ctx, name string) string { return strings.Clone(c.Params(name)) }

// query returns the query parameter called name, copied.
func query(c *fiber.Ctx, name string) string { return strings.Clone(c.Query(name)) }

// header returns the request header called name, copied.
func header(c *fiber.Ctx, name string) string { return strings.Clone(c.Get(name)) }

// leaving reports whether the request signs out or erases the account: what an account
// that lost its username may still do (functions.Sessions.AuthenticateLeaving).
func leaving(c *fiber.Ctx) bool {
	if c.Method() != fiber.MethodDelete {
		return false
	}
	p := c.Path()
	return p == "/v1/users/me" || p == "/v1/sessions/current"
}

// principal returns the caller that auth authenticated for the request.
func principal(c *fiber.Ctx) functions.Principal {
	if rc := requestIn(c.UserContext()); rc != nil && rc.authenticated {
		return rc.principal
	}
	p, _ := c.Locals(localsPrincipal).(functions.Principal)
	return p
}

func (n *Node) register(c *fiber.Ctx) error {
	var req api.RegisterRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	// Every registration that gets past validation counts against the address, taken
	// names (409) too, so names cannot be probed without limit (throttle.go); not one
	// refused for want of a password-hashing worker (503), which hashes before it looks
	// at the name and so reveals nothing. A sign-up forwarded here was limited and is
	// charged by the node that forwarded it.
	var at *attempt
	if forwardedOf(c) == nil {
		var ok bool
		var r refusal
		if at, ok, r = n.limits.signup(c.UserContext(), n.cfg.SignupsPerAddress, n.clientAddr(c)); !ok {
			return n.signupsThrottled(c, r)
		}
	}
	// One address has at most its share of the password-hashing queue (hashing.go).
	u, err := n.users.Register(functions.WithHashClient(c.UserContext(), addrKey(n.clientAddr(c))), functions.Register{
		Username: req.Username, Password: req.Password, Profile: req.Profile,
	})
	if at != nil {
		code := functions.ErrorCode(err)
		at.done(code != functions.EInvalid && code != functions.EUnavailable)
	}
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(api.UserResponse{User: u})
}

// loginsThrottled answers a login refused by the limits.
func (n *Node) loginsThrottled(c *fiber.Ctx, r refusal) error {
	n.metrics.loginFailures.WithLabelValues("throttled").Inc()
	return n.throttled(c, r, "too many failed logins", "too many logins to this account or from this address at once")
}

// signupsThrottled answers a sign-up refused by the limit.
func (n *Node) signupsThrottled(c *fiber.Ctx, r refusal) error {
	return n.throttled(c, r, "too many sign-ups from this address", "too many sign-ups from this address at once")
}

// throttled answers an attempt the limits refused: what says why when the counts refused
// it, busy when attempts in flight did (throttle.go).
func (n *Node) throttled(c *fiber.Ctx, r refusal, what, busy string) error {
	if r.busy {
		what = busy
	}
	return n.rateLimited(c, r.wait, what)
}

// knownDevice reports whether device is a device token of the account that owns username
// now, issued after its owner last signed out everywhere: a token issued to an earlier
// owner of the name (erased, or the loser of a concurrent registration), or before "sign
// out everywhere" (a device the owner meant to shut out), lifts nothing. It lifts nothing
// either when the account's record is not at hand here.
func (n *Node) knownDevice(c *fiber.Ctx, device, username string) bool {
	owner, issued, ok := n.tokens.deviceOwner(device, username)
	if !ok {
		return false
	}
	u, err := n.users.Lookup(c.UserContext(), username)
	if err != nil || u.ID != owner {
		return false
	}
	m, found, err := n.db.Record(c.UserContext(), crdt.UserKey(owner))
	if err != nil || !found {
		return false
	}
	rec := crdt.ReadUser(owner, &m)
	if !issued.created.IsZero() {
		// Ended as the session it was issued with is. (Not refused for a mark ahead of
		// this node's clock: a node whose clock ran ahead issues such marks to honest
		// owners too, and the chaos suite's password-guessing flood locked one out.)
		return !rec.Revokes(crdt.Session{Created: issued.created, SeenUntil: issued.seen})
	}
	return rec.SessionsUntil.IsZero() || issued.iat.After(rec.SessionsUntil.Time())
}

func (n *Node) login(c *fiber.Ctx) error {
	var req api.LoginRequest // Device: a device token from an earlier login (tokens.go)
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	// Failures are limited per address, per account and address, and per account (not
	// for a client with a device token of the account); successes charge nothing. See
	// throttle.go.
	// A login forwarded here was limited by address, and is charged by address, by the
	// node that forwarded it.
	at, ok, r := n.limits.login(c.UserContext(), loginLimits{
		Address: n.cfg.LoginPerAddress, AccountAddress: n.cfg.LoginPerAccountAddress, Account: n.cfg.LoginPerAccount,
	}, n.clientAddr(c), req.Username, n.knownDevice(c, req.Device, req.Username), forwardedOf(c) != nil)
	if !ok {
		return n.loginsThrottled(c, r)
	}
	// Sign-ins that succeed are limited per account (throttle.go).
	sat, ok, r := n.limits.signIn(c.UserContext(), n.cfg.SignInsPerAccount, req.Username)
	if !ok {
		at.done(false)
		n.metrics.loginFailures.WithLabelValues("signins").Inc()
		return n.throttled(c, r, "too many sign-ins to this account; sign out of sessions you do not use, or try again later",
			"too many sign-ins to this account at once")
	}
	// One address has at most its share of the password-hashing queue (hashing.go):
	// correct passwords charge no limit on failures, so this is what stops one address
	// from filling it.
	ctx := functions.WithHashClient(c.UserContext(), addrKey(n.clientAddr(c)))
	s, err := n.sessions.Login(ctx, functions.Login{Username: req.Username, Password: req.Password, Origin: n.origin(c)})
	at.done(functions.ErrorCode(err) == functions.EUnauthorized)
	sat.done(err == nil)
	if err != nil {
		switch functions.ErrorCode(err) {
		case functions.EUnauthorized:
			n.metrics.loginFailures.WithLabelValues("credentials").Inc()
		case functions.EUsernameConflict:
			n.metrics.loginFailures.WithLabelValues("conflict").Inc()
		}
		return err
	}
	// The token carries the bookmark of the session's creation and of the account's
	// record, which authentication reads too, so it works at once on every node. Not the
	// request's bookmark: that may be long, and the client sends it anyway.
	var created crdt.Bookmark
	if rc := requestIn(c.UserContext()); rc != nil {
		rc.owner = s.UserID // the credentials were this user's
		if u, ok, err := n.db.Record(c.UserContext(), crdt.UserKey(s.UserID)); err == nil && ok {
			rc.shown.AddMap(&u)
		}
		created = rc.shown.Clone()
	}
	tok, err := n.tokens.sign(c.UserContext(), s.UserID, s.ID, s.ExpiresAt, created, 0)
	if err != nil {
		return err
	}
	// The device token is ordered against a later sign-out everywhere as its session is.
	var sessionAt, seen crdt.Timestamp
	if m, ok, err := n.db.Record(c.UserContext(), crdt.SessionKey(s.ID)); err == nil && ok {
		rec := crdt.ReadSessionMeta(s.ID, &m)
		sessionAt, seen = rec.Created, rec.SeenUntil
	}
	device, err := n.tokens.signDevice(s.UserID, req.Username, sessionAt, seen)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(api.LoginResponse{Token: tok, Session: s, Device: device})
}

// origin is where and how a session signed in by request c begins: the client's user
// agent label, its address (unless --session-address=false) and this node.
func (n *Node) origin(c *fiber.Ctx) crdt.Origin {
	o := crdt.Origin{Device: deviceLabel(c.Get(fiber.HeaderUserAgent)), Region: n.cfg.Region, Node: n.cfg.NodeName}
	if !n.cfg.OmitSessionAddress {
		if a := n.clientAddr(c); a != "unknown" {
			o.ClientAddr = a
		}
	}
	return o
}

// renewSession replaces the caller's token with a new one for the same session (a
// defence against session fixation): the token it presented, and every earlier one of
// the session, stop working; the session and its data stay.
func (n *Node) renewSession(c *fiber.Ctx) error {
	s, gen, err := n.sessions.Renew(c.UserContext(), principal(c))
	if err != nil {
		return err
	}
	// The new token carries the bookmark of what the renewal showed and wrote (the
	// session's creation and its renewal), like a sign-in's.
	var created crdt.Bookmark
	if rc := requestIn(c.UserContext()); rc != nil {
		created = rc.shown.Clone()
	}
	tok, err := n.tokens.sign(c.UserContext(), s.UserID, s.ID, s.ExpiresAt, created, gen)
	if err != nil {
		return err
	}
	return c.JSON(api.RenewResponse{Session: s, Token: tok})
}

// currentSession answers with the caller's session. Its encoding follows from the session
// record and the username alone, so it is kept with the record's state (crdt.Map.SetMemo)
// and reused by every read of that state, until the record changes; the username, read
// from the user record, is checked on each use.
func (n *Node) currentSession(c *fiber.Ctx) error {
	p := principal(c)
	rec, loaded := p.SessionRecord()
	if v, ok := rec.Memo(sessionDocKey{}); ok && loaded {
		if d := v.(*sessionDoc); d.username == p.Username {
			return setJSONBody(c, append(takeBody(c), d.doc...), nil)
		}
	}
	s, err := n.sessions.Current(c.UserContext(), p)
	if err != nil {
		return err
	}
	b, err := appendSessionDoc(takeBody(c), s)
	if err == nil && loaded && s.Username == p.Username {
		rec.SetMemo(sessionDocKey{}, &sessionDoc{username: s.Username, doc: bytes.Clone(b)})
	}
	return setJSONBody(c, b, err)
}

// sessionDocKey is the key of a sessionDoc kept with a session record's state.
type sessionDocKey struct{}

// sessionDoc is {"session":…} as currentSession encodes it for a session record's state
// and the username it shows. Shared by the requests that read that state: never changed.
type sessionDoc struct {
	username string
	doc      []byte
}

func (n *Node) patchSession(c *fiber.Ctx) error {
	patch, err := decodePatch(c)
	if err != nil {
		return err
	}
	s, err := n.sessions.PatchData(c.UserContext(), principal(c), patch)
	if err != nil {
		return err
	}
	return sendSession(c, s)
}

// decodePatch decodes the body of a PATCH of session data, {data:{key: value, key2:
// null}}: null deletes a key.
func decodePatch(c *fiber.Ctx) (functions.DataPatch, error) {
	var req api.PatchSessionRequest
	if err := decodeJSON(c, &req); err != nil {
		return functions.DataPatch{}, err
	}
	if req.Data == nil {
		return functions.DataPatch{}, badRequest("field \"data\" must be an object")
	}
	patch := functions.DataPatch{Set: make(map[string]json.RawMessage)}
	for k, v := range req.Data {
		if string(v) == "null" {
			patch.Delete = append(patch.Delete, k)
		} else {
			patch.Set[k] = compactJSON(v)
		}
	}
	return patch, nil
}

// compactJSON drops insignificant whitespace, so stored values are canonical. A value with
// no whitespace byte at all (most are small) is compact already and returned as it is.
func compactJSON(v json.RawMessage) json.RawMessage {
	if !bytes.ContainsAny(v, " \t\r\n") {
		return v
	}
	var b bytes.Buffer
	if err := json.Compact(&b, v); err != nil {
		return v
	}
	return b.Bytes()
}

func (n *Node) logout(c *fiber.Ctx) error {
	p := principal(c)
	if err := n.sessions.Revoke(c.UserContext(), p, p.SessionID); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (n *Node) listSessions(c *fiber.Ctx) error {
	ss, err := n.sessions.List(c.UserContext(), principal(c))
	if err != nil {
		return err
	}
	return sendSessions(c, ss)
}

func (n *Node) revokeSession(c *fiber.Ctx) error {
	id := param(c, "id")
	if err := n.sessions.Revoke(c.UserContext(), principal(c), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (n *Node) revokeAll(c *fiber.Ctx) error {
	if err := n.sessions.RevokeAll(c.UserContext(), principal(c)); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (n *Node) me(c *fiber.Ctx) error {
	u, err := n.users.Me(c.UserContext(), principal(c).UserID)
	if err != nil {
		return err
	}
	return c.JSON(api.UserResponse{User: u})
}

func (n *Node) patchMe(c *fiber.Ctx) error {
	var req api.PatchProfileRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Profile == nil {
		return badRequest("field \"profile\" must be an object")
	}
	p := req.Profile
	u, err := n.users.UpdateProfile(c.UserContext(), principal(c).UserID, functions.ProfilePatch{
		FirstName: p.FirstName, LastName: p.LastName, Email: p.Email, Address: p.Address,
	})
	if err != nil {
		return err
	}
	return c.JSON(api.UserResponse{User: u})
}

func (n *Node) deleteMe(c *fiber.Ctx) error {
	if err := n.users.Delete(c.UserContext(), principal(c).UserID); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (n *Node) sendMessage(c *fiber.Ctx) error {
	var req api.SendMessageRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	p := principal(c)
	if err := n.lookupAllowed(c, p); err != nil {
		return err
	}
	at, ok, r := n.limits.message(c.UserContext(), n.cfg.MessagesPerUser, p.UserID)
	if !ok {
		return n.throttled(c, r, "too many messages", "too many messages at once")
	}
	m, err := n.messages.Send(c.UserContext(), p, functions.Send{To: req.To, Body: req.Body, After: req.After})
	at.done(err == nil)
	n.noteUnknownName(p, err)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(api.MessageResponse{Message: m})
}

// lookupAllowed refuses (429) a request that names a user when its caller named too many
// that do not exist lately (see throttle.go).
func (n *Node) lookupAllowed(c *fiber.Ctx, p functions.Principal) error {
	key := "n|" + p.UserID
	if over, wait := n.limits.gauge(setUnknownNames, key).over(n.cfg.UnknownNamesPerUser); over {
		return n.rateLimited(c, wait, "too many unknown names")
	}
	return nil
}

// noteUnknownName charges the caller's unknown-name count when err says the user it
// named does not exist.
func (n *Node) noteUnknownName(p functions.Principal, err error) {
	if functions.ErrorCode(err) == functions.ENotFound {
		n.limits.counts.Add(setUnknownNames, "n|"+p.UserID)
	}
}

// rateLimited is the 429 of the per-user limits, with Retry-After.
func (n *Node) rateLimited(c *fiber.Ctx, wait time.Duration, what string) error {
	s := retryAfterSeconds(wait.Seconds())
	c.Set(fiber.HeaderRetryAfter, s)
	return functions.Errorf(functions.ERateLimited, "%s; try again in %ss", what, s)
}

func (n *Node) listMessages(c *fiber.Ctx) error {
	with, after := query(c, "with"), query(c, "after")
	if with == "" {
		return badRequest("query parameter \"with\" is required")
	}
	limit, err := limitParam(c)
	if err != nil {
		return err
	}
	p := principal(c)
	if err := n.lookupAllowed(c, p); err != nil {
		return err
	}
	page, err := n.messages.List(c.UserContext(), p, with, after, limit)
	n.noteUnknownName(p, err)
	if err != nil {
		return err
	}
	return c.JSON(page)
}

func (n *Node) conversations(c *fiber.Ctx) error {
	limit, err := limitParam(c)
	if err != nil {
		return err
	}
	page, err := n.messages.Conversations(c.UserContext(), principal(c), query(c, "after"), limit)
	if err != nil {
		return err
	}
	return c.JSON(page)
}

// limitParam returns the query parameter limit of a paged listing, 0 when absent.
func limitParam(c *fiber.Ctx) (int, error) {
	s := query(c, "limit")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		return 0, badRequest("limit must be a positive number")
	}
	return v, nil
}

func (n *Node) clusterInfo(c *fiber.Ctx) error {
	return c.JSON(n.cluster.Info())
}
