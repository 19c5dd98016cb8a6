package edge

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
)

// Forwarding. With Config.Replicas, a node holds only some partitions of the data
// (crdt.KeyHomes). A request is about one partition: a sign-up or a login about its
// username's (crdt.NamePartition), every authenticated request about its caller's
// (crdt.IDPartition of the token's user: the user's records and conversations live
// there). A node that does not hold that partition verifies the caller's token itself,
// then forwards the request over the authenticated node-to-node channel to a node that
// holds it — its own region's holders first, in placement order, then other regions' —
// and relays the answer: X-Served-By names the node that served it, and
// X-Sessiond-Forwarded-By the node that forwarded it. The forwarded request carries the
// verified caller (for a service request, the app it authenticated as: service.go) and
// the client's address (for the cluster-wide limits); the serving node trusts them (the
// channel proves the sender holds the cluster key) and serves the request itself
// whatever its own placement says, so a request is forwarded at most once.
//
// A holder that cannot be reached is skipped (a failed dial, or any failure of a read,
// which is safe to repeat); a write that may have reached a holder is not sent to another
// (it would be applied twice): it is answered 503 with Retry-After. When no holder can be
// reached at all, the node serves the request itself: a write is accepted and handed off
// to the holders later (handoff.go), so writes are never refused because holders are down
// — but for a login (503: the account's record is not here, and a 401 would be wrong);
// an authenticated request whose session is not here gets 503 behind, and so does one
// whose bookmark names writes there (what a node knows it holds says nothing of a
// partition it does not hold: cluster.Replicator.Await answers behind at once).
// Placement follows the live members, so this is the moment between a holder's failure
// and its detection, with every other holder of the partition in every region out of
// reach too.
// /v1/cluster, the UI, health and metrics are always served by the node asked.

const (
	headerForwardedBy = "X-Sessiond-Forwarded-By"

	// The wrapping of a forwarded request, as headers of the node-to-node request.
	wrapMethod = "Sessiond-Method"
	wrapURI    = "Sessiond-Uri"
	wrapClient = "Sessiond-Client"
	wrapCaller = "Sessiond-Caller"
	wrapApp    = "Sessiond-App"
	wrapBy     = "Sessiond-By"

	// forwardTimeout bounds a forwarded request, but a stream (which runs until the client
	// leaves): a login under load and a bookmark wait fit well within it.
	forwardTimeout = 15 * time.Second
	// maxForwardedReply bounds a relayed answer; the API's own limits keep answers far
	// below it.
	maxForwardedReply = cluster.MaxForwardReply
)

// forwardedHeaders are the client's request headers a forwarded request carries.
var forwardedHeaders = []string{fiber.HeaderContentType, fiber.HeaderAccept, fiber.HeaderUserAgent, headerBookmark, headerConsistency, headerRequestID}

// forwardedKey is the fasthttp user value under which a forwarded request's wrapping
// reaches the handlers: only the node-to-node channel sets it, never a client.
type forwardedKey struct{}

// forwardedRequest is what the forwarding node vouches for.
type forwardedRequest struct {
	client string    // the client's address, as the forwarding node determined it
	by     string    // the forwarding node's name
	caller *verified // the verified token of an authenticated request; nil for sign-up and login
	app    string    // the authenticated app of a service request (service.go); "" for others
}

// forwardedOf returns the wrapping of a request forwarded to this node, or nil.
func forwardedOf(c *fiber.Ctx) *forwardedRequest {
	f, _ := c.Context().UserValue(forwardedKey{}).(*forwardedRequest)
	return f
}

// route serves a request here when this node holds its partition (or it was forwarded
// here), and forwards it otherwise. It runs only when the data is sharded.
func (n *Node) route(c *fiber.Ctx) error {
	if !n.replicator.Sharded() {
		return c.Next()
	}
	if len(c.Request().Body()) > 0 {
		// Before anything reads the body to route it or sends it on: see rawBody.
		if _, err := rawBody(c); err != nil {
			return err
		}
	}
	p, caller, ok := n.partitionOf(c)
	if ok {
		c.Locals(localsPartition, p) // what a bookmark is awaited in (partitionIn)
	}
	if !ok || forwardedOf(c) != nil || n.replicator.HoldsPartition(p) {
		return c.Next()
	}
	return n.forward(c, p, caller)
}

