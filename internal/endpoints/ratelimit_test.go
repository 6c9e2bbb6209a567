package endpoints

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/internal/netaddr"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	const xff = "X-Forwarded-For"
	tests := []struct {
		name string
		// header is the one the trusted proxy names the client in; empty: the default.
		header     string
		peer       string
		sent       http.Header
		want       string
		wantDirect bool
	}{
		{"a peer that is no proxy is the client, whatever it claims", "", "192.0.2.7:5000", http.Header{"X-Real-Ip": {"198.51.100.1"}}, "192.0.2.7", true},
		{"a trusted proxy's X-Real-IP names the client", "", "10.1.2.3:5000", http.Header{"X-Real-Ip": {"198.51.100.1"}}, "198.51.100.1", false},
		{"where X-Real-IP counts, X-Forwarded-For is ignored", "", "10.1.2.3:5000", http.Header{"X-Forwarded-For": {"198.51.100.2"}}, "10.1.2.3", false},
		{"two X-Real-IPs name nobody: one is not the proxy's", "", "10.1.2.3:5000", http.Header{"X-Real-Ip": {"198.51.100.1", "198.51.100.9"}}, "10.1.2.3", false},
		{"a trusted proxy's last X-Forwarded-For hop names the client", xff, "10.1.2.3:5000", http.Header{"X-Forwarded-For": {"203.0.113.9, 198.51.100.2"}}, "198.51.100.2", false},
		{"the last hop of the last X-Forwarded-For line counts", xff, "10.1.2.3:5000", http.Header{"X-Forwarded-For": {"203.0.113.9", "198.51.100.3"}}, "198.51.100.3", false},
		{"where X-Forwarded-For counts, a client's X-Real-IP passed on by the proxy is ignored", xff, "10.1.2.3:5000",
			http.Header{"X-Real-Ip": {"198.51.100.1"}, "X-Forwarded-For": {"203.0.113.9, 198.51.100.2"}}, "198.51.100.2", false},
		{"a trusted proxy naming nobody is the client, and still not direct", "", "10.1.2.3:5000", nil, "10.1.2.3", false},
		{"an IPv4-mapped peer is its IPv4 address", "", "[::ffff:192.0.2.8]:5000", nil, "192.0.2.8", true},
		{"an IPv4-mapped named client is its IPv4 address", xff, "10.1.2.3:5000", http.Header{"X-Forwarded-For": {"::ffff:192.0.2.9"}}, "192.0.2.9", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewFailureLimiter(10, 50, trusted, WithClientAddressHeader(tt.header))
			r := &http.Request{RemoteAddr: tt.peer, Header: tt.sent}
			got, direct := l.ClientAddr(r)
			if got.String() != tt.want || direct != tt.wantDirect {
				t.Fatalf("ClientAddr = %v, direct %v; want %v, direct %v", got, direct, tt.want, tt.wantDirect)
			}
		})
	}
}

// One IPv6 client is a /64, the least a site is given: addresses within it
// share one budget, and only another /64 has another. IPv4 clients are
// single addresses.
func TestClientsAreIPv4AddressesAndIPv6Slash64s(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	l := NewFailureLimiter(1, 2, nil)
	for _, a := range []string{"2001:db8:0:7::1", "2001:db8:0:7:ffff::2"} {
		if ok, _, _ := l.Allow(netip.MustParseAddr(a), now); !ok {
			t.Fatalf("failure from %s refused within the burst", a)
		}
	}
	if ok, _, own := l.Allow(netip.MustParseAddr("2001:db8:0:7:1234::3"), now); ok || !own {
		t.Fatalf("a third address of the same /64 was not charged to its spent budget (ok %v, own %v)", ok, own)
	}
	if ok, _, _ := l.Allow(netip.MustParseAddr("2001:db8:0:8::1"), now); !ok {
		t.Fatal("another /64 was charged to the first one's budget")
	}
	for _, a := range []string{"192.0.2.1", "::ffff:192.0.2.1", "::ffff:192.0.2.3", "::ffff:192.0.2.4", "::ffff:192.0.2.5"} {
		if ok, _, _ := l.Allow(netip.MustParseAddr(a), now); !ok {
			t.Fatalf("IPv4 %s shares another address's budget", a)
		}
	}
	if ok, _, _ := l.Allow(netip.MustParseAddr("192.0.2.1"), now); ok {
		t.Fatal("an IPv4-mapped address was not charged to its IPv4 address")
	}
}

