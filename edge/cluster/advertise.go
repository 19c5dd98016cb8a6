package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	sockaddrtemplate "github.com/hashicorp/go-sockaddr/template"
)

// Which address a node tells its peers to reach it at. In a container with several
// networks (a Swarm task has its overlay network and docker_gwbridge; a pod may have
// several interfaces) the address of the default route is often the wrong one: peers on
// the overlay cannot reach a docker_gwbridge address, so every node marked the others
// failed and no cluster formed. An operator can name the address in several ways
// (resolveHostSpec); with none named, the node picks the address it would itself use to
// reach the members it joins (chooseAdvertise), which is on the network they are on.

// localAddr is one address of one of this host's interfaces.
type localAddr struct {
	Iface  string
	Prefix netip.Prefix // the address and its network
}

// hop is one address a join target resolved to, with the local address the kernel would
// send from to reach it (invalid when there is no route).
type hop struct {
	Target string // as configured: host:port
	Dst    netip.Addr
	Src    netip.Addr
}

// cgnat is RFC 6598's shared address space, private in all but name (Tailscale, some
// cloud overlays); netip's IsPrivate leaves it out.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPrivate reports whether a is an address of a private network that peers could use:
// RFC 1918, RFC 4193 (IPv6 ULA) or RFC 6598.
func isPrivate(a netip.Addr) bool { return a.IsPrivate() || cgnat.Contains(a.Unmap()) }

// chooseAdvertise decides the address to advertise when none is configured and gossip is
// bound to every interface. It is a pure function of what it is given:
//
//   - addrs: this host's addresses, in interface order;
//   - hops: the join targets' addresses and the local address the kernel would use to
//     reach each (in the order of the targets);
//   - defaultSrc: the address of the default route (invalid if there is none).
//
// With hops, it takes the local address that most of them are reached from (ties: the
// earliest target's): whatever the host's interfaces, that is the network the cluster is
// on. Without, it takes the only private address; among several, the default route's,
// else the first; with no private address, the first global unicast one, else the
// default route's. The reason names what decided, for the log. It fails only when the
// host has no usable address at all.
func chooseAdvertise(addrs []localAddr, hops []hop, defaultSrc netip.Addr) (netip.Addr, string, error) {
	local := func(a netip.Addr) bool {
		return slices.ContainsFunc(addrs, func(l localAddr) bool { return l.Prefix.Addr() == a })
	}
	var votes []vote
	for _, h := range hops {
		if !h.Src.IsValid() || !local(h.Src) {
			continue
		}
		i := slices.IndexFunc(votes, func(t vote) bool { return t.addr == h.Src })
		if i < 0 {
			votes = append(votes, vote{addr: h.Src})
			i = len(votes) - 1
		}
		votes[i].targets = append(votes[i].targets, h.Target+" ("+h.Dst.String()+")")
	}
	if len(votes) > 0 {
		best := votes[0]
		for _, v := range votes[1:] {
			if len(v.targets) > len(best.targets) {
				best = v
			}
		}
		reason := "the address this node reaches its join targets from: " + strings.Join(best.targets, ", ")
		if len(votes) > 1 {
			reason += fmt.Sprintf(" (%d of %d routes; the others go from %s)", len(best.targets), countTargets(votes), otherAddrs(votes, best.addr))
		}
		return best.addr, reason, nil
	}

	var private, global []netip.Addr
	for _, l := range addrs {
		a := l.Prefix.Addr()
		switch {
		case a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified():
		case isPrivate(a):
			private = append(private, a)
		case a.IsGlobalUnicast():
			global = append(global, a)
		}
	}
	noRoute := "no join target resolved"
	if len(hops) == 0 {
		noRoute = "no join target resolved to an address"
	}
	switch {
	case len(private) == 1:
		return private[0], "the host's only private address", nil
	case len(private) > 1 && slices.Contains(private, defaultSrc):
		return defaultSrc, fmt.Sprintf("%s; of the private addresses %s, the one of the default route (name the right one with --advertise if this is wrong)", noRoute, joinAddrs(private)), nil
	case len(private) > 1:
		return private[0], fmt.Sprintf("%s; the first of the private addresses %s (name the right one with --advertise if this is wrong)", noRoute, joinAddrs(private)), nil
	case len(global) > 0:
		return global[0], "no private address; the first public one", nil
	case defaultSrc.IsValid():
		return defaultSrc, "the address of the default route", nil
	}
	return netip.Addr{}, "", errors.New("advertise address: this host has no usable address; set --advertise")
}

