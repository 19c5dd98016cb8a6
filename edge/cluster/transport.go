package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/valyala/fasthttp"
)

// TLSTransport is the production Transport: HTTP/1.1 over mutual TLS 1.3. Every node holds the
// same ed25519 identity derived from the cluster key and accepts a peer only if it proves
// possession of one of the accepted identities (the current key or an older one still in
// rotation), so only holders of the cluster key can exchange anything, and everything on the
// wire is encrypted. SetKeys changes the identities at once: the peer's key is checked on
// every handshake, resumed ones included (tls.Config.VerifyConnection), and again on every
// request and reply, so that a connection opened under a key since removed carries
// nothing more. Safe for concurrent use.
//
// It serves with fasthttp, and sends forwarded client requests (Forward) with fasthttp's
// client, which writes and reads in the caller's goroutine: a forward is on the path of a
// client's request, and every hand-off between goroutines there (net/http's client has a
// read and a write loop per connection, its server a background read per request) costs
// a wake-up.
type TLSTransport struct {
	client  *http.Client
	streams *http.Client            // ForwardStream: no timeout of its own, the caller's ctx bounds it
	fwd     *fasthttp.Client        // Forward
	forward fasthttp.RequestHandler // see HandleForward
	server  *fasthttp.Server
	tlsConf *tls.Config
	metrics *Metrics
	guard   *Guard      // nil: none; see SetGuard
	self    string      // this node's name, sent with every request (peerHeader)
	selfID  crdt.NodeID // and its ID (peerIDHeader)
	ids     atomic.Pointer[identities]
	bodies  bodyBudget // request bodies held by the server (readBody)

	ctx    context.Context // of the messages served; ends with Shutdown
	cancel context.CancelFunc

	mu       sync.Mutex
	listener *peerListener     // Serve's, once it runs
	shut     bool              // Shutdown was called
	peers    map[string]string // SetPeers': name → address
}

// identities are the certificate a transport presents and the keys it accepts.
type identities struct {
	cert     *tls.Certificate
	accepted []ed25519.PublicKey
}

// newIdentities derives the identities of seeds: the first is presented, all accepted.
func newIdentities(seeds [][]byte) (*identities, error) {
	if len(seeds) == 0 {
		return nil, errors.New("sync transport: no key")
	}
	ids := &identities{accepted: make([]ed25519.PublicKey, 0, len(seeds))}
	for i, seed := range seeds {
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("sync transport: key %d is %d bytes, want %d", i, len(seed), ed25519.SeedSize)
		}
		priv := ed25519.NewKeyFromSeed(seed)
		pub := priv.Public().(ed25519.PublicKey)
		ids.accepted = append(ids.accepted, pub)
		if i == 0 {
			der, err := selfSigned(priv)
			if err != nil {
				return nil, err
			}
			ids.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
		}
	}
	return ids, nil
}

// errPeerKey is the error for a peer that proves no accepted key.
var errPeerKey = errors.New("sync peer holds another cluster key")

// check returns nil if certs (a peer's chain) starts with a certificate of an accepted key.
func (ids *identities) check(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("sync peer presented no certificate")
	}
	pub, ok := certs[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return errors.New("sync peer certificate: not an ed25519 key")
	}
	for _, a := range ids.accepted {
		if a.Equal(pub) {
			return nil
		}
	}
	return errPeerKey
}

