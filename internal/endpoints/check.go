package endpoints

import (
	"errors"
	"net/netip"
	"strings"
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
	// InsufficientScope: a valid key that lacks a scope the route requires
	// (Decision.Missing names it).
	InsufficientScope
	// Limited: the client's own failure budget is spent; a caller that
	// talks to the client directly may hold its answer (FailureLimiter.Hold).
	Limited
	// LimitedGlobal: every client's budget together is spent; the client
	// may be within its own, so its answer is never held.
	LimitedGlobal
	// Unavailable: this replica may not answer keys now (Decision.Err is
	// verifier.ErrNotServing); another replica, or a retry, may.
	Unavailable
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
	// Missing is a scope the key lacks (InsufficientScope).
	Missing string
}

// Want is what a route asks of a key beyond being valid, from up to two
// places each (Envoy's per-route context extensions and the request's
// headers): tenants it must be of, and comma-separated lists of scopes it
// must all have. Empty entries ask nothing.
type Want struct {
	Tenants [2]string
	Scopes  [2]string
}

// ScopeList is the scopes w requires, comma-separated, for a refusal to
// name.
func (w Want) ScopeList() string {
	switch {
	case w.Scopes[0] == "":
		return w.Scopes[1]
	case w.Scopes[1] == "":
		return w.Scopes[0]
	}
	return w.Scopes[0] + "," + w.Scopes[1]
}

// lacking is the first scope a list requires that id does not have.
func lacking(id *verifier.Identity, list string) (string, bool) {
	for list != "" {
		var scope string
		scope, list, _ = strings.Cut(list, ",")
		if scope = strings.TrimSpace(scope); scope != "" && !id.HasScope(scope) {
			return scope, true
		}
	}
	return "", false
}

// ErrNoKey refuses a request that presents no key in any place a key is
// read from.
var ErrNoKey = errors.New("no key in the request")

// Check is the verification every transport shares (forward-auth, Envoy's
// ext_authz): it resolves token (empty: none was presented) from the
// index, spends a failure of client's budget when it is refused, and
// counts the answer for endpoint and for the key's tenant. want pins the
// request to tenants and requires scopes. It allocates nothing of its own,
// so that the transport's are the request's only garbage.
func (s *Server) Check(endpoint, token string, client netip.Addr, want Want) Decision {
	var (
		id     verifier.Identity
		tenant string
		err    = ErrNoKey
	)
	if token != "" {
		id, tenant, err = s.Verifier.Resolve(token)
	}
	if err == verifier.ErrNotServing { //nolint:errorlint // Resolve returns it as is
		// Nothing is known of the key: no tenant's refusal, no failure
		// charged to the client.
		s.count(endpoint, "not_serving")
		return Decision{Verdict: Unavailable, Err: err}
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
	for _, t := range want.Tenants {
		if t != "" && t != id.Tenant {
			s.count(endpoint, "forbidden")
			return Decision{Verdict: Forbidden, Identity: id}
		}
	}
	for _, list := range want.Scopes {
		if scope, lacks := lacking(&id, list); lacks {
			s.count(endpoint, "insufficient_scope")
			return Decision{Verdict: InsufficientScope, Identity: id, Missing: scope}
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