// vote is a local address and the join targets reached from it.
type vote struct {
	addr    netip.Addr
	targets []string
}

func countTargets(votes []vote) int {
	n := 0
	for _, v := range votes {
		n += len(v.targets)
	}
	return n
}

func otherAddrs(votes []vote, best netip.Addr) string {
	var out []netip.Addr
	for _, v := range votes {
		if v.addr != best {
			out = append(out, v.addr)
		}
	}
	return joinAddrs(out)
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// addrSystem is what finding an address needs of the host: its interfaces, name
// resolution, routing and go-sockaddr templates. hostSystem is the real one; tests give
// fakes.
type addrSystem struct {
	interfaces func() ([]localAddr, error)
	lookup     func(ctx context.Context, host string) ([]netip.Addr, error)
	// source returns the local address the kernel would send from to reach dst.
	source   func(dst netip.Addr) (netip.Addr, error)
	template func(tmpl string) (string, error)
}

// defaultRouteProbe is an address on no network of ours (RFC 5737 TEST-NET-3): the
// kernel's source address towards it is the default route's.
var defaultRouteProbe = netip.MustParseAddr("203.0.113.1")

// hostSystem returns the real addrSystem, resolving names with lookup.
func hostSystem(lookup func(ctx context.Context, host string) ([]netip.Addr, error)) addrSystem {
	return addrSystem{interfaces: hostInterfaces, lookup: lookup, source: kernelSource, template: sockaddrtemplate.Parse}
}

// LookupHost resolves host to all its addresses with the system's resolver: the default
// of MembershipConfig.LookupHost.
func LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

func hostInterfaces() ([]localAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var out []localAddr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		as, err := ifc.Addrs()
		if err != nil {
			continue // an interface that went away meanwhile
		}
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ones, _ := ipn.Mask.Size()
			ip = ip.Unmap()
			if ip.Is4() && ones > 32 {
				ones -= 96
			}
			out = append(out, localAddr{Iface: ifc.Name, Prefix: netip.PrefixFrom(ip, ones)})
		}
	}
	return out, nil
}

// kernelSource asks the kernel which local address it would send from to reach dst: a
// UDP "connection" only picks a route; it sends nothing.
func kernelSource(dst netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}, err
	}
	defer func() { _ = c.Close() }() // nothing was sent: nothing to lose
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// resolveHostSpec returns the address spec names, and how it read it. spec is one of:
//
//   - an IP address;
//   - a go-sockaddr template, e.g. {{ GetInterfaceIP "eth0" }} or
//     {{ GetPrivateInterfaces | include "network" "10.0.0.0/8" | attr "address" }},
//     which must give exactly one address;
//   - a network in CIDR notation (10.0.1.0/24): this host's one address in it;
//   - the name of one of this host's interfaces (eth0): its IPv4 address, else its
//     first IPv6 one that is not link-local;
//   - a host name: its first IPv4 address, else its first address.
//
// An error says which, and why it gave no single address.
func (sys addrSystem) resolveHostSpec(ctx context.Context, spec string) (netip.Addr, string, error) {
	spec = strings.TrimSpace(spec)
	if a, err := netip.ParseAddr(spec); err == nil {
		return a.Unmap(), "", nil
	}
	if strings.Contains(spec, "{{") {
		out, err := sys.template(spec)
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("address template %q: %w", spec, err)
		}
		fields := strings.Fields(out)
		switch len(fields) {
		case 0:
			return netip.Addr{}, "", fmt.Errorf("address template %q gives no address", spec)
		case 1:
		default:
			return netip.Addr{}, "", fmt.Errorf("address template %q gives %d addresses (%s): narrow it to one", spec, len(fields), strings.Join(fields, " "))
		}
		a, err := netip.ParseAddr(fields[0])
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("address template %q gives %q, not an IP address", spec, fields[0])
		}
		return a.Unmap(), "template " + spec, nil
	}
	addrs, err := sys.interfaces()
	if err != nil {
		return netip.Addr{}, "", err
	}
	if p, err := netip.ParsePrefix(spec); err == nil {
		var in []netip.Addr
		for _, l := range addrs {
			if p.Contains(l.Prefix.Addr()) {
				in = append(in, l.Prefix.Addr())
			}
		}
		switch len(in) {
		case 0:
			return netip.Addr{}, "", fmt.Errorf("address %s: this host has no address in that network", spec)
		case 1:
			return in[0], "this host's address in " + spec, nil
		}
		return netip.Addr{}, "", fmt.Errorf("address %s: this host has %d addresses in that network (%s): name a narrower one", spec, len(in), joinAddrs(in))
	}
	var v4, v6 []netip.Addr
	found := false
	for _, l := range addrs {
		if l.Iface != spec {
			continue
		}
		found = true
		switch a := l.Prefix.Addr(); {
		case a.Is4():
			v4 = append(v4, a)
		case !a.IsLinkLocalUnicast():
			v6 = append(v6, a)
		}
	}
	if found {
		switch {
		case len(v4) > 0:
			return v4[0], "interface " + spec, nil
		case len(v6) > 0:
			return v6[0], "interface " + spec, nil
		}
		return netip.Addr{}, "", fmt.Errorf("address: interface %s has no usable address", spec)
	}
	ips, err := sys.lookup(ctx, spec)
	if err != nil || len(ips) == 0 {
		return netip.Addr{}, "", fmt.Errorf("address %q: not an IP, network, interface or template, and it does not resolve: %v", spec, err)
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap(), "host name " + spec, nil
		}
	}
	return ips[0], "host name " + spec, nil
}