const localsPartition = "partition"

// partitionIn returns the partition a request is about, as route found it, or
// cluster.AllPartitions when it found none (or the data is not sharded).
func partitionIn(c *fiber.Ctx) int {
	if p, ok := c.Locals(localsPartition).(int); ok {
		return p
	}
	return cluster.AllPartitions
}

// partitionOf returns the partition a request is about and, for an authenticated one,
// its verified caller; ok is false for a request served wherever it arrives (or one that
// is invalid: the handlers answer it here). A sign-up's or login's body is read as its
// handler reads it (decodeJSON, into the same request type), so that every body the
// handler accepts goes to the username's holders: a body read two ways could reach a
// handler on a node that does not hold the name's claim, which would then register a
// taken name (found by an outside review).
func (n *Node) partitionOf(c *fiber.Ctx) (p int, caller *verified, ok bool) {
	path := c.Path()
	if c.Method() == fiber.MethodPost && (path == "/v1/users" || path == "/v1/sessions") {
		var username string
		if path == "/v1/users" {
			var req api.RegisterRequest
			if decodeJSON(c, &req) != nil {
				return 0, nil, false
			}
			username = req.Username
		} else {
			var req api.LoginRequest
			if decodeJSON(c, &req) != nil {
				return 0, nil, false
			}
			username = req.Username
		}
		if username == "" {
			return 0, nil, false
		}
		return crdt.NamePartition(username), nil, true
	}
	if path == "/v1/cluster" {
		return 0, nil, false
	}
	tok, err := n.caller(c)
	if err != nil {
		return 0, nil, false
	}
	return crdt.IDPartition(tok.userID), &tok, true
}

// forward relays the request to a holder of partition p and its answer to the client.
func (n *Node) forward(c *fiber.Ctx, p int, caller *verified) error {
	stream := c.Path() == "/v1/messages/stream"
	// Relayed as it comes and with no time bound, like the stream: an export may be long.
	long := stream || c.Path() == "/v1/users/me/export"
	repeatable := c.Method() == fiber.MethodGet || c.Method() == fiber.MethodHead
	wrapping := func(set func(k, v string)) {
		set(wrapMethod, c.Method())
		set(wrapURI, string(c.Request().RequestURI()))
		set(wrapClient, n.clientAddr(c))
		set(wrapBy, n.cfg.NodeName)
		if caller != nil {
			set(wrapCaller, encodeCaller(caller))
		}
		if app := serviceApp(c); app != "" {
			set(wrapApp, app)
		}
		for _, h := range forwardedHeaders {
			if v := c.Get(h); v != "" {
				set(h, v)
			}
		}
	}
	body := c.Request().Body() // as sent: route refused a compressed one
	// Sign-ups and logins are limited and charged by address here, where the client is
	// seen (throttle.go); the holder that serves them applies the other limits.
	at, charge, err := n.entryLimits(c)
	if err != nil {
		return err
	}
	status := 0 // the holder's answer, once there is one
	defer func() {
		if at != nil {
			at.done(charge(status))
		}
	}()
	// A relayed stream holds resources here too: it counts against the user's streams on
	// this node (maxStreamsPerUser), together with those served here, until it ends.
	var releaseStream func()
	if stream && caller != nil {
		release, ok := n.broker.reserveRelay(caller.userID)
		if !ok {
			c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(streamPing.Seconds()))
			return functions.Errorf(functions.ERateLimited, "at most %d open streams per user", maxStreamsPerUser)
		}
		releaseStream = release
		defer func() {
			if releaseStream != nil { // not handed to relay
				releaseStream()
			}
		}()
	}
	if !long {
		relayed, err := n.forwardWhole(c, p, body, repeatable, wrapping, &status)
		if relayed || err != nil {
			return err
		}
		return n.noHolder(c, &at)
	}
	wrap := make(http.Header, 8)
	wrapping(wrap.Set)
	for _, peer := range n.replicator.Holders(p) {
		ctx, cancel := n.relays, context.CancelFunc(func() {}) // until the client or this node leaves
		resp, err := n.transport.ForwardStream(ctx, peer, wrap.Clone(), body)
		if err != nil {
			cancel()
			if err := n.forwardFailed(c, peer, err, repeatable); err != nil {
				return err
			}
			continue
		}
		if err := n.refusedAsRemoved(resp.StatusCode, resp.Header.Get(wrapBy)); err != nil {
			_ = resp.Body.Close()
			cancel()
			return err
		}
		if refusedByChannel(resp.StatusCode, resp.Header.Get(wrapBy)) {
			_ = resp.Body.Close()
			cancel()
			continue
		}
		n.metrics.forwarded(peer.Name)
		status = resp.StatusCode
		if release := releaseStream; release != nil {
			releaseStream = nil // relay releases it once the stream ends
			done := cancel
			cancel = func() { done(); release() }
		}
		var still func() bool // a relayed stream ends once its caller's token stops verifying here
		if stream && caller != nil {
			tok := *caller
			still = func() bool { return n.tokens.valid(tok, n.tokens.now()) }
		}
		return n.relay(c, resp, cancel, long, still)
	}
	return n.noHolder(c, &at)
}

