package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// A Swarm task: eth0 on the stack's overlay, eth1 on docker_gwbridge (the default route),
// lo. The case of issue 19: memberlist advertised 172.18.0.3 and no cluster formed.
var swarmTask = []localAddr{
	{"lo", netip.MustParsePrefix("127.0.0.1/8")},
	{"eth0", netip.MustParsePrefix("10.0.1.7/24")},
	{"eth1", netip.MustParsePrefix("172.18.0.3/16")},
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestChooseAdvertise(t *testing.T) {
	t.Parallel()
	gw := addr("172.18.0.3")
	for _, tc := range []struct {
		name       string
		addrs      []localAddr
		hops       []hop
		defaultSrc netip.Addr
		want       string
		reason     string // a substring of the reason
	}{
		{"OverlayNotDefaultRoute", swarmTask, []hop{
			{"tasks.sessiond:7946", addr("10.0.1.7"), addr("10.0.1.7")}, // itself
			{"tasks.sessiond:7946", addr("10.0.1.8"), addr("10.0.1.7")},
		}, gw, "10.0.1.7", "reaches its join targets from: tasks.sessiond:7946 (10.0.1.7), tasks.sessiond:7946 (10.0.1.8)"},
		{"MajorityOfRoutes", swarmTask, []hop{
			{"lb:7946", addr("203.0.113.9"), gw},
			{"tasks.a:7946", addr("10.0.1.8"), addr("10.0.1.7")},
			{"tasks.b:7946", addr("10.0.1.9"), addr("10.0.1.7")},
		}, gw, "10.0.1.7", "2 of 3 routes; the others go from 172.18.0.3"},
		{"TieGoesToFirstTarget", swarmTask, []hop{
			{"a:7946", addr("172.18.0.9"), gw},
			{"b:7946", addr("10.0.1.9"), addr("10.0.1.7")},
		}, gw, "172.18.0.3", "a:7946"},
		{"RouteFromForeignAddressIgnored", swarmTask, []hop{
			{"a:7946", addr("10.9.9.9"), addr("10.9.9.1")}, // not ours: ignored
		}, gw, "172.18.0.3", "no join target resolved"},
		{"LoopbackTargets", swarmTask, []hop{
			{"127.0.0.1:7946", addr("127.0.0.1"), addr("127.0.0.1")},
		}, gw, "127.0.0.1", "reaches its join targets from"},
		{"OnlyPrivate", []localAddr{
			{"lo", netip.MustParsePrefix("127.0.0.1/8")},
			{"eth0", netip.MustParsePrefix("192.168.1.20/24")},
			{"eth0", netip.MustParsePrefix("fe80::1/64")},
		}, nil, addr("192.168.1.20"), "192.168.1.20", "only private address"},
		{"SeveralPrivateNoTargetsDefaultRoute", swarmTask, nil, gw, "172.18.0.3", "the one of the default route"},
		{"SeveralPrivateNoDefaultRoute", swarmTask, nil, netip.Addr{}, "10.0.1.7", "the first of the private addresses 10.0.1.7, 172.18.0.3"},
		{"CGNATIsPrivate", []localAddr{
			{"tailscale0", netip.MustParsePrefix("100.101.1.2/32")},
			{"eth0", netip.MustParsePrefix("198.51.100.4/24")},
		}, nil, addr("198.51.100.4"), "100.101.1.2", "only private address"},
		{"PublicOnly", []localAddr{
			{"lo", netip.MustParsePrefix("127.0.0.1/8")},
			{"eth0", netip.MustParsePrefix("198.51.100.4/24")},
		}, nil, netip.Addr{}, "198.51.100.4", "first public one"},
		{"IPv6ULA", []localAddr{
			{"eth0", netip.MustParsePrefix("fd00:1::5/64")},
			{"eth0", netip.MustParsePrefix("fe80::5/64")},
		}, nil, netip.Addr{}, "fd00:1::5", "only private address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason, err := chooseAdvertise(tc.addrs, tc.hops, tc.defaultSrc)
			if err != nil {
				t.Fatalf("chooseAdvertise: %v", err)
			}
			if got.String() != tc.want {
				t.Errorf("chooseAdvertise = %s, want %s (reason %q)", got, tc.want, reason)
			}
			if !strings.Contains(reason, tc.reason) {
				t.Errorf("reason = %q, want it to contain %q", reason, tc.reason)
			}
		})
	}
	t.Run("ErrNoAddress", func(t *testing.T) {
		_, _, err := chooseAdvertise([]localAddr{{"lo", netip.MustParsePrefix("127.0.0.1/8")}}, nil, netip.Addr{})
		if err == nil || !strings.Contains(err.Error(), "--advertise") {
			t.Errorf("err = %v, want one that points at --advertise", err)
		}
	})
}

