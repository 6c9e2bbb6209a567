package netaddr

import (
	"net"
	"net/netip"
	"testing"
)

func TestClient(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":             "192.0.2.7/32",
		"::ffff:192.0.2.7":      "192.0.2.7/32",
		"2001:db8:1:2:3:4:5:6":  "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::99": "2001:db8:1:2::/64",
	} {
		if got := Client(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("Client(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestPeerAndParse(t *testing.T) {
	if got := Peer(&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}); got != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("Peer = %s", got)
	}
	for in, want := range map[string]string{"127.0.0.1:80": "127.0.0.1", "[::1]:80": "::1", "::1": "::1", "nonsense": "invalid IP"} {
		if got := Parse(in).String(); got != want {
			t.Errorf("Parse(%q) = %s, want %s", in, got, want)
		}
	}
	if !In([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, netip.MustParseAddr("10.1.2.3")) || In(nil, netip.MustParseAddr("10.1.2.3")) {
		t.Error("In")
	}
}
