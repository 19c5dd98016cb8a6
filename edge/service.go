package edge

import (
	"encoding/json"
	"errors"
	"net/url"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
)

// Service routes (/v1/service/) serve apps — a website's backend — not users. A request
// authenticates with Authorization: Bearer <API key> (functions.APIKey; `sessiond apps
// create` makes one), checked against the app's cluster-wide record, which every node
// holds (crdt.AppPrefix): any node authenticates any app at once, and a revocation takes
// effect on each node as it arrives. A user's session token gets 403 there, as an API key
// does on the user routes (auth). Failed authentications are limited per client address,
// and requests per app (throttle.go).
//
// A service handler reads the app's name with serviceApp and scopes everything it reads
// and writes to it. A route that is about one partition of the data names it with
// serviceAt, which forwards the request to a holder when this node holds no copy (the
// holder trusts the app the forwarding node authenticated, as it trusts a forwarded
// user: forward.go), and is followed by consistency, which meets the request's bookmark:
//
//	svc.Get("/thing/:id", n.serviceAt(partitionOfThing), n.consistency, n.getThing)

const localsApp = "app"

// serviceApp returns the name of the app that the request authenticated as (serviceAuth):
// what a service handler scopes everything it reads and writes to. It is "" outside the
// service routes.
func serviceApp(c *fiber.Ctx) string {
	app, _ := c.Locals(localsApp).(string)
	return app
}

// serviceRoutes adds the service routes to app.
func (n *Node) serviceRoutes(app *fiber.App) {
	svc := app.Group("/v1/service", n.serviceAuth)
	svc.Get("/app", n.consistency, n.serviceWhoAmI)
	svc.Post("/sessions", n.serviceAt(n.subjectInBody), n.consistency, n.createServiceSession)
	svc.Get("/sessions/:id", n.serviceAt(sessionInPath), n.consistency, n.getServiceSession)
	svc.Patch("/sessions/:id", n.serviceAt(sessionInPath), n.consistency, n.patchServiceSession)
	svc.Delete("/sessions/:id", n.serviceAt(sessionInPath), n.consistency, n.deleteServiceSession)
	svc.Post("/introspect", n.serviceAt(n.tokenInBody), n.consistency, n.introspect)
	svc.Get("/subjects/:subject/sessions", n.serviceAt(subjectInPath), n.consistency, n.subjectSessions)
	svc.Delete("/subjects/:subject/sessions", n.serviceAt(subjectInPath), n.consistency, n.revokeSubject)
	n.kvRoutes(svc) // kv.go
	svc.Use(func(c *fiber.Ctx) error { return fiber.NewError(fiber.StatusNotFound, "no such route") })
}

// serviceAuth authenticates a service request and charges the limits (throttle.go); a
// request another node forwarded here was authenticated and charged there.
func (n *Node) serviceAuth(c *fiber.Ctx) error {
	if f := forwardedOf(c); f != nil && f.app != "" {
		c.Locals(localsApp, f.app)
		return c.Next()
	}
	addr := "a|" + addrKey(n.clientAddr(c))
	// An address over its failure limit is refused only for keys that do not
	// authenticate: an app sharing the address (a NAT, a platform's egress) with whoever
	// sends wrong keys keeps working. A key is a 256-bit secret, so letting valid ones
	// through helps no guesser; the limit bounds what failures cost (waits for a key
	// this node lacks, token checks), so over it a key is checked only against what this
	// node holds, at once.
	over, wait := n.limits.gauge(setServiceFailures, addr).over(n.cfg.ServiceFailuresPerAddress)
	app, err := n.authenticateApp(c, !over)
	if err != nil {
		if over {
			return n.rateLimited(c, wait, "too many requests with an API key that did not authenticate from this address")
		}
		n.limits.counts.Add(setServiceFailures, addr)
		return err
	}
	key := "r|" + app
	if over, wait := n.limits.gauge(setServiceRequests, key).over(n.cfg.ServiceRequestsPerApp); over {
		return n.rateLimited(c, wait, "too many requests from this app")
	}
	n.limits.counts.Add(setServiceRequests, key)
	c.Locals(localsApp, app)
	return c.Next()
}

// authenticateApp returns the app whose API key the request carries. When patient, a
// key this node does not know (yet) is checked again once the bookmark of its creation,
// which it carries, is met: a fresh key works on every node at once, and never gets a
// 401 caused by lag; and a session token sent instead is told apart from garbage (403
// rather than 401). When not, only what this node holds now is checked.
func (n *Node) authenticateApp(c *fiber.Ctx, patient bool) (string, error) {
	raw, ok := bearerToken(c.Get(fiber.HeaderAuthorization))
	if !ok {
		return "", functions.Errorf(functions.EUnauthorized, "missing API key: send Authorization: Bearer <API key>")
	}
	if !functions.IsAPIKey(raw) {
		if !patient {
			return "", functions.Errorf(functions.EUnauthorized, "not an API key: they begin %q", functions.APIKeyPrefix)
		}
		if _, err := n.tokens.verify(raw); err == nil || errors.Is(err, errTokenAhead) {
			return "", functions.Errorf(functions.EForbidden, "a session token does not open the service routes: they take an app's API key (sessiond apps create)")
		}
		return "", functions.Errorf(functions.EUnauthorized, "not an API key: they begin %q", functions.APIKeyPrefix)
	}
	k, err := functions.ParseAPIKey(raw)
	if err != nil {
		return "", err
	}
	app, err := n.apps.Authenticate(c.UserContext(), k)
	if patient && err != nil && err != functions.ErrAppRevoked && functions.ErrorCode(err) == functions.EUnauthorized && !k.Bookmark.IsZero() {
		if err := n.awaitIn(c, k.Bookmark, crdt.ClusterPartition); err != nil {
			return "", err
		}
		app, err = n.apps.Authenticate(c.UserContext(), k)
	}
	return app, err
}

