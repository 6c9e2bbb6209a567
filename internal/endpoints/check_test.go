package endpoints

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// noActivity records nothing, so that an allocation count is Check's own.
type noActivity struct{}

func (noActivity) Allowed(verifier.Identity) {}
func (noActivity) Denied(string)             {}

func TestCheckDecides(t *testing.T) {
	s := &Server{}
	r := newRig(t, s)
	unknown, err := keys.Generate(rand.Reader, keys.Prefixed)
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("192.0.2.1")
	for _, c := range []struct {
		name    string
		token   string
		want    Want
		verdict Verdict
		err     error
		result  string
	}{
		{"a valid key", r.active, Want{}, Allowed, nil, "allowed"},
		{"a valid key of the pinned tenant", r.active, Want{Tenants: [2]string{"tenant-a", ""}}, Allowed, nil, "allowed"},
		{"a valid key of another tenant than the pinned", r.active, Want{Tenants: [2]string{"", "tenant-b"}}, Forbidden, nil, "forbidden"},
		{"a valid key with every scope required", r.active, Want{Scopes: [2]string{"read", " write ,read"}}, Allowed, nil, "allowed"},
		{"a valid key that lacks a required scope", r.active, Want{Scopes: [2]string{"read,admin"}}, InsufficientScope, nil, "insufficient_scope"},
		{"a valid key that lacks the scope of the second place", r.active, Want{Scopes: [2]string{"read", "admin"}}, InsufficientScope, nil, "insufficient_scope"},
		{"no key", "", Want{}, Unauthenticated, ErrNoKey, "malformed"},
		{"an unknown key", unknown, Want{}, Unauthenticated, verifier.ErrUnknown, "unknown"},
		{"a revoked key", r.revoked, Want{Tenants: [2]string{"tenant-a"}}, Unauthenticated, verifier.ErrRevoked, "revoked"},
		{"an expired key", r.expired, Want{}, Unauthenticated, verifier.ErrExpired, "expired"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := testutil.ToFloat64(s.Metrics.Verifications.WithLabelValues("test", c.result))
			d := s.Check("test", c.token, client, c.want)
			if d.Verdict != c.verdict || !errors.Is(d.Err, c.err) {
				t.Fatalf("verdict %d, err %v; want %d, %v", d.Verdict, d.Err, c.verdict, c.err)
			}
			if (d.Verdict == Allowed || d.Verdict == Forbidden || d.Verdict == InsufficientScope) != (d.Identity.Tenant == "tenant-a") {
				t.Errorf("identity %q for verdict %d", d.Identity.Tenant, d.Verdict)
			}
			if got := testutil.ToFloat64(s.Metrics.Verifications.WithLabelValues("test", c.result)) - before; got != 1 {
				t.Errorf("counted %v as %q, want 1", got, c.result)
			}
		})
	}
	if n := len(r.uses.denied); n != 2 {
		t.Errorf("%d refusals counted for the tenant, want 2 (revoked, expired)", n)
	}
}

// TestCheckLimitsFailuresOnly: a client's wrong keys spend its budget and
// then answer Limited with a wait; its valid key and another client's are
// untouched.
func TestCheckLimitsFailuresOnly(t *testing.T) {
	s := &Server{Limiter: NewFailureLimiter(1, 3, nil)}
	r := newRig(t, s)
	flooder, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for range 3 {
		if d := s.Check("test", "lk_wrong", flooder, Want{}); d.Verdict != Unauthenticated {
			t.Fatalf("within the budget: verdict %d", d.Verdict)
		}
	}
	d := s.Check("test", "lk_wrong", flooder, Want{})
	if d.Verdict != Limited || d.RetryAfter <= 0 {
		t.Fatalf("past the budget: verdict %d, retry after %v", d.Verdict, d.RetryAfter)
	}
	if d := s.Check("test", r.active, flooder, Want{}); d.Verdict != Allowed {
		t.Errorf("a valid key from the flooding client: verdict %d", d.Verdict)
	}
	if d := s.Check("test", "lk_wrong", other, Want{}); d.Verdict != Unauthenticated {
		t.Errorf("another client: verdict %d", d.Verdict)
	}

	global := &Server{Limiter: NewFailureLimiter(100, 100, nil, WithGlobalBudget(1, 1))}
	newRig(t, global)
	_ = global.Check("test", "", flooder, Want{})
	if d := global.Check("test", "", other, Want{}); d.Verdict != LimitedGlobal {
		t.Errorf("past the global budget: verdict %d", d.Verdict)
	}
}

// TestCheckNeverAllocates: the decision, metrics included, adds no
// garbage to the transport's, whatever the answer.
func TestCheckNeverAllocates(t *testing.T) {
	s := &Server{Limiter: NewFailureLimiter(1e9, 1e9, nil)}
	r := newRig(t, s)
	s.Activity = noActivity{}
	client := netip.MustParseAddr("192.0.2.1")
	for name, call := range map[string]func(){
		"valid":     func() { _ = s.Check("test", r.active, client, Want{}) },
		"pinned":    func() { _ = s.Check("test", r.active, client, Want{Tenants: [2]string{"tenant-a", ""}}) },
		"forbidden": func() { _ = s.Check("test", r.active, client, Want{Tenants: [2]string{"tenant-b"}}) },
		"scoped":    func() { _ = s.Check("test", r.active, client, Want{Scopes: [2]string{"read,write", "read"}}) },
		"lacking":   func() { _ = s.Check("test", r.active, client, Want{Scopes: [2]string{"admin"}}) },
		"revoked":   func() { _ = s.Check("test", r.revoked, client, Want{}) },
		"missing":   func() { _ = s.Check("test", "", client, Want{}) },
	} {
		call() // the metric's first use creates its series
		if n := testing.AllocsPerRun(200, call); n != 0 {
			t.Errorf("%s: %v allocations per check", name, n)
		}
	}
}
