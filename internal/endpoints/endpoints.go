// Package endpoints serves verification over HTTP: TokenReview, forward-auth
// for proxies, and whoami.
package endpoints

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/utils/clock"

	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// DefaultAudience is what keys are valid for when no audience is
// configured: a service reviewing a Latchkey key asks for it, so that a
// review meant for another issuer's tokens (a Vault, a service account's)
// never accepts one.
const DefaultAudience = protocol.Audience

// MaxBodyBytes caps a request body.
const MaxBodyBytes = 64 << 10

// Server answers verification requests from the verifier's index.
type Server struct {
	Verifier *verifier.Verifier
	// Activity is told of every verification of a known key: the identity
	// of one allowed, the tenant of one refused.
	Activity interface {
		Allowed(verifier.Identity)
		Denied(tenant string)
	}
	// Reports records execution reports; nil disables /v1/executions.
	Reports interface {
		Report(ctx context.Context, tenant, reporter string, b *usage.Batch) (bool, error)
	}
	// Keys say where a request's key is read from (the zero value:
	// Authorization and DefaultKeyHeaders).
	Keys KeyPlaces
	// Limiter limits failed attempts at /authorize and /whoami per client
	// address; nil disables it.
	Limiter *FailureLimiter
	// Audiences are the audiences keys are valid for in a TokenReview, for
	// services that review keys; empty means DefaultAudience.
	Audiences []string
	// APIServerAudiences are kube-apiserver's own audiences (its
	// --api-audiences, which default to its --service-account-issuer).
	// Keys are valid for them as well, and a review that names no audience,
	// which means the API server's, authenticates only when they are set:
	// empty, keys are not Kubernetes credentials.
	APIServerAudiences []string
	Clock              clock.PassiveClock
	// Metrics receives the verification counts and durations; nil is none.
	Metrics *metrics.Metrics
}

// Register adds the endpoints to a mux, such as the webhook server.
func (s *Server) Register(register func(path string, h http.Handler)) {
	register(protocol.PathTokenReview, http.HandlerFunc(s.TokenReview))
	register(protocol.PathAuthorize, http.HandlerFunc(s.Authorize))
	// Envoy's HTTP ext_authz, and gateways built on it, ask for the
	// original path under their path prefix.
	register(protocol.PathAuthorize+"/", http.HandlerFunc(s.Authorize))
	register(protocol.PathWhoAmI, http.HandlerFunc(s.WhoAmI))
	if s.Reports != nil {
		register(protocol.PathExecutions, http.HandlerFunc(s.Executions))
	}
}

// Authorize is forward-auth, at /authorize and every path under it, for
// any method, the body never read: 200 with the key's tenant and name for
// a valid key, 401 otherwise, 403 when the caller pins a tenant the key is
// not of.
func (s *Server) Authorize(w http.ResponseWriter, r *http.Request) {
	defer s.observe("authorize", s.Clock.Now())
	// The header names are canonical (TestHeaderNamesAreCanonical), so the
	// maps are indexed directly rather than canonicalising per request.
	for _, h := range [...]string{protocol.HeaderTenantRequired, protocol.HeaderScopeRequired} {
		if len(r.Header[h]) > 1 {
			// Proxies differ in which of two they pass on: what a route
			// requires must not depend on it.
			s.badRequest(w, "authorize", "more than one "+h+" header")
			return
		}
	}
	want := Want{Tenants: [2]string{first(r.Header[protocol.HeaderTenantRequired])}, Scopes: [2]string{first(r.Header[protocol.HeaderScopeRequired])}}
	id, ok := s.verifyKey(w, r, "authorize", want)
	if !ok {
		return
	}
	// One allocation for the three values, each its own full slice so that
	// an append to one cannot write into the next.
	v := []string{id.Tenant, id.Tenant + "/" + id.KeyName, id.ScopeList}
	h := w.Header()
	h[protocol.HeaderTenant], h[protocol.HeaderKey] = v[0:1:1], v[1:2:2]
	// Always sent, empty too, so that a proxy copying it replaces what a
	// client sent under its name.
	h[protocol.HeaderScopes] = v[2:3:3]
	// No WriteHeader: the 200 net/http sends once the handler returns
	// needs no copy of the header map, which one sent before does.
}