// serviceAt returns the handler that routes a service request about the partition where
// names (ok false: none in particular, or a request the handler will refuse): served here
// when this node holds it, else forwarded to a node that does (forward.go). Follow it
// with consistency.
func (n *Node) serviceAt(where func(c *fiber.Ctx) (p int, ok bool)) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if n.cfg.Replicas == 0 || !n.replicator.Sharded() {
			return c.Next()
		}
		p, ok := where(c)
		if !ok {
			return c.Next()
		}
		c.Locals(localsPartition, p) // what a bookmark is awaited in (partitionIn)
		if forwardedOf(c) != nil || n.replicator.HoldsPartition(p) {
			return c.Next()
		}
		return n.forward(c, p, nil)
	}
}

// serviceWhoAmI serves GET /v1/service/app: the app the key authenticates as, for an app
// to check its key.
func (n *Node) serviceWhoAmI(c *fiber.Ctx) error {
	a, err := n.apps.Get(c.UserContext(), serviceApp(c))
	if err != nil {
		return err
	}
	return c.JSON(api.AppResponse{App: a})
}

// Where service requests are served (serviceAt): a subject's records and sessions live in
// the partition of its user ID (crdt.SubjectID), which a session's ID names too.

// subjectInBody places a request by the subject its JSON body names.
func (n *Node) subjectInBody(c *fiber.Ctx) (int, bool) {
	var body struct {
		Subject string `json:"subject"`
	}
	if json.Unmarshal(c.Request().Body(), &body) != nil || functions.ValidSubject(body.Subject) != nil {
		return 0, false
	}
	return crdt.IDPartition(crdt.SubjectID(serviceApp(c), body.Subject)), true
}

// subjectInPath places a request by the subject its path names.
func subjectInPath(c *fiber.Ctx) (int, bool) {
	subject, err := subjectParam(c)
	if err != nil {
		return 0, false
	}
	return crdt.IDPartition(crdt.SubjectID(serviceApp(c), subject)), true
}

// sessionInPath places a request by the session its path names.
func sessionInPath(c *fiber.Ctx) (int, bool) {
	id := c.Params("id")
	if !validSessionID(id) {
		return 0, false
	}
	return crdt.IDPartition(id), true
}

// tokenInBody places a request by the user of the session token its JSON body holds.
func (n *Node) tokenInBody(c *fiber.Ctx) (int, bool) {
	var body struct {
		Token string `json:"token"`
	}
	if json.Unmarshal(c.Request().Body(), &body) != nil || len(body.Token) > maxIntrospected {
		return 0, false
	}
	tok, err := n.verifyToken(c, body.Token)
	if err != nil {
		return 0, false
	}
	return crdt.IDPartition(tok.userID), true
}

// maxIntrospected bounds the tokens introspection looks at: a session token is about 400
// bytes; a longer one is inactive unparsed.
const maxIntrospected = 4096

// validSessionID reports whether id can be a session's ID: 32 lowercase hex digits, as
// every node makes them. Another is no session (404) without a read.
func validSessionID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// subjectParam returns the subject of the route's path, unescaped (a subject may hold
// '/', sent as %2F) and checked.
func subjectParam(c *fiber.Ctx) (string, error) {
	subject, err := url.PathUnescape(c.Params("subject"))
	if err != nil {
		return "", badRequest("the subject in the path is not validly %%-escaped")
	}
	return subject, functions.ValidSubject(subject)
}

// serviceOrigin is the origin recorded with a session an app creates: the node that
// created it. Not the client's address or user agent: the client is the app's server.
func (n *Node) serviceOrigin() crdt.Origin {
	return crdt.Origin{Region: n.cfg.Region, Node: n.cfg.NodeName}
}

// seconds converts a lifetime in seconds from a request to a Duration, refusing what
// cannot be one (the functions check the bounds).
func seconds(field string, v int64) (time.Duration, error) {
	if v < 0 || v > int64(functions.MaxServiceTTL/time.Second) {
		return 0, badRequest("%s must be %d to %d seconds", field, int64(functions.MinServiceTTL/time.Second), int64(functions.MaxServiceTTL/time.Second))
	}
	return time.Duration(v) * time.Second, nil
}