// The shape of the reported flood: 3,000 source addresses sending 150,000
// wrong keys, each address within its own budget. The global budget limits
// it; without one, nothing did.
func TestGlobalBudgetLimitsAFloodFromManyAddresses(t *testing.T) {
	start := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	const addresses, perAddress = 3000, 50
	const globalRate, globalBurst = 1000, 5000
	flood := func(l *FailureLimiter) (allowed, ownRefusals int, last time.Time) {
		// Spread over 10 s, each address at its burst and well under its refill.
		now := start
		for round := range perAddress {
			now = start.Add(time.Duration(round) * 200 * time.Millisecond)
			for i := range addresses {
				addr := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
				ok, _, own := l.Allow(addr, now)
				switch {
				case ok:
					allowed++
				case own:
					ownRefusals++
				}
			}
		}
		return allowed, ownRefusals, now
	}
	if allowed, _, _ := flood(NewFailureLimiter(10, 50, nil)); allowed != addresses*perAddress {
		t.Fatalf("without a global budget %d of %d were allowed; the flood was expected to pass the per-address budgets", allowed, addresses*perAddress)
	}
	allowed, own, last := flood(NewFailureLimiter(10, 50, nil, WithGlobalBudget(globalRate, globalBurst)))
	if most := globalBurst + int(last.Sub(start).Seconds()*globalRate); allowed > most {
		t.Fatalf("%d failures allowed in %v, more than the global budget's %d", allowed, last.Sub(start), most)
	}
	if own != 0 {
		t.Fatalf("%d refusals were charged to addresses within their own budgets", own)
	}
	t.Logf("%d of %d wrong keys from %d addresses allowed in %v", allowed, addresses*perAddress, addresses, last.Sub(start))
}

// A full table evicts the least recently used bucket that holds nothing
// and has refilled completely, and no other.
func TestAFullTableEvictsTheLeastRecentlyUsedIdleBucket(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	full := 5 * time.Second // burst 50 at 10/s
	l := NewFailureLimiter(10, 50, nil)
	l.max = 3
	a, b, c, d, e := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4"), netip.MustParseAddr("192.0.2.5")
	for _, x := range []netip.Addr{a, b, c} {
		l.Allow(x, t0)
	}
	l.Allow(a, t0.Add(time.Second)) // a is used again: b is now the least recent
	tracked := func() []string {
		var out []string
		for _, x := range []netip.Addr{a, b, c, d, e} {
			if _, ok := l.buckets[netaddr.Client(x)]; ok {
				out = append(out, x.String())
			}
		}
		return out
	}
	l.Allow(d, t0.Add(full/2))
	if got := fmt.Sprint(tracked()); got != "[192.0.2.1 192.0.2.2 192.0.2.3]" {
		t.Fatalf("a bucket that had not refilled was evicted: tracked %s", got)
	}
	if _, held := l.acquire(c, t0, time.Hour); held == 0 {
		t.Fatal("no refusal held")
	}
	l.Allow(d, t0.Add(2*full))
	if got := fmt.Sprint(tracked()); got != "[192.0.2.1 192.0.2.3 192.0.2.4]" {
		t.Fatalf("after one new address: tracked %s, want b evicted", got)
	}
	l.Allow(e, t0.Add(2*full))
	if got := fmt.Sprint(tracked()); got != "[192.0.2.3 192.0.2.4 192.0.2.5]" {
		t.Fatalf("after another: tracked %s, want a evicted and c, which holds a refusal, kept", got)
	}
	if len(l.buckets) != l.idle.Len()+1 {
		t.Fatalf("%d buckets, %d idle: the one holding a refusal must be the only one not idle", len(l.buckets), l.idle.Len())
	}
}

