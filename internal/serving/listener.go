package serving

import (
	"hash/maphash"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/time/rate"

	"github.com/latchkey-dev/latchkey/internal/netaddr"
)

// Why a connection was refused at accept.
const (
	refusedPerAddress = "per_address"
	refusedTotal      = "total"
	refusedRate       = "rate"
)

// rateSlots is how many token buckets new connections are counted in:
// addresses are hashed to them, so memory is fixed whatever the number of
// addresses, and addresses sharing a slot share its budget.
const rateSlots = 4096

// limitListener caps the connections open at once, from one address and
// in all, and how fast one address opens them. Past a cap it closes the new connection as soon as it is
// accepted, before any TLS or HTTP work: a flood of connections costs a
// map lookup each, and what the open ones may cost is bounded by the cap.
type limitListener struct {
	net.Listener
	perAddress, total int
	// exempt addresses (trusted proxies, which carry every client's
	// requests) count towards the total only.
	exempt []netip.Prefix
	// refused counts by reason; open is read by a gauge.
	refused func(reason string)
	// rates limit how fast one address opens connections: a failed TLS
	// handshake costs the server far more than the refusal at accept.
	seed  maphash.Seed
	rates []*rate.Limiter

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int
}

func newLimitListener(l net.Listener, lim Limits, exempt []netip.Prefix, refused func(reason string)) *limitListener {
	ll := &limitListener{
		Listener: l, perAddress: lim.MaxConnsPerAddress, total: lim.MaxConns, exempt: exempt, refused: refused,
		byAddr: map[netip.Addr]int{}, seed: maphash.MakeSeed(),
	}
	if lim.NewConnsPerAddressPerSecond > 0 {
		ll.rates = make([]*rate.Limiter, rateSlots)
		for i := range ll.rates {
			ll.rates[i] = rate.NewLimiter(rate.Limit(lim.NewConnsPerAddressPerSecond), lim.NewConnsPerAddressBurst)
		}
	}
	return ll
}

// Accept returns the next connection within the caps; the others are
// closed without being handed on.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr, exempt := l.classify(c)
		if reason := l.acquire(addr, exempt); reason != "" {
			l.refused(reason)
			// No lingering: a refused connection leaves nothing behind.
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.release(addr, exempt) }}, nil
	}
}

func (l *limitListener) acquire(addr netip.Addr, exempt bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.total {
		return refusedTotal
	}
	if !exempt {
		if l.byAddr[addr] >= l.perAddress {
			return refusedPerAddress
		}
		if l.rates != nil && !l.rates[maphash.Comparable(l.seed, addr)%rateSlots].Allow() {
			return refusedRate
		}
		l.byAddr[addr]++
	}
	l.open++
	return ""
}

func (l *limitListener) release(addr netip.Addr, exempt bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if exempt {
		return
	}
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
}

// Open is how many accepted connections are open.
func (l *limitListener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// classify says who a connection counts against (netaddr.Client, as the
// failure limiter counts them), and whether it is exempt from the
// per-address cap.
func (l *limitListener) classify(c net.Conn) (netip.Addr, bool) {
	addr := netaddr.Peer(c.RemoteAddr())
	if !addr.IsValid() {
		return netip.Addr{}, false
	}
	if netaddr.In(l.exempt, addr) {
		return addr, true
	}
	return netaddr.Client(addr).Addr(), false
}

// limitedConn gives its place back once, when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
