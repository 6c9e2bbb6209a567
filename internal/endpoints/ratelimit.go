package endpoints

import (
	"container/list"
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/latchkey-dev/latchkey/internal/netaddr"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// FailureLimiter rate limits failed attempts per client with a token bucket
// each, and all of them together with one more, so that a flood of wrong
// keys from one place, or from many, is answered with 429 while every valid
// key is served as usual. A client is an IPv4 address, or an IPv6 /64: the
// least a site is given, so that one cannot mint budgets from its own range.
//
// A client over its own budget that talks to the server directly also has
// its 429 held until the budget refills: on a keep-alive connection it
// cannot send the next wrong key meanwhile, so a flood costs the server a
// parked request per connection instead of an answer per request. A
// refusal by the global budget is never held: the client refused may be
// within its own budget, and its connection may carry valid keys next.
type FailureLimiter struct {
	rate  rate.Limit
	burst int
	max   int
	// global is all clients' budget together; nil: none.
	global *rate.Limiter
	// trusted are proxies whose header names the client.
	trusted []netip.Prefix
	header  string
	// maxHold bounds how long a refusal is held; maxHeldPerAddress and
	// maxHeld bound how many are, so that memory stays bounded.
	maxHold           time.Duration
	maxHeldPerAddress int
	maxHeld           int

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
	// idle holds the buckets with no refusal held, least recently used
	// first: the one a full table can evict, found in O(1).
	idle     *list.List
	overflow *bucket
	held     int
}

type bucket struct {
	client netip.Prefix
	lim    *rate.Limiter
	seen   time.Time
	// held refusals wait; the last is let go at release.
	held    int
	release time.Time
	// idle is the bucket's place in FailureLimiter.idle, nil while it holds
	// refusals (or is the overflow bucket).
	idle *list.Element
}

const (
	// DefaultMaxTrackedAddresses bounds the limiter's memory: past it, new
	// clients share one bucket.
	DefaultMaxTrackedAddresses = 100_000
	// DefaultMaxHold is the longest a refusal is held.
	DefaultMaxHold = time.Second
	// DefaultMaxHeldPerAddress and DefaultMaxHeld bound the refusals held
	// at once, per client and in all; past them the connection is closed.
	DefaultMaxHeldPerAddress = 32
	DefaultMaxHeld           = 1024
	// DefaultFailureRate and DefaultFailureBurst are the failures a second,
	// and their burst, allowed per client address.
	DefaultFailureRate  = 10
	DefaultFailureBurst = 50
	// DefaultGlobalFailureRate and DefaultGlobalFailureBurst are the failures
	// allowed from all clients together: a hundred times one client's.
	DefaultGlobalFailureRate  = 1000
	DefaultGlobalFailureBurst = 5000
	// DefaultClientAddressHeader is the header a trusted proxy names the
	// client in: the one pkg/latchkey's middleware sends.
	DefaultClientAddressHeader = protocol.HeaderClientAddress
)

// A LimiterOption adjusts a FailureLimiter.
type LimiterOption func(*FailureLimiter)

// WithGlobalBudget allows burst failures from all clients together,
// refilled at perSecond; a perSecond of 0 means no global budget.
func WithGlobalBudget(perSecond float64, burst int) LimiterOption {
	return func(l *FailureLimiter) {
		if perSecond > 0 {
			l.global = rate.NewLimiter(rate.Limit(perSecond), burst)
		}
	}
}

// WithClientAddressHeader names the one header in which trusted proxies
// name the client (default X-Real-IP). X-Forwarded-For means its last hop,
// the one the proxy appended; any other header holds one address. Every
// other such header is ignored, so that one a client sent and the proxy
// passed on cannot choose whose budget the client spends.
func WithClientAddressHeader(name string) LimiterOption {
	return func(l *FailureLimiter) {
		if name != "" {
			l.header = http.CanonicalHeaderKey(name)
		}
	}
}

// NewFailureLimiter allows burst failures per client, refilled at perSecond.
func NewFailureLimiter(perSecond float64, burst int, trusted []netip.Prefix, opts ...LimiterOption) *FailureLimiter {
	l := &FailureLimiter{
		rate:              rate.Limit(perSecond),
		burst:             burst,
		max:               DefaultMaxTrackedAddresses,
		trusted:           trusted,
		header:            http.CanonicalHeaderKey(DefaultClientAddressHeader),
		maxHold:           DefaultMaxHold,
		maxHeldPerAddress: DefaultMaxHeldPerAddress,
		maxHeld:           DefaultMaxHeld,
		buckets:           map[netip.Prefix]*bucket{},
		idle:              list.New(),
		overflow:          &bucket{lim: rate.NewLimiter(rate.Limit(perSecond), burst)},
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Allow spends one failure of addr's client's budget and of the global
// budget; when either has none left it reports how long until it has, and
// whether it was the client's own budget, so that the refusal may be held.
func (l *FailureLimiter) Allow(addr netip.Addr, now time.Time) (ok bool, wait time.Duration, own bool) {
	if l == nil || l.rate <= 0 {
		return true, 0, false
	}
	if d := spend(l.bucket(addr, now).lim, now); d > 0 {
		return false, d, true
	}
	if l.global != nil {
		if d := spend(l.global, now); d > 0 {
			return false, d, false
		}
	}
	return true, 0, false
}

// spend takes a token of lim, or says how long until there is one.
func spend(lim *rate.Limiter, now time.Time) time.Duration {
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
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
	b, ok := l.buckets[netaddr.Client(addr)]
	if !ok {
		b = l.overflow
	}
	if b.held >= l.maxHeldPerAddress || l.held >= l.maxHeld {
		return nil, 0
	}
	b.held++
	l.held++
	if b.idle != nil {
		l.idle.Remove(b.idle)
		b.idle = nil
	}
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
	if b.held == 0 && b != l.overflow {
		// Idle from its last release on: a later time than its last use,
		// so that it is never evicted before it has refilled.
		b.seen = latest(b.seen, b.release)
		b.idle = l.idle.PushBack(b)
	}
}

func (l *FailureLimiter) bucket(addr netip.Addr, now time.Time) *bucket {
	c := netaddr.Client(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[c]; ok {
		b.seen = latest(b.seen, now)
		if b.idle != nil {
			l.idle.MoveToBack(b.idle)
		}
		return b
	}
	if len(l.buckets) >= l.max && !l.evict(now) {
		return l.overflow
	}
	b := &bucket{client: c, lim: rate.NewLimiter(l.rate, l.burst), seen: now}
	b.idle = l.idle.PushBack(b)
	l.buckets[c] = b
	return b
}

// evict drops the least recently used idle bucket if it has been idle long
// enough to refill completely: it then carries no state, and a new bucket
// would be the same.
func (l *FailureLimiter) evict(now time.Time) bool {
	e := l.idle.Front()
	if e == nil {
		return false
	}
	b := e.Value.(*bucket)
	full := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
	if now.Sub(b.seen) <= full {
		return false
	}
	l.idle.Remove(e)
	delete(l.buckets, b.client)
	return true
}

// ClientAddr is the address a request comes from: the peer, or, when the
// peer is a trusted proxy, the client its header names. direct is false
// when the peer is a trusted proxy: its connections carry others' requests
// too.
func (l *FailureLimiter) ClientAddr(r *http.Request) (addr netip.Addr, direct bool) {
	peer := netaddr.Parse(r.RemoteAddr)
	if l == nil || !netaddr.In(l.trusted, peer) {
		return peer, true
	}
	if a, ok := l.named(r.Header.Values(l.header)); ok {
		return a, false
	}
	return peer, false
}

// named reads the client's address from the values of the trusted header.
func (l *FailureLimiter) named(values []string) (netip.Addr, bool) {
	if len(values) == 0 {
		return netip.Addr{}, false
	}
	v := values[len(values)-1]
	if l.header == "X-Forwarded-For" {
		// The last hop is the one the trusted proxy appended.
		v = v[strings.LastIndexByte(v, ',')+1:]
	} else if len(values) > 1 {
		// A proxy sets this header once; two mean one is not its own.
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