// BenchmarkNewAddress measures what a failure from a new address costs
// under the lock: into an empty table, into a full one (100,000) that
// evicts a refilled bucket each time, and into a full one with nothing to
// evict (the new address shares the overflow bucket).
func BenchmarkNewAddress(b *testing.B) {
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	other := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}) }
	fill := func(l *FailureLimiter, at time.Time) {
		for i := range DefaultMaxTrackedAddresses {
			l.bucket(other(i), at)
		}
	}
	b.Run("table=empty", func(b *testing.B) {
		l := NewFailureLimiter(10, 50, nil)
		l.max = math.MaxInt
		for i := 0; b.Loop(); i++ {
			l.bucket(addr(i), t0)
		}
	})
	b.Run("table=full/evicting", func(b *testing.B) {
		l := NewFailureLimiter(10, 50, nil)
		fill(l, t0.Add(-time.Hour))
		// 100µs a new address: each bucket has refilled (5s) by the time
		// 100,000 newer ones pushed it to the front.
		for i := 0; b.Loop(); i++ {
			l.bucket(addr(i), t0.Add(time.Duration(i)*100*time.Microsecond))
		}
		if len(l.buckets) != DefaultMaxTrackedAddresses {
			b.Fatalf("%d buckets", len(l.buckets))
		}
	})
	b.Run("table=full/nothing-to-evict", func(b *testing.B) {
		l := NewFailureLimiter(10, 50, nil)
		fill(l, t0)
		for i := 0; b.Loop(); i++ {
			l.bucket(addr(i), t0)
		}
	})
}

func TestHeldRefusalsAreLetGoAtTheRefillRate(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	addr := netip.MustParseAddr("192.0.2.1")
	l := NewFailureLimiter(10, 1, nil) // a refill every 100ms
	l.Allow(addr, now)
	tests := []struct {
		name string
		wait time.Duration
		want time.Duration
	}{
		{"the first waits until the budget refills", 80 * time.Millisecond, 80 * time.Millisecond},
		{"the second waits one refill more", 80 * time.Millisecond, 180 * time.Millisecond},
		{"the third one more again", 80 * time.Millisecond, 280 * time.Millisecond},
		{"none waits longer than the longest hold", 80 * time.Millisecond, 280 * time.Millisecond},
	}
	l.maxHold = 280 * time.Millisecond
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, got := l.acquire(addr, now, tt.wait); got != tt.want {
				t.Fatalf("held for %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHoldIsBounded(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	l := NewFailureLimiter(10, 1, nil)
	l.maxHeldPerAddress, l.maxHeld = 2, 3
	l.Allow(a, now)
	l.Allow(b, now)
	for range 2 {
		if held, _ := l.acquire(a, now, time.Second); held == nil {
			t.Fatal("a refusal within the address's cap was not held")
		}
	}
	if held, _ := l.acquire(a, now, time.Second); held != nil {
		t.Fatal("a refusal past the address's cap was held")
	}
	if held, _ := l.acquire(b, now, time.Second); held == nil {
		t.Fatal("another address's refusal was not held")
	}
	if held, _ := l.acquire(b, now, time.Second); held != nil {
		t.Fatal("a refusal past the overall cap was held")
	}
	if l.Hold(context.Background(), b, now, time.Hour) {
		t.Fatal("Hold past the caps did not say to close the connection")
	}
}

func TestHoldEndsWhenTheClientGoes(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	addr := netip.MustParseAddr("192.0.2.1")
	l := NewFailureLimiter(10, 1, nil)
	l.maxHold = time.Hour
	l.Allow(addr, now)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if !l.Hold(ctx, addr, now, time.Hour) {
		t.Fatal("a held refusal was refused a place")
	}
	if l.held != 0 {
		t.Fatalf("%d refusals still counted as held after their client went", l.held)
	}
}

func TestRefusalsPastTheCapsCloseTheConnection(t *testing.T) {
	lim := NewFailureLimiter(1, 1, nil)
	lim.maxHold = 10 * time.Millisecond
	r := newRig(t, &Server{Limiter: lim})
	wrong := http.Header{"Authorization": {"Bearer lk_nope"}}
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong) // spends the budget
	if resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong); resp.StatusCode != http.StatusTooManyRequests || resp.Close {
		t.Fatalf("a held refusal: %d, close %v; want 429 on a connection kept open", resp.StatusCode, resp.Close)
	}
	lim.maxHeldPerAddress = 0
	if resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong); resp.StatusCode != http.StatusTooManyRequests || !resp.Close {
		t.Fatalf("a refusal past the cap: %d, close %v; want 429 closing the connection", resp.StatusCode, resp.Close)
	}
}