// forwardWhole forwards a request whose answer is read whole (all but the long ones) to
// the holders of p in turn, as forward does, and relays the first answer (relayed; status
// is set to it). It returns neither when no holder answered.
func (n *Node) forwardWhole(c *fiber.Ctx, p int, body []byte, repeatable bool, wrapping func(set func(k, v string)), status *int) (relayed bool, err error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	wrapping(req.Header.Set)
	req.SetBodyRaw(body)
	for _, peer := range n.replicator.Holders(p) {
		ctx, cancel := context.WithTimeout(n.ctx, forwardTimeout)
		err := n.transport.Forward(ctx, peer, req, resp)
		cancel()
		if err != nil {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				return false, functions.Errorf(functions.EUnavailable, "the node holding this data answered incompletely")
			}
			if err := n.forwardFailed(c, peer, err, repeatable); err != nil {
				return false, err
			}
			continue
		}
		code := resp.StatusCode()
		if err := n.refusedAsRemoved(code, string(resp.Header.Peek(wrapBy))); err != nil {
			return false, err
		}
		if refusedByChannel(code, string(resp.Header.Peek(wrapBy))) {
			continue
		}
		n.metrics.forwarded(peer.Name)
		*status = code
		c.Status(code)
		h := &c.Response().Header
		resp.Header.VisitAll(func(k, _ []byte) { // the holder's replace this node's, every value of them
			if relayedHeader(string(k)) {
				h.DelBytes(k)
			}
		})
		resp.Header.VisitAll(func(k, v []byte) {
			if relayedHeader(string(k)) {
				h.AddBytesKV(k, v)
			}
		})
		h.Set(headerForwardedBy, n.cfg.NodeName)
		c.Response().SetBody(resp.Body())
		return true, nil
	}
	return false, nil
}

// forwardFailed decides what follows a forward to peer that failed with err: nil to ask
// the next holder (a repeatable request, or one that was not sent), else the error to
// answer with.
func (n *Node) forwardFailed(c *fiber.Ctx, peer cluster.Peer, err error, repeatable bool) error {
	if n.relays.Err() != nil { // the node is stopping (relays ends first)
		return functions.Errorf(functions.EUnavailable, "node shutting down")
	}
	if repeatable || notDelivered(err) {
		n.log.Debug("forward failed; trying the next holder", "peer", peer.Name, slog.Any("err", err))
		return nil
	}
	n.log.Warn("forwarded write failed after it may have been delivered", "peer", peer.Name, slog.Any("err", err))
	c.Set(fiber.HeaderRetryAfter, "1")
	return functions.Errorf(functions.EUnavailable, "the node holding this data did not answer in time; the request may have been applied")
}

// refusedByChannel reports whether a holder's answer (its status, and the wrapBy header
// that names the node whose API answered) is not the API's but its channel's, which
// refused the wrapping (the holder is starting or stopping): nothing was applied, and the
// next holder may be asked.
func refusedByChannel(status int, by string) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable && by == ""
}

// refusedAsRemoved handles a holder's answer (status, wrapBy) that refused the forward
// because this node was removed from the cluster for good (the channel's 410): the node
// learns it (removedNodes.refused), and the request is answered 503, not served here on
// data the cluster disowned. It returns nil for any other answer.
func (n *Node) refusedAsRemoved(status int, by string) error {
	if status != http.StatusGone || by != "" {
		return nil
	}
	n.removed.refused()
	return functions.Errorf(functions.EUnavailable, "this node was removed from the cluster and is stopping; ask another node")
}

