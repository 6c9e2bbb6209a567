package endpoints

import (
	"context"
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
//
// A client over its budget that talks to the server directly also has its
// 429 held until the budget refills: on a keep-alive connection it cannot
// send the next wrong key meanwhile, so a flood costs the server a parked
// request per connection instead of an answer per request.
type FailureLimiter struct {
	rate  rate.Limit
	burst int
	max   int
	// trusted are proxies whose X-Forwarded-For / X-Real-IP name the client.
	trusted []netip.Prefix
	// maxHold bounds how long a refusal is held; maxHeldPerAddress and
	// maxHeld bound how many are, so that memory stays bounded.
	maxHold           time.Duration
	maxHeldPerAddress int
	maxHeld           int

	mu       sync.Mutex
	buckets  map[netip.Addr]*bucket
	overflow *bucket
	held     int
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
	// held refusals wait; the last is let go at release.
	held    int
	release time.Time
}

const (
	// DefaultMaxTrackedAddresses bounds the limiter's memory: past it, new
	// addresses share one bucket.
	DefaultMaxTrackedAddresses = 100_000
	// DefaultMaxHold is the longest a refusal is held.
	DefaultMaxHold = time.Second
	// DefaultMaxHeldPerAddress and DefaultMaxHeld bound the refusals held
	// at once, per address and in all; past them the connection is closed.
	DefaultMaxHeldPerAddress = 32
	DefaultMaxHeld           = 1024
)

// NewFailureLimiter allows burst failures per address, refilled at perSecond.
func NewFailureLimiter(perSecond float64, burst int, trusted []netip.Prefix) *FailureLimiter {
	return &FailureLimiter{
		rate:              rate.Limit(perSecond),
		burst:             burst,
		max:               DefaultMaxTrackedAddresses,
		trusted:           trusted,
		maxHold:           DefaultMaxHold,
		maxHeldPerAddress: DefaultMaxHeldPerAddress,
		maxHeld:           DefaultMaxHeld,
		buckets:           map[netip.Addr]*bucket{},
		overflow:          &bucket{lim: rate.NewLimiter(rate.Limit(perSecond), burst)},
	}
}

// Allow spends one failure of addr's budget; when there is none left it
// reports how long until there is.
func (l *FailureLimiter) Allow(addr netip.Addr, now time.Time) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	lim := l.bucket(addr, now).lim
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// Hold keeps a refused request waiting until its turn, or until its client
// goes. Refusals to one address are let go no faster than its budget
// refills, each at most maxHold after it came, so that holding more of them
// at once gains a flood nothing. Hold reports false at once when too many
// refusals are held already, for the address or in all: the caller then
// closes the connection, so that opening more does not buy faster answers.
func (l *FailureLimiter) Hold(ctx context.Context, addr netip.Addr, now time.Time, wait time.Duration) bool {
	if l == nil || l.maxHold <= 0 || l.rate <= 0 {
		return true
	}
	b, d := l.acquire(addr, now, wait)
	if b == nil {
		return false
	}
	defer l.release(b)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return true
}

// acquire takes a place for a refusal to addr and says how long it waits.
func (l *FailureLimiter) acquire(addr netip.Addr, now time.Time, wait time.Duration) (*bucket, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		b = l.overflow
	}
	if b.held >= l.maxHeldPerAddress || l.held >= l.maxHeld {
		return nil, 0
	}
	b.held++
	l.held++
	at := now.Add(wait)
	if b.held > 1 {
		at = latest(at, b.release.Add(time.Duration(float64(time.Second)/float64(l.rate))))
	}
	at = earliest(at, now.Add(l.maxHold))
	b.release = at
	return b, at.Sub(now)
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Held is how many refusals are held now.
func (l *FailureLimiter) Held() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

func (l *FailureLimiter) release(b *bucket) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b.held--
	l.held--
}

func (l *FailureLimiter) bucket(addr netip.Addr, now time.Time) *bucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[addr]; ok {
		b.seen = now
		return b
	}
	if len(l.buckets) >= l.max {
		// A bucket idle long enough to refill completely carries no state.
		full := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
		for a, b := range l.buckets {
			if b.held == 0 && now.Sub(b.seen) > full {
				delete(l.buckets, a)
			}
		}
		if len(l.buckets) >= l.max {
			return l.overflow
		}
	}
	b := &bucket{lim: rate.NewLimiter(l.rate, l.burst), seen: now}
	l.buckets[addr] = b
	return b
}

// ClientAddr is the address a request comes from: the peer, or, when the
// peer is a trusted proxy, the client it names. direct is false when the
// peer is a trusted proxy: its connections carry others' requests too.
func (l *FailureLimiter) ClientAddr(r *http.Request) (addr netip.Addr, direct bool) {
	peer := remoteAddr(r.RemoteAddr)
	if l == nil || !l.isTrusted(peer) {
		return peer, true
	}
	if v := strings.TrimSpace(r.Header.Get("X-Real-IP")); v != "" {
		if a, err := netip.ParseAddr(v); err == nil {
			return a.Unmap(), false
		}
	}
	if v := r.Header.Get("X-Forwarded-For"); v != "" {
		// The last hop is the one the trusted proxy added.
		parts := strings.Split(v, ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
			return a.Unmap(), false
		}
	}
	return peer, false
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