// advertiseWait bounds how long chooseAdvertise's caller waits for join targets to
// resolve when the host has several private addresses to choose from: a Swarm task's
// own DNS record (tasks.NAME) may appear only just after it starts.
const advertiseWait = 10 * time.Second

// advertise returns the address this node advertises and why: spec if given
// (resolveHostSpec), else the bind host when it names one address, else
// chooseAdvertise's pick from the routes to the join targets.
func (sys addrSystem) advertise(ctx context.Context, spec, bindHost string, join []string) (netip.Addr, string, error) {
	if spec != "" {
		a, how, err := sys.resolveHostSpec(ctx, spec)
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("--advertise: %w", err)
		}
		if how == "" {
			return a, "--advertise", nil
		}
		return a, "--advertise: " + how, nil
	}
	if a, err := netip.ParseAddr(bindHost); err == nil && !a.IsUnspecified() {
		return a.Unmap(), "the gossip bind address", nil
	}
	addrs, err := sys.interfaces()
	if err != nil {
		return netip.Addr{}, "", err
	}
	defaultSrc, _ := sys.source(defaultRouteProbe)
	deadline := time.NewTimer(advertiseWait)
	defer deadline.Stop()
	for {
		hops := sys.routes(ctx, join)
		several := 0
		for _, l := range addrs {
			if isPrivate(l.Prefix.Addr()) {
				several++
			}
		}
		if len(hops) > 0 || len(join) == 0 || several < 2 {
			return chooseAdvertise(addrs, hops, defaultSrc)
		}
		select {
		case <-ctx.Done():
			return chooseAdvertise(addrs, nil, defaultSrc)
		case <-deadline.C:
			return chooseAdvertise(addrs, nil, defaultSrc)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// routes resolves every join target to all its addresses and asks the kernel the local
// address it would reach each from. Targets that do not resolve are left out.
func (sys addrSystem) routes(ctx context.Context, join []string) []hop {
	var hops []hop
	for _, t := range join {
		for _, dst := range sys.resolveTarget(ctx, t) {
			src, err := sys.source(dst.Addr())
			if err != nil {
				continue
			}
			hops = append(hops, hop{Target: t, Dst: dst.Addr(), Src: src})
		}
	}
	return hops
}

// resolveTarget returns every address of a join target, host:port or host (port: the
// default gossip port, 7946). A target that does not resolve gives none.
func (sys addrSystem) resolveTarget(ctx context.Context, target string) []netip.AddrPort {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		host, port = target, "7946"
	}
	p, err := netip.ParseAddrPort(net.JoinHostPort("0.0.0.0", port))
	if err != nil {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Unmap(), p.Port())}
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := sys.lookup(lctx, host)
	if err != nil {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), p.Port()))
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(out)
}

// ResolveBindAddr returns addr, host:port, with a host that names one address in any
// form resolveHostSpec reads (an interface, a network, a template, a host name) replaced
// by that address, for net.Listen. An IP address, or an empty host (every interface),
// is returned as it is.
func ResolveBindAddr(ctx context.Context, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if _, err := netip.ParseAddr(host); err == nil || host == "" {
		return addr, nil
	}
	a, _, err := hostSystem(LookupHost).resolveHostSpec(ctx, host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(a.String(), port), nil
}