// noHolder answers a request that no holder of its partition answered: it serves it here
// (a write is handed off to the holders later), but a login, which needs the account's
// record. at is the forward's attempt against the limits by address, if any: serving the
// request here leaves it to the handler's own limits.
func (n *Node) noHolder(c *fiber.Ctx, at **attempt) error {
	n.metrics.forwarded("")
	if c.Method() == fiber.MethodPost && c.Path() == "/v1/sessions" {
		// A login needs the account's record, which is not here: served here it would
		// answer 401 for the right password.
		c.Set(fiber.HeaderRetryAfter, "1")
		return functions.Errorf(functions.EUnavailable, "no node holding this account answered; retry")
	}
	if *at != nil {
		(*at).done(false) // served here, by the handler's own limits
		*at = nil
	}
	return c.Next() // no holder answered: serve it here (writes are handed off later)
}

// entryLimits applies, to a sign-up or login this node forwards, the limits by client
// address, and returns the attempt to charge (nil: none) and which of the holder's
// answers charge it.
func (n *Node) entryLimits(c *fiber.Ctx) (*attempt, func(status int) bool, error) {
	if c.Method() != fiber.MethodPost {
		return nil, nil, nil
	}
	switch c.Path() {
	case "/v1/sessions":
		at, ok, r := n.limits.addressLogin(c.UserContext(), n.cfg.LoginPerAddress, n.clientAddr(c))
		if !ok {
			return nil, nil, n.loginsThrottled(c, r)
		}
		return at, func(status int) bool { return status == fiber.StatusUnauthorized }, nil
	case "/v1/users":
		at, ok, r := n.limits.signup(c.UserContext(), n.cfg.SignupsPerAddress, n.clientAddr(c))
		if !ok {
			return nil, nil, n.signupsThrottled(c, r)
		}
		// Created or taken: both count, so that names cannot be probed without limit.
		return at, func(status int) bool { return status == fiber.StatusCreated || status == fiber.StatusConflict }, nil
	}
	return nil, nil, nil
}

// notDelivered reports whether a forward failed before the request could reach the
// holder: then another holder may be asked, even for a write.
func notDelivered(err error) bool {
	var op *net.OpError
	return errors.Is(err, cluster.ErrNotSent) || errors.As(err, &op) && op.Op == "dial"
}

// relayedHeader reports whether a holder's answer header (canonical) goes to the client:
// all but those of the hop itself.
func relayedHeader(k string) bool {
	switch k {
	case "Content-Length", "Connection", "Date", "Server", "Transfer-Encoding", wrapBy:
		return false
	}
	return true
}

// relay copies a holder's answer to the client: status, headers and body, streamed for
// a live stream. It calls cancel once the answer is relayed. A streamed answer is cut
// off, without what it read last, once still (if not nil) reports false, checked after
// each read (a live stream pings every streamPing).
func (n *Node) relay(c *fiber.Ctx, resp *http.Response, cancel context.CancelFunc, stream bool, still func() bool) error {
	c.Status(resp.StatusCode)
	h := &c.Response().Header
	for k, vs := range resp.Header {
		if !relayedHeader(k) {
			continue
		}
		h.Del(k)
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	h.Set(headerForwardedBy, n.cfg.NodeName)
	if !stream || resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxForwardedReply+1))
		if err != nil || len(b) > maxForwardedReply {
			return functions.Errorf(functions.EUnavailable, "the node holding this data answered incompletely")
		}
		c.Response().SetBodyRaw(b)
		return nil
	}
	// As a stream or an export served here does (stallWriter): a client that stops
	// reading for backupStall is cut off, which ends the holder's side too, so it cannot
	// hold the holder's export or stream slot for ever. The write deadline is this
	// response's alone: the connection closes after it.
	c.Context().SetConnectionClose()
	conn, ctx := c.Context().Conn(), n.ctx
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer resp.Body.Close()
		sw := stallWriter{ctx: ctx, w: w, conn: conn}
		buf := make([]byte, 4096)
		for {
			k, err := resp.Body.Read(buf)
			if still != nil && !still() {
				return // before it writes what it read: nothing reaches a caller that lost its right
			}
			if k > 0 {
				if _, werr := sw.Write(buf[:k]); werr != nil || w.Flush() != nil {
					return // the client left, or stopped reading
				}
			}
			if err != nil {
				return
			}
		}
	})
	return nil
}