// first is a header's first value, or "".
func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

// WhoAmI answers GET with the tenant and key the presented key resolves to.
func (s *Server) WhoAmI(w http.ResponseWriter, r *http.Request) {
	defer s.observe("whoami", s.Clock.Now())
	if !s.method(w, r, "whoami", http.MethodGet) {
		return
	}
	id, ok := s.verifyKey(w, r, "whoami", Want{})
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	who := protocol.WhoAmI{
		Tenant: id.Tenant, KeyName: id.KeyName, KeyHint: id.Hint, CreatedAt: id.CreatedAt.UTC(), Scopes: id.Scopes,
	}
	if !id.ExpiresAt.IsZero() {
		at := id.ExpiresAt.UTC()
		who.ExpiresAt = &at
	}
	_ = json.NewEncoder(w).Encode(who)
}

// verifyKey verifies the request's key through Check, with what the route
// wants of it, and answers 400, 401, 403 or 429 itself when the request is
// refused.
func (s *Server) verifyKey(w http.ResponseWriter, r *http.Request, endpoint string, want Want) (verifier.Identity, bool) {
	addr, direct := s.Limiter.ClientAddr(r)
	token, _, err := s.Keys.FromRequest(r, !direct)
	if err != nil {
		s.badRequest(w, endpoint, err.Error())
		return verifier.Identity{}, false
	}
	d := s.Check(endpoint, token, addr, want)
	switch d.Verdict {
	case Allowed:
		return d.Identity, true
	case Forbidden:
		http.Error(w, fmt.Sprintf("key is not a key of tenant %q", want.Tenants[0]), http.StatusForbidden)
	case InsufficientScope:
		w.Header().Set("WWW-Authenticate", protocol.InsufficientScope(want.ScopeList()))
		http.Error(w, fmt.Sprintf("key lacks scope %q", d.Missing), http.StatusForbidden)
	case Limited:
		if direct && !s.Limiter.Hold(r.Context(), addr, s.Clock.Now(), d.RetryAfter) {
			w.Header().Set("Connection", "close")
		}
		tooMany(w, d.RetryAfter, "too many failed attempts from this address; retry later")
	case Unavailable:
		notServing(w, d.Err)
	case LimitedGlobal:
		// The global budget is everyone's: this client may be within its
		// own, so its connection is neither held nor closed.
		tooMany(w, d.RetryAfter, "too many failed attempts from all addresses; retry later")
	default:
		w.Header().Set("WWW-Authenticate", protocol.Challenge(d.Err.Error()))
		http.Error(w, d.Err.Error(), http.StatusUnauthorized)
	}
	return verifier.Identity{}, false
}

// notServing answers a request this replica may not answer now: a
// gateway retries it elsewhere, and kube-apiserver counts it an error, not
// a refused key.
func notServing(w http.ResponseWriter, err error) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

func tooMany(w http.ResponseWriter, wait time.Duration, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
	http.Error(w, msg, http.StatusTooManyRequests)
}