// NewTLSTransport returns a transport whose identity is derived from seeds, 32-byte secrets
// derived from the cluster keys; the first is presented, all are accepted.
func NewTLSTransport(seeds [][]byte, metrics *Metrics) (*TLSTransport, error) {
	ids, err := newIdentities(seeds)
	if err != nil {
		return nil, err
	}
	t := &TLSTransport{metrics: metrics}
	t.ids.Store(ids)
	t.tlsConf = &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		// Identity is the pinned key, checked by VerifyConnection, not a CA chain or a
		// host name. VerifyConnection runs on every handshake, resumed ones included
		// (VerifyPeerCertificate does not); tickets are off all the same, so that every
		// connection proves its key afresh.
		InsecureSkipVerify:     true, // #nosec G402 -- see above
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return t.ids.Load().check(cs.PeerCertificates)
		},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.ids.Load().cert, nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.ids.Load().cert, nil
		},
	}
	t.client = &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:     t.tlsConf,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
			TLSHandshakeTimeout: 5 * time.Second,
		},
		Timeout: 60 * time.Second,
	}
	// Forwarded client requests run as many at once as clients send them: keep enough
	// connections to each peer open that a burst does not pay a TLS handshake each.
	t.streams = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     t.tlsConf,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
	}}
	t.fwd = &fasthttp.Client{
		Dial:                     t.dialPeer,
		MaxIdleConnDuration:      10 * time.Second,
		MaxConnsPerHost:          1024,
		MaxConnWaitTimeout:       2 * time.Second, // then ErrNoFreeConns: not sent
		ReadBufferSize:           maxHeaderBytes,
		WriteBufferSize:          maxHeaderBytes,
		MaxResponseBodySize:      MaxForwardReply,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
		// Never send a request twice, not even after the peer closed the connection before
		// answering: a forwarded write may have been applied (the caller decides).
		MaxIdemponentCallAttempts: 1,
		RetryIf:                   func(*fasthttp.Request) bool { return false },
	}
	t.server = &fasthttp.Server{
		NoDefaultServerHeader:        true,
		NoDefaultDate:                true,
		CloseOnShutdown:              true,
		ReadTimeout:                  time.Minute,
		IdleTimeout:                  2 * time.Minute,
		ReadBufferSize:               maxHeaderBytes,
		MaxRequestBodySize:           2 * MaxMessage, // serve refuses, and accounts, what is over MaxMessage
		StreamRequestBody:            true,           // read as it arrives, not allocated up front from Content-Length
		Logger:                       discardLogger{},
		DisablePreParseMultipartForm: true,
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// maxHeaderBytes bounds the request line and headers of a sync or forwarded request, and
// the status line and headers of a reply: those of a client's request (the API's own
// limit is 8 KiB) plus the wrapping.
const maxHeaderBytes = 32 << 10

// MaxForwardReply bounds the answer to a forwarded request read by Forward; the API's
// own limits keep answers far below it.
const MaxForwardReply = 8 << 20

// ErrNotSent marks a Forward that failed before any byte of the request reached the peer
// (it could not be reached, or every connection to it was busy): the caller may send the
// request to another holder, even a write.
var ErrNotSent = errors.New("forward not sent")

// notSent is an error that matches ErrNotSent as well as its cause.
type notSent struct{ err error }

func (e notSent) Error() string   { return e.err.Error() }
func (e notSent) Unwrap() []error { return []error{e.err, ErrNotSent} }

// errStale is a pooled connection found closed by its peer before a request was written
// on it: Forward tries again on a fresh one.
var errStale = errors.New("forwarding connection closed by the peer while idle")

// discardLogger drops fasthttp's messages (a peer that fails its handshake, one that
// disconnects): the metrics and the guard account for peers.
type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// dialPeer opens a forwarding connection to addr: TCP, then the TLS handshake, which
// checks the peer's key (VerifyConnection). A failure of either is ErrNotSent.
func (t *TLSTransport) dialPeer(addr string) (net.Conn, error) {
	raw, err := (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp", addr)
	if err != nil {
		return nil, notSent{err}
	}
	ids := t.ids.Load() // the handshake checks against these, or newer ones
	tc := tls.Client(raw, t.tlsConf)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	err = tc.Handshake()
	_ = tc.SetDeadline(time.Time{})
	if err != nil {
		_ = raw.Close()
		return nil, notSent{&net.OpError{Op: "dial", Net: "tcp", Addr: raw.RemoteAddr(), Err: err}}
	}
	c := &peerConn{Conn: tc, t: t}
	c.keys.checked.Store(ids)
	return c, nil
}

// peerConn is a forwarding connection. It checks its peer's key again whenever the
// accepted keys change (SetKeys), before it carries another byte: a connection opened
// under a key since removed carries nothing more. And before it writes the first bytes of
// a request after an answer (the next request on a pooled connection), it checks that
// the peer has not closed it meanwhile (a peer that stopped or crashed), which fasthttp's
// client does not watch: a request written there would fail without telling whether the
// peer got it.
type peerConn struct {
	*tls.Conn
	t    *TLSTransport
	keys keyCheck
	// The last call: 0 none (a fresh connection), 'w' Write, 'r' Read. fasthttp uses a
	// connection from one goroutine at a time, writing a request whole, then reading
	// its answer.
	last byte
}

// keyCheck checks a connection's peer key again whenever the accepted keys change.
type keyCheck struct {
	checked atomic.Pointer[identities] // the identities the peer's key was last checked against
}

// check returns nil if c's peer proves a key t accepts now, or has not finished its
// handshake (which checks the key: VerifyConnection).
func (k *keyCheck) check(t *TLSTransport, c *tls.Conn) error {
	ids := t.ids.Load()
	if k.checked.Load() == ids {
		return nil
	}
	cs := c.ConnectionState()
	if !cs.HandshakeComplete {
		return nil
	}
	if err := ids.check(cs.PeerCertificates); err != nil {
		return err
	}
	k.checked.Store(ids)
	return nil
}

func (c *peerConn) check() error { return c.keys.check(c.t, c.Conn) }

func (c *peerConn) Read(p []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	c.last = 'r'
	return c.Conn.Read(p)
}

func (c *peerConn) Write(p []byte) (int, error) {
	starts := c.last != 'w' // the first bytes of a request: none of it was sent yet
	if err := c.check(); err != nil {
		if starts {
			err = notSent{err}
		}
		return 0, err
	}
	if c.last == 'r' && closedByPeer(c.NetConn()) {
		return 0, errStale
	}
	c.last = 'w'
	return c.Conn.Write(p)
}

// SetKeys replaces the identities at once: seeds as for NewTLSTransport, the first
// presented from now on, all accepted. Idle connections are closed, so the next call
// handshakes under the new keys; a connection open under a key no longer accepted
// carries no further request or reply (each is checked). It fails, changing nothing, on
// a bad seed.
func (t *TLSTransport) SetKeys(seeds [][]byte) error {
	ids, err := newIdentities(seeds)
	if err != nil {
		return err
	}
	t.ids.Store(ids)
	t.client.CloseIdleConnections()
	t.streams.CloseIdleConnections()
	t.fwd.CloseIdleConnections()
	return nil
}

// checkPeer returns nil if the connection state cs, of a request or reply, is of a peer
// that proves an accepted key now.
func (t *TLSTransport) checkPeer(cs *tls.ConnectionState) error {
	if cs == nil {
		return errors.New("sync: not over TLS")
	}
	return t.ids.Load().check(cs.PeerCertificates)
}

// SetGuard makes Serve account invalid messages with g (see ServeMessage), naming each
// caller by the name its requests carry, as the Replicator's guard (Replicator.Guard)
// names its peers (Peer.Name); self and selfID are this node's name and ID, which its
// own requests carry (a node removed for good is refused by its ID: ServeMessage).
// Call it before Serve.
func (t *TLSTransport) SetGuard(g *Guard, self string, selfID crdt.NodeID) {
	t.guard, t.self, t.selfID = g, self, selfID
}

// selfSigned returns a long-lived certificate for key; peers pin the key, not the
// certificate.
func selfSigned(key ed25519.PrivateKey) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("sync certificate: %w", err)
	}
	return der, nil
}

