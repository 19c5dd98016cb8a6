package edge

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// parseTrusted parses --trusted-proxies: IP addresses or CIDR prefixes.
func parseTrusted(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("config: TrustedProxies: %q is neither an IP address nor a CIDR prefix", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// trustedProxy reports whether a is one of the trusted proxies.
func trustedProxy(trusted []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr returns the address of the client that sent the request: the connection's
// peer, or, when the peer is a trusted proxy, the rightmost X-Forwarded-For entry that is
// not itself a trusted proxy. That entry was appended by a trusted proxy, so a client
// cannot choose it: whatever a client writes into the header itself stays to its left.
// An entry that is not an IP address ends the walk at the proxy that passed it on (so
// a proxy that sends none, or garbage, is the client). Per-address limits and the
// access log use it; the result is the caller's (no request buffer aliased).
func (n *Node) clientAddr(c *fiber.Ctx) string {
	if f := forwardedOf(c); f != nil {
		return f.client // as the node that forwarded it determined it
	}
	return clientAddrOf(n.trusted, c.Context().RemoteIP(), c.Request().Header.Peek(fiber.HeaderXForwardedFor))
}

// clientAddrOf is clientAddr's decision, given the peer's address and the header.
func clientAddrOf(trusted []netip.Prefix, peerIP []byte, xff []byte) string {
	peer, ok := netip.AddrFromSlice(peerIP)
	if !ok {
		return "unknown"
	}
	peer = peer.Unmap()
	if len(trusted) == 0 || !trustedProxy(trusted, peer) {
		return peer.String()
	}
	client := peer
	for len(xff) > 0 {
		i := bytes.LastIndexByte(xff, ',')
		entry := bytes.TrimSpace(xff[i+1:])
		xff = xff[:max(i, 0)]
		a, err := netip.ParseAddr(string(entry))
		if err != nil {
			break
		}
		client = a.Unmap()
		if !trustedProxy(trusted, client) {
			break
		}
		if i < 0 {
			break
		}
	}
	return client.String()
}
