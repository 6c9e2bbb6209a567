// Package netaddr says who a network peer is, the one way both the
// connection caps (internal/serving) and the failure limiter
// (internal/endpoints) count clients.
package netaddr

import (
	"net"
	"net/netip"
)

// IPv6ClientBits is the prefix one IPv6 client is counted by: a single host
// is routinely given a whole /64, so counting per /128 would count nothing.
const IPv6ClientBits = 64

// Client is the client addr counts as: its IPv4 address (an IPv4-mapped
// IPv6 address is its IPv4 address), or its IPv6 /64.
func Client(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := addr.BitLen()
	if addr.Is6() {
		bits = IPv6ClientBits
	}
	p, _ := addr.Prefix(bits)
	return p
}

// Peer is the address of a connection's peer, unmapped; the zero Addr when
// it has none.
func Peer(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return Parse(a.String())
}

// Parse reads a host:port, or a bare address, unmapped; the zero Addr when
// it is neither.
func Parse(hostport string) netip.Addr {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// In reports whether any of prefixes contains a.
func In(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