type request[T any] interface {
	*T
	encoding.BinaryUnmarshaler
}

// decodeRequest decodes body into a fresh *T.
func decodeRequest[T any, P request[T]](body []byte) (P, error) {
	req := P(new(T))
	return req, req.UnmarshalBinary(body)
}

// errUnknownKind is ServeMessage's error for a kind it does not serve.
var errUnknownKind = errors.New("unknown sync message kind")

// ServeMessage answers one sync message of kind (push, digest, leaves or counters) that
// peer sent, as node from (0: a caller that does not say, as older builds do):
// it refuses every message of a removed node (Guard.SetRemoved) with ErrRemoved; it
// decodes body, hands the request to h, and returns the encoded reply (nil
// for counters). It is the one place where a peer's bytes enter a node, for every
// transport. A message that is invalid — undecodable, or refused by h as such (an error
// matching ErrInvalidMessage) — is accounted against peer by g (counted, logged, backed
// off), and while g backs peer off its messages are refused unread. The error tells a
// transport what to answer: ErrInvalidMessage (the sender's fault), errBackedOff, or
// another (this node's).
func ServeMessage(ctx context.Context, h Handler, g *Guard, peer string, from crdt.NodeID, kind string, body []byte) ([]byte, error) {
	if g.refuseRemoved(peer, from) {
		return nil, ErrRemoved
	}
	if err := g.Admit(peer); err != nil {
		return nil, err
	}
	rep, err := serveMessage(ctx, h, kind, body)
	if errors.Is(err, ErrInvalidMessage) {
		g.Invalid(peer, kind, err)
	}
	return rep, err
}