// fakeSystem is a host with swarmTask's interfaces, routes by longest prefix among them
// (else the default route through eth1), a DNS table and a template that returns tmplOut.
func fakeSystem(dns map[string][]string, tmplOut string) addrSystem {
	return addrSystem{
		interfaces: func() ([]localAddr, error) { return swarmTask, nil },
		lookup: func(_ context.Context, host string) ([]netip.Addr, error) {
			var out []netip.Addr
			for _, s := range dns[host] {
				out = append(out, addr(s))
			}
			if len(out) == 0 {
				return nil, errors.New("no such host")
			}
			return out, nil
		},
		source: func(dst netip.Addr) (netip.Addr, error) {
			for _, l := range swarmTask {
				if l.Prefix.Masked().Contains(dst) {
					return l.Prefix.Addr(), nil
				}
			}
			return addr("172.18.0.3"), nil
		},
		template: func(string) (string, error) { return tmplOut, nil },
	}
}

func TestResolveHostSpec(t *testing.T) {
	t.Parallel()
	dns := map[string][]string{"db.example": {"2001:db8::1", "192.0.2.10"}, "v6.example": {"2001:db8::2"}}
	for _, tc := range []struct {
		name, spec, tmpl, want, how string
	}{
		{"IP", "10.0.1.7", "", "10.0.1.7", ""},
		{"IPv6", "fd00::1", "", "fd00::1", ""},
		{"Interface", "eth0", "", "10.0.1.7", "interface eth0"},
		{"CIDR", "10.0.0.0/8", "", "10.0.1.7", "this host's address in 10.0.0.0/8"},
		{"Template", `{{ GetInterfaceIP "eth0" }}`, " 10.0.1.7\n", "10.0.1.7", "template"},
		{"HostNamePrefersIPv4", "db.example", "", "192.0.2.10", "host name db.example"},
		{"HostNameIPv6", "v6.example", "", "2001:db8::2", "host name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, how, err := fakeSystem(dns, tc.tmpl).resolveHostSpec(context.Background(), tc.spec)
			if err != nil {
				t.Fatalf("resolveHostSpec(%q): %v", tc.spec, err)
			}
			if got.String() != tc.want || !strings.Contains(how, tc.how) {
				t.Errorf("resolveHostSpec(%q) = %s, %q; want %s, %q", tc.spec, got, how, tc.want, tc.how)
			}
		})
	}
	for _, tc := range []struct {
		name, spec, tmpl, err string
	}{
		{"ErrCIDRNone", "192.168.0.0/16", "", "no address in that network"},
		{"ErrCIDRSeveral", "0.0.0.0/0", "", "has 3 addresses in that network"},
		{"ErrTemplateEmpty", `{{ GetInterfaceIP "eth9" }}`, "", "gives no address"},
		{"ErrTemplateSeveral", `{{ GetAllInterfaces | attr "address" }}`, "10.0.1.7 172.18.0.3", "gives 2 addresses"},
		{"ErrTemplateNotIP", `{{ "x" }}`, "x", "not an IP address"},
		{"ErrUnknown", "nowhere.example", "", "does not resolve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := fakeSystem(dns, tc.tmpl).resolveHostSpec(context.Background(), tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("resolveHostSpec(%q) err = %v, want %q", tc.spec, err, tc.err)
			}
		})
	}
}