// createServiceSession serves POST /v1/service/sessions {subject, data, ttl, idle_ttl}:
// 201 {session, token}.
func (n *Node) createServiceSession(c *fiber.Ctx) error {
	var req api.CreateServiceSessionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	ttl, err := seconds("ttl", req.TTL)
	if err != nil {
		return err
	}
	idle, err := seconds("idle_ttl", req.IdleTTL)
	if err != nil {
		return err
	}
	data := make(map[string]json.RawMessage, len(req.Data))
	for k, v := range req.Data {
		data[k] = compactJSON(v)
	}
	s, err := n.sessions.CreateForSubject(c.UserContext(), serviceApp(c), functions.SubjectLogin{
		Subject: req.Subject, Data: data, TTL: ttl, IdleTTL: idle, SubjectWrites: req.SubjectWrites, Origin: n.serviceOrigin(),
	})
	if err != nil {
		return err
	}
	// The token carries the bookmark of the session's creation and of its subject's
	// record, as a sign-in's does, so that it works at once on every node.
	var created crdt.Bookmark
	if rc := requestIn(c.UserContext()); rc != nil {
		created = rc.shown.Clone()
	}
	tok, err := n.tokens.sign(c.UserContext(), s.UserID, s.ID, s.ExpiresAt, created, 0)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(api.ServiceSessionResponse{Session: s, Token: tok})
}

// getServiceSession serves GET /v1/service/sessions/{id}.
func (n *Node) getServiceSession(c *fiber.Ctx) error {
	id := param(c, "id")
	if !validSessionID(id) {
		return errNoSession
	}
	s, err := n.sessions.ServiceSession(c.UserContext(), serviceApp(c), id)
	if err != nil {
		return err
	}
	return sendSession(c, s)
}

var errNoSession = functions.Errorf(functions.ENotFound, "no such session")

// patchServiceSession serves PATCH /v1/service/sessions/{id} {data}.
func (n *Node) patchServiceSession(c *fiber.Ctx) error {
	id := param(c, "id")
	patch, err := decodePatch(c)
	if err != nil {
		return err
	}
	if !validSessionID(id) {
		return errNoSession
	}
	s, err := n.sessions.PatchServiceSession(c.UserContext(), serviceApp(c), id, patch)
	if err != nil {
		return err
	}
	return sendSession(c, s)
}

// deleteServiceSession serves DELETE /v1/service/sessions/{id}: 204.
func (n *Node) deleteServiceSession(c *fiber.Ctx) error {
	id := param(c, "id")
	if !validSessionID(id) {
		return errNoSession
	}
	if err := n.sessions.RevokeServiceSession(c.UserContext(), serviceApp(c), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// introspect serves POST /v1/service/introspect {token}: {active, session, user}, 200
// whether or not the token is active.
func (n *Node) introspect(c *fiber.Ctx) error {
	var req api.IntrospectRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	inactive := func() error { return c.JSON(api.IntrospectResponse{Active: false}) }
	if req.Token == "" || len(req.Token) > maxIntrospected {
		return inactive()
	}
	tok, err := n.verifyToken(c, req.Token)
	if errors.Is(err, errTokenAhead) {
		// Issued by a node whose clock runs ahead: retry once this one's reaches it.
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(tok.issued.Sub(n.cfg.Now()).Seconds()))
		return errBehind
	}
	if err != nil {
		return inactive()
	}
	app := serviceApp(c)
	s, err := n.sessions.Introspect(c.UserContext(), app, tok.userID, tok.sessionID, tok.gen)
	if functions.ErrorCode(err) == functions.EUnauthorized && !tok.created.IsZero() {
		// Never inactive because this node lags: as auth does, meet the bookmark of the
		// session's creation, then look again.
		if err := n.await(c, tok.created); err != nil {
			return err
		}
		s, err = n.sessions.Introspect(c.UserContext(), app, tok.userID, tok.sessionID, tok.gen)
	}
	if functions.ErrorCode(err) == functions.EUnauthorized {
		return inactive()
	}
	if err != nil {
		return err
	}
	return c.JSON(api.IntrospectResponse{Active: true, Session: &s, User: &api.SubjectUser{ID: s.UserID, Subject: s.Subject}})
}

// subjectSessions serves GET /v1/service/subjects/{subject}/sessions: {sessions}, the
// subject's usable sessions, newest first.
func (n *Node) subjectSessions(c *fiber.Ctx) error {
	subject, err := subjectParam(c)
	if err != nil {
		return err
	}
	ss, err := n.sessions.SubjectSessions(c.UserContext(), serviceApp(c), subject)
	if err != nil {
		return err
	}
	return sendSessions(c, ss)
}

// revokeSubject serves DELETE /v1/service/subjects/{subject}/sessions: 204, every
// session of the subject revoked.
func (n *Node) revokeSubject(c *fiber.Ctx) error {
	subject, err := subjectParam(c)
	if err != nil {
		return err
	}
	if err := n.sessions.RevokeSubject(c.UserContext(), serviceApp(c), subject); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}