func serveMessage(ctx context.Context, h Handler, kind string, body []byte) ([]byte, error) {
	var rep encoding.BinaryMarshaler
	switch kind {
	case "push":
		req, err := decodeRequest[PushRequest](body)
		if err != nil {
			return nil, err
		}
		r, err := h.HandlePush(ctx, *req)
		if err != nil {
			return nil, err
		}
		rep = r
	case "digest":
		req, err := decodeRequest[DigestRequest](body)
		if err != nil {
			return nil, err
		}
		r, err := h.HandleDigest(ctx, *req)
		if err != nil {
			return nil, err
		}
		rep = r
	case "leaves":
		req, err := decodeRequest[LeavesRequest](body)
		if err != nil {
			return nil, err
		}
		r, err := h.HandleLeaves(ctx, *req)
		if err != nil {
			return nil, err
		}
		rep = r
	case "counters":
		ch, ok := h.(CounterHandler)
		if !ok {
			return nil, errUnknownKind
		}
		req, err := decodeRequest[CountersMessage](body)
		if err != nil {
			return nil, err
		}
		return nil, ch.HandleCounters(ctx, *req)
	default:
		return nil, errUnknownKind
	}
	return rep.MarshalBinary()
}

// serve answers kind's messages with h through ServeMessage; the peer is named by its
// request (peerName).
func (t *TLSTransport) serve(h Handler, kind string) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !t.admit(ctx) {
			return
		}
		peer := peerName(ctx)
		// Read as it arrives (the server streams bodies), into a buffer of our own: the
		// request's is reused once the handler returns, and what decoding makes of the
		// body may refer to it.
		body, release, err := t.readBody(ctx, MaxMessage)
		if err != nil {
			ctx.SetConnectionClose()
			if errors.Is(err, errBodiesFull) {
				ctx.Error("read request: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			t.guard.Invalid(peer, kind, invalid(err))
			ctx.Error("read request: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		defer release()
		t.metrics.bytes("received", kind, len(body))
		out, err := ServeMessage(t.ctx, h, t.guard, peer, peerID(ctx), kind, body)
		switch {
		case errors.Is(err, ErrRemoved):
			ctx.SetConnectionClose()
			ctx.Error(err.Error(), http.StatusGone)
			return
		case errors.Is(err, ErrInvalidMessage):
			ctx.Error(err.Error(), http.StatusBadRequest)
			return
		case errors.Is(err, errBackedOff):
			ctx.Error(err.Error(), http.StatusTooManyRequests)
			return
		case errors.Is(err, errUnknownKind):
			ctx.Error(err.Error(), http.StatusNotFound)
			return
		case err != nil:
			ctx.Error(err.Error(), http.StatusInternalServerError)
			return
		}
		t.metrics.bytes("sent", kind, len(out))
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(out)
	}
}

// admit checks the peer of a request: one that proves no accepted key now is answered
// 403 and its connection closed.
func (t *TLSTransport) admit(ctx *fasthttp.RequestCtx) bool {
	if err := t.checkPeer(ctx.TLSConnectionState()); err != nil {
		ctx.SetConnectionClose()
		ctx.Error(err.Error(), http.StatusForbidden)
		return false
	}
	return true
}

// readBody returns a copy of the request's body, read as it arrives, or an error if it
// is over limit bytes or would take the server past maxBodyBytes (errBodiesFull). The
// body's bytes count against the server's budget (bodyBudget) from the moment they arrive
// until release, which the caller calls once it is done with the body.
func (t *TLSTransport) readBody(ctx *fasthttp.RequestCtx, limit int) (body []byte, release func(), err error) {
	if n := ctx.Request.Header.ContentLength(); n > limit {
		return nil, nil, fmt.Errorf("request of %d bytes over the %d limit", n, limit)
	}
	taken := 0
	release = func() { t.bodies.give(taken) }
	take := func(n int) error {
		if taken+n > limit {
			return fmt.Errorf("request over the %d-byte limit", limit)
		}
		if !t.bodies.take(n) {
			return errBodiesFull
		}
		taken += n
		return nil
	}
	st := ctx.RequestBodyStream()
	if st == nil {
		if err := take(len(ctx.Request.Body())); err != nil {
			release()
			return nil, nil, err
		}
		return bytes.Clone(ctx.Request.Body()), release, nil
	}
	chunk := make([]byte, 32<<10)
	for {
		n, err := st.Read(chunk)
		if n > 0 {
			if err := take(n); err != nil {
				release()
				return nil, nil, err
			}
			body = append(body, chunk[:n]...)
		}
		if errors.Is(err, io.EOF) {
			return body, release, nil
		}
		if err != nil {
			release()
			return nil, nil, err
		}
	}
}

// maxBodyBytes bounds the bytes of request bodies the sync server holds at once: four
// messages of the largest size, far more than peers' pushes, rounds and handoffs take
// together. Bodies are held while they arrive (a peer may take a minute to send one:
// ReadTimeout) and while their request is served; a request whose body would pass the
// bound is refused with 503, which its sender retries like any failed call. So peers
// holding the cluster key, as many connections as they like, cannot pin more than that.
const maxBodyBytes = 4 * MaxMessage

// errBodiesFull refuses a request whose body would take the server past maxBodyBytes.
var errBodiesFull = errors.New("the server holds as many request bytes as it takes; try again")

// bodyBudget counts the bytes of request bodies a server holds (readBody), up to
// maxBodyBytes. Safe for concurrent use.
type bodyBudget struct {
	mu   sync.Mutex
	held int
}

// take adds n bytes if they fit under maxBodyBytes, and reports whether they did.
func (b *bodyBudget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held+n > maxBodyBytes {
		return false
	}
	b.held += n
	return true
}

// give returns n bytes taken.
func (b *bodyBudget) give(n int) {
	b.mu.Lock()
	b.held -= n
	b.mu.Unlock()
}

// peerHeader carries the caller's node name (Peer.Name) on sync requests, so that a
// Guard names a peer alike whether it calls or is called. Only holders of the cluster
// key reach the handler, and one could claim another's name — and do worse anyway.
const peerHeader = "Sessiond-Peer"

// identify sets the headers that name this node on a request it sends (peerHeader,
// peerIDHeader).
func (t *TLSTransport) identify(set func(k, v string)) {
	if t.self != "" {
		set(peerHeader, t.self)
	}
	if t.selfID != 0 {
		set(peerIDHeader, t.selfID.String())
	}
}

// peerIDHeader carries the caller's node ID (crdt.NodeID.String) on sync requests, so
// that a node removed for good is refused (ServeMessage). Like peerHeader, only holders
// of the cluster key can send it, and one could claim another's ID.
const peerIDHeader = "Sessiond-Peer-Id"

// peerID returns the node ID a sync request's caller gives, or 0 without a valid one.
func peerID(ctx *fasthttp.RequestCtx) crdt.NodeID {
	id, err := crdt.ParseNodeID(string(ctx.Request.Header.Peek(peerIDHeader)))
	if err != nil {
		return 0
	}
	return id
}

// peerName returns the name a sync request's caller gives, or, without one, its IP.
func peerName(ctx *fasthttp.RequestCtx) string {
	if name := ctx.Request.Header.Peek(peerHeader); len(name) > 0 && len(name) <= 256 {
		return string(name)
	}
	return "ip:" + ctx.RemoteIP().String()
}

// MaxForwardBody bounds the body of a forwarded request the forward handler is given;
// the API's own limit is below it.
const MaxForwardBody = 2 << 20

// Serve answers sync requests on ln with h until Shutdown; call it once. It returns
// http.ErrServerClosed after Shutdown.
func (t *TLSTransport) Serve(ln net.Listener, h Handler) error {
	routes := map[string]fasthttp.RequestHandler{}
	for _, kind := range []string{"push", "digest", "leaves"} {
		routes["/sync/v1/"+kind] = t.serve(h, kind)
	}
	if _, ok := h.(CounterHandler); ok { // see WithCounters
		routes["/sync/v1/counters"] = t.serve(h, "counters")
	}
	if fwd := t.forward; fwd != nil {
		routes[forwardPath] = func(ctx *fasthttp.RequestCtx) {
			if !t.admit(ctx) {
				return
			}
			body, release, err := t.readBody(ctx, MaxForwardBody)
			if err != nil {
				ctx.SetConnectionClose()
				status := http.StatusRequestEntityTooLarge
				if errors.Is(err, errBodiesFull) {
					status = http.StatusServiceUnavailable
				}
				ctx.Error("forwarded body: "+err.Error(), status)
				return
			}
			defer release()
			// After the body is read, so that the caller gets the answer, not a reset.
			if t.guard.refuseRemoved(peerName(ctx), peerID(ctx)) {
				ctx.Error(ErrRemoved.Error(), http.StatusGone)
				return
			}
			ctx.Request.Header.Del(peerHeader) // the channel's, not the API's
			ctx.Request.Header.Del(peerIDHeader)
			ctx.Request.SetBodyRaw(body) // read whole: the handler runs the API on it
			fwd(ctx)
		}
	}
	t.server.Handler = func(ctx *fasthttp.RequestCtx) {
		route, ok := routes[string(ctx.Path())]
		switch {
		case !ok:
			ctx.Error("not found", http.StatusNotFound)
		case !ctx.IsPost():
			ctx.Error("method not allowed", http.StatusMethodNotAllowed)
		default:
			route(ctx)
		}
	}
	t.mu.Lock()
	if t.shut {
		t.mu.Unlock()
		_ = ln.Close()
		return http.ErrServerClosed
	}
	l := newPeerListener(tls.NewListener(ln, t.tlsConf), t)
	t.listener = l
	t.mu.Unlock()
	if err := t.server.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return http.ErrServerClosed
}

// Shutdown stops serving and waits for in-flight requests, bounded by ctx; then it closes
// every connection still open, so nothing is served after it returns.
func (t *TLSTransport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	t.shut = true
	l := t.listener
	t.mu.Unlock()
	t.cancel()
	t.client.CloseIdleConnections()
	t.streams.CloseIdleConnections()
	t.fwd.CloseIdleConnections()
	if l == nil {
		return nil
	}
	_ = l.Close() // Serve returns even if it had not yet handed it to the server
	// A connection that has not sent a byte carries no request (fasthttp counts it as
	// busy until its read timeout, which Shutdown would wait out): close it first.
	l.closeConns(false)
	err := t.server.ShutdownWithContext(ctx)
	l.closeConns(true)
	return err
}

// peerListener is the TLS listener Serve hands the server. Its Close takes effect once;
// Accept retries after any error but its closing (too many open files, a connection reset
// before it was accepted), backing off up to a second, as net/http's server does with
// such errors, so that one does not stop the server; and it keeps the connections it
// accepted (peerServerConn), for Shutdown.
type peerListener struct {
	net.Listener
	t      *TLSTransport
	once   sync.Once
	closed atomic.Bool
	mu     sync.Mutex
	conns  map[*peerServerConn]struct{}
}

func newPeerListener(l net.Listener, t *TLSTransport) *peerListener {
	return &peerListener{Listener: l, t: t, conns: map[*peerServerConn]struct{}{}}
}

func (l *peerListener) Accept() (net.Conn, error) {
	pause := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			pc := &peerServerConn{Conn: c, l: l}
			if tc, ok := c.(*tls.Conn); ok {
				pc.tls = tc
			}
			l.mu.Lock()
			l.conns[pc] = struct{}{}
			l.mu.Unlock()
			return pc, nil
		}
		if l.closed.Load() || errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		time.Sleep(pause) // a transient error (see above): try again shortly
		pause = min(2*pause, time.Second)
	}
}