// TokenReview implements authentication.k8s.io TokenReview, for
// kube-apiserver's webhook token authenticator and for services.
func (s *Server) TokenReview(w http.ResponseWriter, r *http.Request) {
	defer s.observe("tokenreview", s.Clock.Now())
	if !s.method(w, r, "tokenreview", http.MethodPost) {
		return
	}
	body, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		s.badRequest(w, "tokenreview", err.Error())
		return
	}
	review, err := DecodeTokenReview(body)
	if err != nil {
		s.badRequest(w, "tokenreview", err.Error())
		return
	}

	id, tenant, verr := s.Verifier.Resolve(review.Spec.Token)
	if verr == verifier.ErrNotServing { //nolint:errorlint // Resolve returns it as is
		s.count("tokenreview", "not_serving")
		notServing(w, verr)
		return
	}
	requested := review.Spec.Audiences
	review.Spec = authnv1.TokenReviewSpec{} // never echo the token
	review.Status = authnv1.TokenReviewStatus{}
	switch {
	case verr != nil:
		// A reviewer asks on behalf of its callers, so their failures are
		// not charged to its address: a 429 would refuse its other callers,
		// and kube-apiserver retries 429s, multiplying a flood.
		s.denied(tenant)
		s.count("tokenreview", resultOf(verr))
		review.Status.Error = verr.Error()
	default:
		audiences, err := s.audiences(requested)
		if err != nil {
			s.count("tokenreview", "wrong_audience")
			review.Status.Error = err.Error()
			break
		}
		s.count("tokenreview", "allowed")
		if s.Activity != nil {
			s.Activity.Allowed(id)
		}
		groups := make([]string, 0, 2+2*len(id.Scopes))
		groups = append(groups, protocol.GroupAuthenticated, protocol.TenantGroup(id.Tenant))
		for _, scope := range id.Scopes {
			groups = append(groups, protocol.ScopeGroup(scope), protocol.TenantScopeGroup(id.Tenant, scope))
		}
		review.Status = authnv1.TokenReviewStatus{
			Authenticated: true,
			User: authnv1.UserInfo{
				Username: protocol.Username(id.Tenant, id.KeyName),
				UID:      string(id.KeyUID),
				Groups:   groups,
				Extra:    map[string]authnv1.ExtraValue{protocol.ExtraKeyHint: {id.Hint}},
			},
			Audiences: audiences,
		}
	}
	writeReview(w, review)
}

// audiences answers a review that asked for the requested audiences, as
// authentication.k8s.io/v1 defines it: the requested audiences the key is
// valid for, and a failure when none are. A review that asks for none asks
// for the API server's audience, which an empty answer affirms: so it
// passes only when the API server's audience is configured.
func (s *Server) audiences(requested []string) ([]string, error) {
	if len(requested) == 0 {
		if len(s.APIServerAudiences) == 0 {
			return nil, errNotAPIServerAudience
		}
		return nil, nil
	}
	valid := s.Audiences
	if len(valid) == 0 {
		valid = []string{DefaultAudience}
	}
	var ok []string
	for _, a := range requested {
		if slices.Contains(valid, a) || slices.Contains(s.APIServerAudiences, a) {
			ok = append(ok, a)
		}
	}
	if len(ok) == 0 {
		return nil, errWrongAudience
	}
	return ok, nil
}

var (
	errNotAPIServerAudience = errors.New("keys are not valid for the Kubernetes API server: the review names no audience, and the manager has no --apiserver-audiences")
	errWrongAudience        = errors.New("key is not valid for any of the requested audiences")
)

// denied counts a refused key for its tenant, when it is a known key's.
func (s *Server) denied(tenant string) {
	if s.Activity != nil && tenant != "" {
		s.Activity.Denied(tenant)
	}
}

// method answers 405 unless the request uses the endpoint's method.
func (s *Server) method(w http.ResponseWriter, r *http.Request, endpoint, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	s.count(endpoint, "bad_request")
	http.Error(w, endpoint+" takes "+method, http.StatusMethodNotAllowed)
	return false
}

func (s *Server) badRequest(w http.ResponseWriter, endpoint, reason string) {
	s.count(endpoint, "bad_request")
	http.Error(w, reason, http.StatusBadRequest)
}

func (s *Server) count(endpoint, result string) { s.Metrics.Verified(endpoint, result) }

func (s *Server) observe(endpoint string, start time.Time) {
	s.Metrics.Answered(endpoint, s.Clock.Since(start))
}

func resultOf(err error) string {
	switch {
	case errors.Is(err, verifier.ErrRevoked):
		return "revoked"
	case errors.Is(err, verifier.ErrExpired):
		return "expired"
	case errors.Is(err, verifier.ErrSuspended):
		return "suspended"
	case errors.Is(err, verifier.ErrRotated):
		return "rotated"
	case errors.Is(err, verifier.ErrUnknown):
		return "unknown"
	default:
		return "malformed"
	}
}