func TestAdvertise(t *testing.T) {
	t.Parallel()
	dns := map[string][]string{"tasks.sessiond": {"10.0.1.7", "10.0.1.8", "10.0.1.9"}}
	sys := fakeSystem(dns, "")
	ctx := context.Background()
	for _, tc := range []struct {
		name, spec, bind string
		join             []string
		want, why        string
	}{
		{"JoinTargetsPickOverlay", "", "0.0.0.0", []string{"tasks.sessiond:7946"}, "10.0.1.7", "join targets from"},
		{"TargetWithoutPort", "", "", []string{"tasks.sessiond"}, "10.0.1.7", "join targets from"},
		{"BindAddress", "", "172.18.0.3", []string{"tasks.sessiond:7946"}, "172.18.0.3", "gossip bind address"},
		{"Configured", "eth1", "0.0.0.0", []string{"tasks.sessiond:7946"}, "172.18.0.3", "--advertise: interface eth1"},
		{"ConfiguredIP", "10.0.1.7", "0.0.0.0", nil, "10.0.1.7", "--advertise"},
		{"NoJoin", "", "0.0.0.0", nil, "172.18.0.3", "default route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why, err := sys.advertise(ctx, tc.spec, tc.bind, tc.join)
			if err != nil {
				t.Fatalf("advertise: %v", err)
			}
			if got.String() != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("advertise = %s, %q; want %s, %q", got, why, tc.want, tc.why)
			}
		})
	}
	t.Run("ErrConfigured", func(t *testing.T) {
		if _, _, err := sys.advertise(ctx, "eth7", "0.0.0.0", nil); err == nil || !strings.HasPrefix(err.Error(), "--advertise: ") {
			t.Errorf("err = %v, want one naming --advertise", err)
		}
	})
}

func TestResolveTarget(t *testing.T) {
	t.Parallel()
	sys := fakeSystem(map[string][]string{"tasks.s": {"10.0.1.9", "10.0.1.8", "10.0.1.9"}}, "")
	got := sys.resolveTarget(context.Background(), "tasks.s:17946")
	if want := "[10.0.1.8:17946 10.0.1.9:17946]"; fmt.Sprint(got) != want {
		t.Errorf("resolveTarget = %v, want %s (every address, once, sorted)", got, want)
	}
	if got := sys.resolveTarget(context.Background(), "nowhere:7946"); len(got) != 0 {
		t.Errorf("resolveTarget(nowhere) = %v, want none", got)
	}
}

func TestAdvertisedSync(t *testing.T) {
	t.Parallel()
	adv := addr("10.0.1.7")
	for _, tc := range []struct {
		bound      string
		configured bool
		want       string
	}{
		{"0.0.0.0:7947", false, "10.0.1.7:7947"},
		{"[::]:7947", false, "10.0.1.7:7947"},
		{":7947", false, "10.0.1.7:7947"},
		{"127.0.0.1:7947", false, "127.0.0.1:7947"},
		{"127.0.0.1:7947", true, "10.0.1.7:7947"},
	} {
		if got := advertisedSync(tc.bound, tc.configured, adv); got != tc.want {
			t.Errorf("advertisedSync(%q, %v) = %q, want %q", tc.bound, tc.configured, got, tc.want)
		}
	}
}

// TestResolveHostSpec_RealTemplate runs a go-sockaddr template on this host: the
// loopback interface's IPv4 address is 127.0.0.1 everywhere.
func TestResolveHostSpec_RealTemplate(t *testing.T) {
	t.Parallel()
	got, _, err := hostSystem(LookupHost).resolveHostSpec(context.Background(),
		`{{ GetAllInterfaces | include "flags" "loopback" | include "type" "IPv4" | attr "address" }}`)
	if err != nil {
		t.Fatalf("resolveHostSpec: %v", err)
	}
	if got.String() != "127.0.0.1" {
		t.Errorf("loopback template = %s, want 127.0.0.1", got)
	}
}