func (l *peerListener) Close() error {
	var err error
	l.once.Do(func() {
		l.closed.Store(true)
		err = l.Listener.Close()
	})
	return err
}

// closeConns closes the connections still open, or, unless all, only those that have not
// yet carried a byte of a request.
func (l *peerListener) closeConns(all bool) {
	l.mu.Lock()
	var cs []*peerServerConn
	for c := range l.conns {
		if all || !c.used.Load() {
			cs = append(cs, c)
		}
	}
	l.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

// peerServerConn is a connection Serve accepted. Like the forwarding connections
// (peerConn), it checks its peer's key again whenever the accepted keys change, before it
// carries another byte, so that a connection opened under a key since removed carries
// nothing more.
type peerServerConn struct {
	net.Conn
	tls  *tls.Conn // the same connection; nil if it is not TLS (never, from Serve)
	l    *peerListener
	used atomic.Bool // a byte of a request was read
	keys keyCheck
}

// ConnectionState and Handshake make the TLS state visible to fasthttp
// (RequestCtx.TLSConnectionState).
func (c *peerServerConn) ConnectionState() tls.ConnectionState {
	if c.tls == nil {
		return tls.ConnectionState{}
	}
	return c.tls.ConnectionState()
}

func (c *peerServerConn) Handshake() error {
	if c.tls == nil {
		return nil
	}
	return c.tls.Handshake()
}

func (c *peerServerConn) check() error {
	if c.tls == nil {
		return nil
	}
	return c.keys.check(c.l.t, c.tls)
}

func (c *peerServerConn) Read(p []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.used.Store(true)
	}
	return n, err
}

