package endpoints

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// FailureLimiter rate limits failed attempts per client address with a token
// bucket each, so that a flood of wrong keys from one place is answered
// with 429 while everyone else, and every valid key, is served as usual.
type FailureLimiter struct {
	rate  rate.Limit
	burst int
	max   int
	// trusted are proxies whose X-Forwarded-For / X-Real-IP name the client.
	trusted []netip.Prefix

	mu       sync.Mutex
	buckets  map[netip.Addr]*bucket
	overflow *rate.Limiter
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// DefaultMaxTrackedAddresses bounds the limiter's memory: past it, new
// addresses share one bucket.
const DefaultMaxTrackedAddresses = 100_000

// NewFailureLimiter allows burst failures per address, refilled at perSecond.
func NewFailureLimiter(perSecond float64, burst int, trusted []netip.Prefix) *FailureLimiter {
	return &FailureLimiter{
		rate:     rate.Limit(perSecond),
		burst:    burst,
		max:      DefaultMaxTrackedAddresses,
		trusted:  trusted,
		buckets:  map[netip.Addr]*bucket{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// Allow spends one failure of addr's budget; when there is none left it
// reports how long until there is.
func (l *FailureLimiter) Allow(addr netip.Addr, now time.Time) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	lim := l.limiter(addr, now)
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *FailureLimiter) limiter(addr netip.Addr, now time.Time) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[addr]; ok {
		b.seen = now
		return b.lim
	}
	if len(l.buckets) >= l.max {
		// A bucket idle long enough to refill completely carries no state.
		full := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
		for a, b := range l.buckets {
			if now.Sub(b.seen) > full {
				delete(l.buckets, a)
			}
		}
		if len(l.buckets) >= l.max {
			return l.overflow
		}
	}
	b := &bucket{lim: rate.NewLimiter(l.rate, l.burst), seen: now}
	l.buckets[addr] = b
	return b.lim
}

// ClientAddr is the address a request comes from: the peer, or, when the
// peer is a trusted proxy, the client it names.
func (l *FailureLimiter) ClientAddr(r *http.Request) netip.Addr {
	peer := remoteAddr(r.RemoteAddr)
	if l == nil || !l.isTrusted(peer) {
		return peer
	}
	if v := strings.TrimSpace(r.Header.Get("X-Real-IP")); v != "" {
		if a, err := netip.ParseAddr(v); err == nil {
			return a.Unmap()
		}
	}
	if v := r.Header.Get("X-Forwarded-For"); v != "" {
		// The last hop is the one the trusted proxy added.
		parts := strings.Split(v, ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
			return a.Unmap()
		}
	}
	return peer
}

func (l *FailureLimiter) isTrusted(a netip.Addr) bool {
	for _, p := range l.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func remoteAddr(hostport string) netip.Addr {
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
