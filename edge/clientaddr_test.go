package edge

import (
	"net"
	"testing"
)

// TestClientAddr: behind trusted proxies the client is the rightmost X-Forwarded-For entry
// that is not a trusted proxy, so what a client writes into the header itself (to the
// left) changes nothing; from anyone else the header is ignored.
func TestClientAddr(t *testing.T) {
	trusted, err := parseTrusted([]string{"10.0.0.2", "192.168.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, peer, xff, want string
	}{
		{"Direct", "203.0.113.5", "", "203.0.113.5"},
		{"DirectForgedHeader", "203.0.113.5", "1.2.3.4", "203.0.113.5"},
		{"OneProxy", "10.0.0.2", "198.51.100.7", "198.51.100.7"},
		{"ClientPrefixIgnored", "10.0.0.2", "1.1.1.1, 2.2.2.2, 198.51.100.7", "198.51.100.7"},
		{"ProxyChain", "10.0.0.2", "1.1.1.1, 198.51.100.7, 192.168.3.4", "198.51.100.7"},
		{"OnlyProxies", "10.0.0.2", "192.168.3.4", "192.168.3.4"},
		{"NoHeader", "10.0.0.2", "", "10.0.0.2"},
		{"Garbage", "10.0.0.2", "1.1.1.1, not-an-ip", "10.0.0.2"},
		{"GarbageLeftOfClient", "10.0.0.2", "evil, 198.51.100.7", "198.51.100.7"},
		{"IPv6", "10.0.0.2", "2001:db8::1", "2001:db8::1"},
		{"MappedPeer", "::ffff:10.0.0.2", "198.51.100.7", "198.51.100.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clientAddrOf(trusted, net.ParseIP(tc.peer), []byte(tc.xff)); got != tc.want {
				t.Errorf("clientAddrOf(%s, %q)=%q, want %q", tc.peer, tc.xff, got, tc.want)
			}
		})
	}
	if got := clientAddrOf(nil, net.ParseIP("10.0.0.2"), []byte("198.51.100.7")); got != "10.0.0.2" {
		t.Errorf("no trusted proxies: %q, want the peer", got)
	}
	if _, err := parseTrusted([]string{"not a proxy"}); err == nil {
		t.Error("parseTrusted accepted garbage")
	}
}