func (c *peerServerConn) Write(p []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *peerServerConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

func (t *TLSTransport) call(ctx context.Context, to Peer, kind string, req encoding.BinaryMarshaler, rep encoding.BinaryUnmarshaler) error {
	body, err := req.MarshalBinary()
	if err != nil {
		return err
	}
	if len(body) > MaxMessage {
		return fmt.Errorf("sync %s to %s: message of %d bytes over the %d limit", kind, to.Name, len(body), MaxMessage)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+to.Addr+"/sync/v1/"+kind, bytes.NewReader(body))
	if err != nil {
		return err
	}
	t.identify(hreq.Header.Set)
	resp, err := t.client.Do(hreq)
	if err != nil {
		return fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
	}
	defer resp.Body.Close()
	if err := t.checkPeer(resp.TLS); err != nil {
		return fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
	}
	t.metrics.bytes("sent", kind, len(body))
	out, err := io.ReadAll(io.LimitReader(resp.Body, MaxMessage+1))
	if err != nil {
		return fmt.Errorf("sync %s to %s: read reply: %w", kind, to.Name, err)
	}
	t.metrics.bytes("received", kind, len(out))
	if resp.StatusCode == http.StatusGone {
		return fmt.Errorf("sync %s to %s: %w", kind, to.Name, ErrRemoved)
	}
	if resp.StatusCode != http.StatusOK {
		msg := bytes.TrimSpace(out)
		if len(msg) > maxErrorText { // the peer's text goes into our logs: bound it
			msg = append(msg[:maxErrorText:maxErrorText], "…"...)
		}
		return fmt.Errorf("sync %s to %s: %s: %q", kind, to.Name, resp.Status, msg)
	}
	if len(out) > MaxMessage {
		return fmt.Errorf("sync %s to %s: reply over %d bytes: %w", kind, to.Name, MaxMessage, ErrInvalidMessage)
	}
	if rep == nil {
		return nil
	}
	if err := rep.UnmarshalBinary(out); err != nil {
		return fmt.Errorf("sync %s to %s: reply: %w", kind, to.Name, invalid(err))
	}
	return nil
}

// maxErrorText bounds the part of a peer's error reply that goes into an error.
const maxErrorText = 256

// Push implements Transport.
func (t *TLSTransport) Push(ctx context.Context, to Peer, req PushRequest) (PushReply, error) {
	var rep PushReply
	err := t.call(ctx, to, "push", req, &rep)
	return rep, err
}

// Digest implements Transport.
func (t *TLSTransport) Digest(ctx context.Context, to Peer, req DigestRequest) (DigestReply, error) {
	var rep DigestReply
	err := t.call(ctx, to, "digest", req, &rep)
	return rep, err
}

// Leaves implements Transport.
func (t *TLSTransport) Leaves(ctx context.Context, to Peer, req LeavesRequest) (LeavesReply, error) {
	var rep LeavesReply
	err := t.call(ctx, to, "leaves", req, &rep)
	return rep, err
}

// forwardPath is where a node serves requests forwarded by its peers.
const forwardPath = "/sync/v1/forward"

// HandleForward makes Serve answer requests forwarded by peers (Forward, ForwardStream)
// with h: a client's request that the peer could not serve itself, wrapped by the edge.
// Call it before Serve. The channel authenticates the peer (it holds the cluster key), so
// h may trust what the wrapping says about the caller.
func (t *TLSTransport) HandleForward(h fasthttp.RequestHandler) { t.forward = h }

// SetPeers tells the transport the live peers. When one has left, joined or moved, it
// closes its idle forwarding connections: a peer that stopped closed its side of them,
// and the next Forward on one would fail after sending (fasthttp's client does not watch
// idle connections), which for a write means an answer of "may have been applied".
func (t *TLSTransport) SetPeers(peers []Peer) {
	now := make(map[string]string, len(peers))
	for _, p := range peers {
		now[p.Name] = p.Addr
	}
	t.mu.Lock()
	changed := !maps.Equal(now, t.peers)
	t.peers = now
	t.mu.Unlock()
	if changed {
		t.fwd.CloseIdleConnections()
	}
}

// Forward sends a wrapped request (req: its headers and body; Forward sets the method and
// the URI) to peer's forward handler and reads its whole answer, at most MaxForwardReply
// bytes, into resp (over it, the error is fasthttp.ErrBodyTooLarge). It gives up at ctx's
// deadline, which it must have; it does not watch ctx otherwise. A failure before anything
// was sent matches ErrNotSent; after it, the request may have been served.
func (t *TLSTransport) Forward(ctx context.Context, to Peer, req *fasthttp.Request, resp *fasthttp.Response) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		return errors.New("forward: no deadline")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	req.Header.SetMethod(http.MethodPost)
	req.SetRequestURI("http://" + to.Addr + forwardPath) // TLS is dialPeer's
	t.identify(req.Header.Set)
	req.Header.SetNoDefaultContentType(true)
	err := t.fwd.DoDeadline(req, resp, deadline)
	for stale := 0; errors.Is(err, errStale) && stale < 4; stale++ {
		err = t.fwd.DoDeadline(req, resp, deadline) // nothing was sent: on another connection
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fasthttp.ErrNoFreeConns), errors.Is(err, errStale):
		err = notSent{err}
	}
	return fmt.Errorf("forward to %s: %w", to.Name, err)
}

// ForwardStream sends a wrapped request to peer's forward handler as Forward does, and
// returns the response as it comes, whose body the caller must close: for answers read
// as they are written (a live stream) or without a bound (an export). ctx bounds the
// whole exchange, the body included.
func (t *TLSTransport) ForwardStream(ctx context.Context, to Peer, header http.Header, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+to.Addr+forwardPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	t.identify(req.Header.Set)
	resp, err := t.streams.Do(req)
	if err != nil {
		return nil, fmt.Errorf("forward to %s: %w", to.Name, err)
	}
	if err := t.checkPeer(resp.TLS); err != nil {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("forward to %s: %w", to.Name, err)
	}
	return resp, nil
}
