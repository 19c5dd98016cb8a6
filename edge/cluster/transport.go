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
	"math/big"
	"net"
	"net/http"
	"time"
)

// TLSTransport is the production Transport: HTTP over mutual TLS 1.3. Every node holds the
// same ed25519 identity derived from the cluster key and accepts a peer only if it proves
// possession of one of the accepted identities (the current key or an older one still in
// rotation), so only holders of the cluster key can exchange anything, and everything on the
// wire is encrypted. Safe for concurrent use.
type TLSTransport struct {
	client  *http.Client
	streams *http.Client // forwarded requests: no timeout of its own, the caller's ctx bounds them
	forward http.Handler // see HandleForward
	server  *http.Server
	tlsConf *tls.Config
	metrics *Metrics
	guard   *Guard // nil: none; see SetGuard
}

// NewTLSTransport returns a transport whose identity is derived from seeds, 32-byte secrets
// derived from the cluster keys; the first is presented, all are accepted.
func NewTLSTransport(seeds [][]byte, metrics *Metrics) (*TLSTransport, error) {
	if len(seeds) == 0 {
		return nil, errors.New("sync transport: no key")
	}
	accepted := make([]ed25519.PublicKey, 0, len(seeds))
	var cert tls.Certificate
	for i, seed := range seeds {
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("sync transport: key %d is %d bytes, want %d", i, len(seed), ed25519.SeedSize)
		}
		priv := ed25519.NewKeyFromSeed(seed)
		pub := priv.Public().(ed25519.PublicKey)
		accepted = append(accepted, pub)
		if i == 0 {
			der, err := selfSigned(priv)
			if err != nil {
				return nil, err
			}
			cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
		}
	}
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("sync peer presented no certificate")
		}
		c, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return fmt.Errorf("sync peer certificate: %w", err)
		}
		pub, ok := c.PublicKey.(ed25519.PublicKey)
		if !ok {
			return errors.New("sync peer certificate: not an ed25519 key")
		}
		for _, a := range accepted {
			if a.Equal(pub) {
				return nil
			}
		}
		return errors.New("sync peer holds another cluster key")
	}
	t := &TLSTransport{metrics: metrics}
	t.tlsConf = &tls.Config{
		Certificates:          []tls.Certificate{cert},
		MinVersion:            tls.VersionTLS13,
		ClientAuth:            tls.RequireAnyClientCert,
		InsecureSkipVerify:    true, // identity is the pinned key, checked by verify, not a CA chain or host name
		VerifyPeerCertificate: verify,
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
	t.server = &http.Server{TLSConfig: t.tlsConf, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: time.Minute}
	return t, nil
}

// SetGuard makes Serve account invalid messages with g (see ServeMessage), keyed by the
// caller's IP (PeerKey); the Replicator's guard (Replicator.Guard) keys its peers the
// same way. Call it before Serve.
func (t *TLSTransport) SetGuard(g *Guard) { t.guard = g }

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
// peer sent: it decodes body, hands the request to h, and returns the encoded reply (nil
// for counters). It is the one place where a peer's bytes enter a node, for every
// transport. A message that is invalid — undecodable, or refused by h as such (an error
// matching ErrInvalidMessage) — is accounted against peer by g (counted, logged, backed
// off), and while g backs peer off its messages are refused unread. The error tells a
// transport what to answer: ErrInvalidMessage (the sender's fault), errBackedOff, or
// another (this node's).
func ServeMessage(ctx context.Context, h Handler, g *Guard, peer, kind string, body []byte) ([]byte, error) {
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

// serve answers kind's messages with h through ServeMessage; the peer is the remote IP.
func (t *TLSTransport) serve(h Handler, kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxMessage))
		if err != nil {
			t.guard.Invalid(PeerKey(r.RemoteAddr), kind, invalid(err))
			http.Error(w, "read request: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		t.metrics.bytes("received", kind, len(body))
		out, err := ServeMessage(r.Context(), h, t.guard, PeerKey(r.RemoteAddr), kind, body)
		switch {
		case errors.Is(err, ErrInvalidMessage):
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case errors.Is(err, errBackedOff):
			http.Error(w, err.Error(), http.StatusTooManyRequests)
			return
		case errors.Is(err, errUnknownKind):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		t.metrics.bytes("sent", kind, len(out))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(out)
	}
}

// PeerKey is how a Guard names a peer reached at, or calling from, addr: its host, so
// that its sync address and the ports it calls from name the same peer.
func PeerKey(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// Serve answers sync requests on ln with h until Shutdown; call it once. It returns
// http.ErrServerClosed after Shutdown.
func (t *TLSTransport) Serve(ln net.Listener, h Handler) error {
	mux := http.NewServeMux()
	for _, kind := range []string{"push", "digest", "leaves"} {
		mux.HandleFunc("POST /sync/v1/"+kind, t.serve(h, kind))
	}
	if _, ok := h.(CounterHandler); ok { // see WithCounters
		mux.HandleFunc("POST /sync/v1/counters", t.serve(h, "counters"))
	}
	if t.forward != nil {
		mux.Handle("POST "+forwardPath, t.forward)
	}
	t.server.Handler = mux
	return t.server.Serve(tls.NewListener(ln, t.tlsConf))
}

// Shutdown stops serving and waits for in-flight requests, bounded by ctx.
func (t *TLSTransport) Shutdown(ctx context.Context) error {
	t.client.CloseIdleConnections()
	t.streams.CloseIdleConnections()
	return t.server.Shutdown(ctx)
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
	resp, err := t.client.Do(hreq)
	if err != nil {
		return fmt.Errorf("sync %s to %s: %w", kind, to.Name, err)
	}
	defer resp.Body.Close()
	t.metrics.bytes("sent", kind, len(body))
	out, err := io.ReadAll(io.LimitReader(resp.Body, MaxMessage+1))
	if err != nil {
		return fmt.Errorf("sync %s to %s: read reply: %w", kind, to.Name, err)
	}
	t.metrics.bytes("received", kind, len(out))
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

// HandleForward makes Serve answer requests forwarded by peers (Forward) with h: a
// client's request that the peer could not serve itself, wrapped by the edge. Call it
// before Serve. The channel authenticates the peer (it holds the cluster key), so h may
// trust what the wrapping says about the caller.
func (t *TLSTransport) HandleForward(h http.Handler) { t.forward = h }

// Forward sends a wrapped request to peer's forward handler and returns the response,
// whose body the caller must close. ctx bounds the whole exchange, the body included:
// a forwarded stream runs as long as ctx does.
func (t *TLSTransport) Forward(ctx context.Context, to Peer, header http.Header, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+to.Addr+forwardPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	resp, err := t.streams.Do(req)
	if err != nil {
		return nil, fmt.Errorf("forward to %s: %w", to.Name, err)
	}
	return resp, nil
}