// serveForwarded answers a request another node forwarded here (cluster.TLSTransport's
// forward handler): it turns the wrapping back into the client's request, in place, and
// runs it through this node's API as if the client had sent it, with the caller and
// client address the forwarding node vouched for. The answer goes back as the API wrote
// it, streamed when it is a stream, with wrapBy naming this node.
func (n *Node) serveForwarded(ctx *fasthttp.RequestCtx) {
	handler := n.handler.Load()
	if handler == nil {
		ctx.Error("starting", http.StatusServiceUnavailable)
		return
	}
	if len(ctx.Request.Body()) > maxBody {
		ctx.Error("forwarded body too large", http.StatusRequestEntityTooLarge)
		return
	}
	h := &ctx.Request.Header
	fwd := &forwardedRequest{client: string(h.Peek(wrapClient)), by: string(h.Peek(wrapBy))}
	if raw := h.Peek(wrapCaller); len(raw) > 0 {
		v, err := decodeCaller(string(raw))
		if err != nil {
			ctx.Error("forwarded caller: "+err.Error(), http.StatusBadRequest)
			return
		}
		fwd.caller = &v
	}
	if app := string(h.Peek(wrapApp)); app != "" {
		if err := functions.ValidAppName(app); err != nil {
			ctx.Error("forwarded app: "+functions.ErrorMessage(err), http.StatusBadRequest)
			return
		}
		fwd.app = app
	}
	method, uri := string(h.Peek(wrapMethod)), string(h.Peek(wrapURI))
	for _, k := range wrapHeaders {
		h.Del(k)
	}
	h.SetMethod(method)
	ctx.Request.SetRequestURI(uri)
	h.SetHost("sessiond")
	remote := net.Addr(&net.TCPAddr{IP: net.IPv4zero})
	if a, err := netip.ParseAddr(fwd.client); err == nil {
		remote = net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0))
	}
	ctx.SetRemoteAddr(remote)
	ctx.SetUserValue(forwardedKey{}, fwd)
	(*handler)(ctx)
	// The answer goes back whole, to the wrapping's POST: written for a HEAD it would
	// announce a body and leave it out, and the forwarding node would wait for it.
	h.SetMethod(fiber.MethodPost)
	ctx.Response.Header.Set(wrapBy, n.cfg.NodeName)
}

// wrapHeaders are the headers of the wrapping, taken off a forwarded request before the
// API sees it.
var wrapHeaders = []string{wrapMethod, wrapURI, wrapClient, wrapCaller, wrapApp, wrapBy}

// encodeCaller and decodeCaller carry a verified token between nodes:
// "user session issued-ns expires-ns bookmark".
func encodeCaller(v *verified) string {
	return strings.Join([]string{v.userID, v.sessionID, strconv.FormatInt(v.issued.UnixNano(), 10),
		strconv.FormatInt(v.expires.UnixNano(), 10), v.created.String(), strconv.FormatUint(v.gen, 10)}, " ")
}

// decodeCaller decodes encodeCaller's form; a sixth field, the token's generation, is
// absent in what a node of the previous release sends (generation 0).
func decodeCaller(s string) (verified, error) {
	f := strings.Split(s, " ")
	if len(f) != 5 && len(f) != 6 || f[0] == "" || f[1] == "" {
		return verified{}, errors.New("malformed")
	}
	var gen uint64
	if len(f) == 6 {
		g, err := strconv.ParseUint(f[5], 10, 64)
		if err != nil {
			return verified{}, fmt.Errorf("malformed generation: %w", err)
		}
		gen = g
	}
	issued, err1 := strconv.ParseInt(f[2], 10, 64)
	expires, err2 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return verified{}, fmt.Errorf("malformed time: %w", err)
	}
	v := verified{userID: f[0], sessionID: f[1], issued: time.Unix(0, issued), expires: time.Unix(0, expires), gen: gen}
	if f[4] != "" {
		if err := v.created.Parse(f[4]); err != nil {
			return verified{}, fmt.Errorf("malformed bookmark: %w", err)
		}
	}
	return v, nil
}
