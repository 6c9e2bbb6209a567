package endpoints

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		name       string
		peer       string
		header     http.Header
		want       string
		wantDirect bool
	}{
		{"a peer that is no proxy is the client, whatever it claims", "192.0.2.7:5000", http.Header{"X-Real-Ip": {"198.51.100.1"}}, "192.0.2.7", true},
		{"a trusted proxy's X-Real-IP names the client", "10.1.2.3:5000", http.Header{"X-Real-Ip": {"198.51.100.1"}}, "198.51.100.1", false},
		{"a trusted proxy's last X-Forwarded-For hop names the client", "10.1.2.3:5000", http.Header{"X-Forwarded-For": {"203.0.113.9, 198.51.100.2"}}, "198.51.100.2", false},
		{"a trusted proxy naming nobody is the client, and still not direct", "10.1.2.3:5000", nil, "10.1.2.3", false},
		{"an IPv4-mapped peer is its IPv4 address", "[::ffff:192.0.2.8]:5000", nil, "192.0.2.8", true},
	}
	l := NewFailureLimiter(10, 50, trusted)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.peer, Header: tt.header}
			got, direct := l.ClientAddr(r)
			if got.String() != tt.want || direct != tt.wantDirect {
				t.Fatalf("ClientAddr = %v, direct %v; want %v, direct %v", got, direct, tt.want, tt.wantDirect)
			}
		})
	}
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
	r.do(t, http.MethodGet, PathAuthorize, nil, wrong) // spends the budget
	if resp, _ := r.do(t, http.MethodGet, PathAuthorize, nil, wrong); resp.StatusCode != http.StatusTooManyRequests || resp.Close {
		t.Fatalf("a held refusal: %d, close %v; want 429 on a connection kept open", resp.StatusCode, resp.Close)
	}
	lim.maxHeldPerAddress = 0
	if resp, _ := r.do(t, http.MethodGet, PathAuthorize, nil, wrong); resp.StatusCode != http.StatusTooManyRequests || !resp.Close {
		t.Fatalf("a refusal past the cap: %d, close %v; want 429 closing the connection", resp.StatusCode, resp.Close)
	}
}
