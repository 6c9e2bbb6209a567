package endpoints

import (
	"errors"
	"net/netip"
	"time"

	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// A Verdict is how a Check ends.
type Verdict uint8

const (
	// Allowed: the key is valid, and of the pinned tenant if one is.
	Allowed Verdict = iota
	// Unauthenticated: no key, or one that is refused (Decision.Err says
	// why, in words for the caller).
	Unauthenticated
	// Forbidden: a valid key of another tenant than the one pinned.
	Forbidden
	// Limited: the client's own failure budget is spent; a caller that
	// talks to the client directly may hold its answer (FailureLimiter.Hold).
	Limited
	// LimitedGlobal: every client's budget together is spent; the client
	// may be within its own, so its answer is never held.
	LimitedGlobal
)

// A Decision is what Check decided about one request.
type Decision struct {
	Verdict Verdict
	// Identity is the key's, when it is valid (Allowed or Forbidden).
	Identity verifier.Identity
	// Err is why a key was refused (Unauthenticated); it never holds key
	// material.
	Err error
	// RetryAfter is how long until the client may fail again (Limited,
	// LimitedGlobal).
	RetryAfter time.Duration
}

// ErrNoKey refuses a request that presents no key in any place a key is
// read from.
var ErrNoKey = errors.New("no key in the request")

// Check is the verification every transport shares (forward-auth, Envoy's
// ext_authz): it resolves token (empty: none was presented) from the
// index, spends a failure of client's budget when it is refused, and
// counts the answer for endpoint and for the key's tenant. A tenant in
// required that is not empty pins the request to it. It allocates nothing
// of its own, so that the transport's are the request's only garbage.
func (s *Server) Check(endpoint, token string, client netip.Addr, required ...string) Decision {
	var (
		id     verifier.Identity
		tenant string
		err    = ErrNoKey
	)
	if token != "" {
		id, tenant, err = s.Verifier.Resolve(token)
	}
	if err != nil {
		s.denied(tenant)
		if d, limited := s.spend(endpoint, client); limited {
			return d
		}
		s.count(endpoint, resultOf(err))
		return Decision{Verdict: Unauthenticated, Err: err}
	}
	if s.Activity != nil {
		// The key authenticated, whatever the route decides: it is in use.
		s.Activity.Allowed(id)
	}
	for _, t := range required {
		if t != "" && t != id.Tenant {
			s.count(endpoint, "forbidden")
			return Decision{Verdict: Forbidden, Identity: id}
		}
	}
	s.count(endpoint, "allowed")
	return Decision{Verdict: Allowed, Identity: id}
}

// spend takes a failure of client's budget, and decides the request is
// limited when there was none left.
func (s *Server) spend(endpoint string, client netip.Addr) (Decision, bool) {
	if s.Limiter == nil {
		return Decision{}, false
	}
	ok, wait, own := s.Limiter.Allow(client, s.Clock.Now())
	switch {
	case ok:
		return Decision{}, false
	case own:
		s.count(endpoint, "rate_limited")
		return Decision{Verdict: Limited, RetryAfter: wait}, true
	default:
		s.count(endpoint, "rate_limited_global")
		return Decision{Verdict: LimitedGlobal, RetryAfter: wait}, true
	}
}
