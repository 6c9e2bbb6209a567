package endpoints

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/latchkey"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

type usesSeen struct {
	mu     sync.Mutex
	ids    []verifier.Identity
	denied []string // tenants
}

func (u *usesSeen) Denied(tenant string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.denied = append(u.denied, tenant)
}

func (u *usesSeen) Allowed(id verifier.Identity) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ids = append(u.ids, id)
}

func (u *usesSeen) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ids)
}

// rig is the endpoints served over a real TLS listener, with a verifier
// holding an active, a revoked and an expired key of tenant-a.
type rig struct {
	srv                      *httptest.Server
	client                   *http.Client
	active, revoked, expired string
	uses                     *usesSeen
	// bodies collects every response body, to scan for key material.
	bodies []string
}

func newRig(t *testing.T, s *Server) *rig {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	v, raws := verifiertest.Named(t, clk, "active", "revoked", "expired")
	r := &rig{uses: &usesSeen{}, active: raws["active"], revoked: raws["revoked"], expired: raws["expired"]}
	s.Verifier, s.Clock, s.Activity = v, clk, r.uses
	s.Metrics = metrics.New(prometheus.NewRegistry())
	mux := http.NewServeMux()
	s.Register(mux.Handle)
	r.srv = httptest.NewTLSServer(mux)
	r.client = r.srv.Client()
	t.Cleanup(r.srv.Close)
	t.Cleanup(func() {
		for _, b := range r.bodies {
			for _, raw := range []string{r.active, r.revoked, r.expired} {
				if strings.Contains(b, raw) || strings.Contains(b, raw[8:len(raw)-4]) {
					t.Errorf("a response body carries key material")
				}
			}
		}
	})
	return r
}

func (r *rig) do(t *testing.T, method, path string, body io.Reader, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	r.bodies = append(r.bodies, string(b))
	return resp, string(b)
}

func reviewBody(token string, audiences ...string) string {
	b, _ := json.Marshal(authnv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	})
	return string(b)
}

func TestTokenReview(t *testing.T) {
	r := newRig(t, &Server{Audiences: []string{"latchkey"}, APIServerAudiences: []string{"https://kubernetes.default.svc"}})
	tests := []struct {
		name          string
		token         func() string
		audiences     []string
		authenticated bool
		wantError     string
		wantAudiences []string
	}{
		{"a valid key authenticates as its tenant's key", func() string { return r.active }, nil, true, "", nil},
		{"a revoked key is refused with a reason", func() string { return r.revoked }, nil, false, "key revoked", nil},
		{"an expired key is refused with a reason", func() string { return r.expired }, nil, false, "key expired", nil},
		{"an unknown key is refused", func() string { k, _ := keys.Generate(rand.Reader, keys.Hex); return k }, nil, false, "invalid key", nil},
		{"a key with a bad checksum is refused", func() string { return verifiertest.BadChecksum(r.active) }, nil, false, "malformed key", nil},
		{"the requested audiences the key is valid for are echoed", func() string { return r.active },
			[]string{"latchkey", "elsewhere"}, true, "", []string{"latchkey"}},
		{"a key valid for none of the requested audiences is refused", func() string { return r.active },
			[]string{"elsewhere"}, false, "not valid for any of the requested audiences", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := r.do(t, http.MethodPost, protocol.PathTokenReview, strings.NewReader(reviewBody(tt.token(), tt.audiences...)), nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var got authnv1.TokenReview
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if got.APIVersion != "authentication.k8s.io/v1" || got.Kind != "TokenReview" {
				t.Fatalf("answered as %s %s", got.APIVersion, got.Kind)
			}
			if got.Spec.Token != "" {
				t.Fatal("the token was echoed")
			}
			if got.Status.Authenticated != tt.authenticated || !strings.Contains(got.Status.Error, tt.wantError) {
				t.Fatalf("status = %+v", got.Status)
			}
			if fmt.Sprint(got.Status.Audiences) != fmt.Sprint(tt.wantAudiences) {
				t.Fatalf("audiences = %v, want %v", got.Status.Audiences, tt.wantAudiences)
			}
			if tt.authenticated {
				u := got.Status.User
				if u.Username != "latchkey:tenant-a:active" || u.UID != "key-uid-0" ||
					fmt.Sprint(u.Groups) != "[latchkey:authenticated latchkey:tenant:tenant-a latchkey:scope:read latchkey:tenant:tenant-a:scope:read latchkey:scope:write latchkey:tenant:tenant-a:scope:write]" ||
					fmt.Sprint(u.Extra[protocol.ExtraKeyHint]) != "["+keys.Hint(r.active)+"]" {
					t.Fatalf("user = %+v", u)
				}
			}
		})
	}
}

// A key is valid for its own audiences only: a review meant for another
// issuer's tokens refuses it, and a review naming no audience, which means
// the Kubernetes API server's, accepts it only where the API server's
// audience is configured.
func TestTokenReviewAudiences(t *testing.T) {
	const apiServer = "https://127.0.0.1:6443/"
	tests := []struct {
		name          string
		server        *Server
		audiences     []string
		wantError     string
		wantAudiences []string
	}{
		{"by default a key is valid for Latchkey's audience", &Server{}, []string{"vault", DefaultAudience}, "", []string{DefaultAudience}},
		{"by default a review meant for another service refuses a key", &Server{}, []string{"vault"}, "not valid for any of the requested audiences", nil},
		{"by default a review naming no audience refuses a key", &Server{}, nil, "no --apiserver-audiences", nil},
		{"a configured audience replaces the default", &Server{Audiences: []string{"payments"}}, []string{DefaultAudience}, "not valid for any of the requested audiences", nil},
		{"the API server's audience, once configured, is a key's too", &Server{APIServerAudiences: []string{apiServer}}, []string{apiServer}, "", []string{apiServer}},
		{"once it is configured, a review naming no audience passes with none, meaning the API server's", &Server{APIServerAudiences: []string{apiServer}}, nil, "", nil},
		{"the API server's audience does not open others", &Server{APIServerAudiences: []string{apiServer}}, []string{"vault"}, "not valid for any of the requested audiences", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.server)
			_, body := r.do(t, http.MethodPost, protocol.PathTokenReview, strings.NewReader(reviewBody(r.active, tt.audiences...)), nil)
			var got authnv1.TokenReview
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if got.Status.Authenticated != (tt.wantError == "") || !strings.Contains(got.Status.Error, tt.wantError) {
				t.Fatalf("status = %+v, want error %q", got.Status, tt.wantError)
			}
			if fmt.Sprint(got.Status.Audiences) != fmt.Sprint(tt.wantAudiences) {
				t.Fatalf("audiences = %v, want %v", got.Status.Audiences, tt.wantAudiences)
			}
			if !got.Status.Authenticated && got.Status.User.Username != "" {
				t.Fatalf("a refused review names a user: %+v", got.Status.User)
			}
		})
	}
}

// The Go middleware's TokenReviews ask for Latchkey's audience, so that a
// manager configured for no API server audience still accepts its keys.
func TestMiddlewareTokenReviewsAskForLatchkeysAudience(t *testing.T) {
	r := newRig(t, &Server{})
	lk, err := latchkey.New(latchkey.Config{Endpoint: r.srv.URL, HTTPClient: r.client, Verification: latchkey.TokenReview})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lk.Close(context.Background()) })
	caller, err := lk.Verify(context.Background(), r.active)
	if err != nil || caller.Tenant != "tenant-a" {
		t.Fatalf("the middleware's review of a valid key: %+v, %v", caller, err)
	}
}

func TestTokenReviewRefusesMalformedRequests(t *testing.T) {
	r := newRig(t, &Server{})
	tests := []struct {
		name, method, body string
		status             int
		reason             string
	}{
		{"a body that is not JSON is refused", http.MethodPost, "{", http.StatusBadRequest, "not a JSON TokenReview"},
		{"an empty body is refused", http.MethodPost, "", http.StatusBadRequest, "empty body"},
		{"another apiVersion is refused", http.MethodPost, strings.Replace(reviewBody("x"), "authentication.k8s.io/v1", "v1", 1), http.StatusBadRequest, "apiVersion must be"},
		{"another kind is refused", http.MethodPost, strings.Replace(reviewBody("x"), "TokenReview", "SubjectAccessReview", 1), http.StatusBadRequest, "kind must be TokenReview"},
		{"an empty token is refused", http.MethodPost, reviewBody(""), http.StatusBadRequest, "spec.token is empty"},
		{"metadata that is not an object is refused", http.MethodPost, strings.Replace(reviewBody("x"), `"spec"`, `"metadata":5,"spec"`, 1), http.StatusBadRequest, "not a JSON TokenReview"},
		{"a body over 64 KiB is refused", http.MethodPost, reviewBody(strings.Repeat("a", MaxBodyBytes)), http.StatusBadRequest, "larger than 65536 bytes"},
		{"GET is not allowed", http.MethodGet, "", http.StatusMethodNotAllowed, "takes POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := r.do(t, tt.method, protocol.PathTokenReview, strings.NewReader(tt.body), nil)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.reason) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.status, tt.reason)
			}
		})
	}
}

// The handlers index request and response headers by these names without
// canonicalising them, so they must be canonical already.
func TestHeaderNamesAreCanonical(t *testing.T) {
	for _, h := range []string{"Authorization", protocol.HeaderTenantRequired, protocol.HeaderScopeRequired,
		protocol.HeaderTenant, protocol.HeaderKey, protocol.HeaderScopes} {
		if c := http.CanonicalHeaderKey(h); c != h {
			t.Errorf("%q is not canonical (%q)", h, c)
		}
	}
}

func TestAuthorize(t *testing.T) {
	r := newRig(t, &Server{})
	bearer := func(v string) http.Header { return http.Header{"Authorization": {v}} }
	tests := []struct {
		name   string
		header func() http.Header
		status int
	}{
		{"a valid key passes with its tenant and name", func() http.Header { return bearer("Bearer " + r.active) }, http.StatusOK},
		{"the scheme is case-insensitive", func() http.Header { return bearer("bEaReR " + r.active) }, http.StatusOK},
		{"a pinned tenant that matches passes", func() http.Header {
			h := bearer("Bearer " + r.active)
			h.Set(protocol.HeaderTenantRequired, "tenant-a")
			return h
		}, http.StatusOK},
		{"a pinned tenant the key is not of is forbidden", func() http.Header {
			h := bearer("Bearer " + r.active)
			h.Set(protocol.HeaderTenantRequired, "tenant-b")
			return h
		}, http.StatusForbidden},
		{"no Authorization header is unauthorized", func() http.Header { return nil }, http.StatusUnauthorized},
		{"two spaces after the scheme is unauthorized", func() http.Header { return bearer("Bearer  " + r.active) }, http.StatusUnauthorized},
		{"another scheme is unauthorized", func() http.Header { return bearer("Basic " + r.active) }, http.StatusUnauthorized},
		{"a revoked key is unauthorized", func() http.Header { return bearer("Bearer " + r.revoked) }, http.StatusUnauthorized},
		{"an expired key is unauthorized", func() http.Header { return bearer("Bearer " + r.expired) }, http.StatusUnauthorized},
		{"two Authorization headers are a bad request", func() http.Header {
			return http.Header{"Authorization": {"Bearer " + r.active, "Bearer " + r.active}}
		}, http.StatusBadRequest},
		{"a valid key in X-API-Key passes", func() http.Header { return http.Header{"X-Api-Key": {r.active}} }, http.StatusOK},
		{"the same key in Authorization and X-API-Key passes", func() http.Header {
			return http.Header{"Authorization": {"Bearer " + r.active}, "X-Api-Key": {r.active}}
		}, http.StatusOK},
		{"two different keys are a bad request", func() http.Header {
			return http.Header{"Authorization": {"Bearer " + r.active}, "X-Api-Key": {r.revoked}}
		}, http.StatusBadRequest},
		{"two X-API-Key headers are a bad request", func() http.Header { return http.Header{"X-Api-Key": {r.active, r.active}} }, http.StatusBadRequest},
		{"a revoked key in X-API-Key is unauthorized", func() http.Header { return http.Header{"X-Api-Key": {r.revoked}} }, http.StatusUnauthorized},
		{"a key in the query is not read unless configured", func() http.Header { return http.Header{"X-Forwarded-Uri": {"/api?api_key=" + r.active}} }, http.StatusUnauthorized},
	}
	// Envoy's HTTP ext_authz asks for path_prefix + the original path, with
	// the original method.
	paths := []string{protocol.PathAuthorize, protocol.PathAuthorize + "/", protocol.PathAuthorize + "/api/v1/things?x=1&api_key=" + r.active}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodHead, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, method := range methods {
				path := paths[i%len(paths)]
				resp, body := r.do(t, method, path, strings.NewReader("a body nobody reads"), tt.header())
				if resp.StatusCode != tt.status {
					t.Fatalf("%s %s: status %d (%s), want %d", method, strings.ReplaceAll(path, r.active, "KEY"), resp.StatusCode, body, tt.status)
				}
				switch resp.StatusCode {
				case http.StatusOK:
					if resp.Header.Get(protocol.HeaderTenant) != "tenant-a" || resp.Header.Get(protocol.HeaderKey) != "tenant-a/active" {
						t.Fatalf("headers %v", resp.Header)
					}
				case http.StatusUnauthorized:
					if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`) {
						t.Fatalf("WWW-Authenticate = %q", resp.Header.Get("WWW-Authenticate"))
					}
				}
			}
		})
	}
	if r.uses.count() == 0 {
		t.Fatal("successful verifications were not recorded as uses")
	}
}

// TestAuthorizeScopes: a 200 names the key's scopes, replacing a client's
// header of that name; a route that requires a scope the key lacks gets
// 403 with error="insufficient_scope".
func TestAuthorizeScopes(t *testing.T) {
	r := newRig(t, &Server{})
	for _, tt := range []struct {
		required []string
		status   int
	}{
		{nil, http.StatusOK}, {[]string{"read"}, http.StatusOK}, {[]string{"write, read"}, http.StatusOK},
		{[]string{"read,admin"}, http.StatusForbidden}, {[]string{"read", "write"}, http.StatusBadRequest},
	} {
		h := http.Header{"Authorization": {"Bearer " + r.active}, protocol.HeaderScopes: {"forged"}}
		for _, v := range tt.required {
			h.Add(protocol.HeaderScopeRequired, v)
		}
		resp, body := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, h)
		if resp.StatusCode != tt.status {
			t.Fatalf("required %q: %d %s, want %d", tt.required, resp.StatusCode, body, tt.status)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			if got := resp.Header.Get(protocol.HeaderScopes); got != "read,write" {
				t.Errorf("required %q: %s %q", tt.required, protocol.HeaderScopes, got)
			}
		case http.StatusForbidden:
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer error="insufficient_scope", scope="read admin"` || !strings.Contains(body, `"admin"`) {
				t.Errorf("required %q: WWW-Authenticate %q, body %q", tt.required, got, body)
			}
		}
	}
}

// TestKeyQueryParameter: a key in the configured query parameter, of the
// request's own URL (Envoy) or of the URI a forward-auth proxy names, is
// read last, and never echoed.
func TestKeyQueryParameter(t *testing.T) {
	places, err := NewKeyPlaces(nil, "api_key")
	if err != nil {
		t.Fatal(err)
	}
	// The test's client, 127.0.0.1, is a trusted proxy: a URI it names is
	// read.
	proxy := NewFailureLimiter(100, 100, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
	r := newRig(t, &Server{Keys: places, Limiter: proxy})
	direct := newRig(t, &Server{Keys: places})
	resp, _ := direct.do(t, http.MethodGet, "/authorize", nil, http.Header{"X-Forwarded-Uri": {"/api?api_key=" + direct.active}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a URI named by a client, not a trusted proxy, was read: %d", resp.StatusCode)
	}
	tests := []struct {
		name   string
		path   func() string
		header func() http.Header
		status int
	}{
		{"in the request's own query", func() string { return "/authorize/api?x=1&api_key=" + r.active }, func() http.Header { return nil }, http.StatusOK},
		{"in X-Forwarded-Uri", func() string { return "/authorize" }, func() http.Header {
			return http.Header{"X-Forwarded-Uri": {"/api/things?api_key=" + r.active + "&x=1"}}
		}, http.StatusOK},
		{"in X-Original-URI", func() string { return "/authorize" }, func() http.Header {
			return http.Header{"X-Original-Uri": {"/api/things?api_key=" + r.active}}
		}, http.StatusOK},
		{"escaped", func() string { return "/authorize?api_key=" + strings.Replace(r.active, "_", "%5F", 1) }, func() http.Header { return nil }, http.StatusOK},
		{"revoked", func() string { return "/authorize?api_key=" + r.revoked }, func() http.Header { return nil }, http.StatusUnauthorized},
		{"another key in Authorization", func() string { return "/authorize?api_key=" + r.active }, func() http.Header {
			return http.Header{"Authorization": {"Bearer " + r.expired}}
		}, http.StatusBadRequest},
		{"two different values", func() string { return "/authorize?api_key=" + r.active + "&api_key=" + r.revoked }, func() http.Header { return nil }, http.StatusBadRequest},
		{"badly escaped", func() string { return "/authorize?api_key=%zz" + r.active }, func() http.Header { return nil }, http.StatusBadRequest},
		{"another key under the escaped name", func() string { return "/authorize?api_key=" + r.active + "&api%5Fkey=" + r.revoked },
			func() http.Header { return nil }, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := r.do(t, http.MethodGet, tt.path(), nil, tt.header())
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
		})
	}
}

func TestKeyPlacesRefuseBadNames(t *testing.T) {
	for _, tt := range []struct {
		headers []string
		query   string
	}{
		{[]string{"X-Token", ""}, ""}, {[]string{"X Token"}, ""}, {[]string{"authorization"}, ""},
		{make([]string, MaxKeyHeaders+1), ""}, {nil, "a=b"}, {nil, "a&b"},
	} {
		if _, err := NewKeyPlaces(tt.headers, tt.query); err == nil {
			t.Errorf("NewKeyPlaces(%q, %q) accepted", tt.headers, tt.query)
		}
	}
}

// TestReadingAKeyNeverAllocates: where the key is read from costs the
// request nothing, whichever place it is in.
func TestReadingAKeyNeverAllocates(t *testing.T) {
	places, err := NewKeyPlaces([]string{"X-API-Key", "X-Token"}, "api_key")
	if err != nil {
		t.Fatal(err)
	}
	raw := "lk_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG000000"
	for _, r := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/authorize", nil),
		httptest.NewRequest(http.MethodGet, "/authorize/api/things?api_key="+raw, nil),
	} {
		r.Header.Set("Authorization", "Bearer "+raw)
		r.Header.Set("X-Token", raw)
		if n := testing.AllocsPerRun(100, func() {
			if token, _, err := places.FromRequest(r, true); err != nil || token != raw {
				t.Fatal("the key was not read")
			}
		}); n != 0 {
			t.Errorf("%s: %v allocations per read", r.URL.Path, n)
		}
	}
}

// Two pinned tenants are a bad request whatever their order, where the
// first used to win: which of two a proxy passes on is not to decide.
func TestAuthorizeRefusesTwoPinnedTenants(t *testing.T) {
	r := newRig(t, &Server{})
	for _, pinned := range [][]string{{"tenant-a", "tenant-b"}, {"tenant-b", "tenant-a"}, {"tenant-a", "tenant-a"}} {
		h := http.Header{"Authorization": {"Bearer " + r.active}, protocol.HeaderTenantRequired: pinned}
		resp, body := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, h)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "more than one X-Latchkey-Tenant-Required header") {
			t.Fatalf("pinned %v: %d %q, want 400 with the reason", pinned, resp.StatusCode, body)
		}
		if resp.Header.Get(protocol.HeaderTenant) != "" || resp.Header.Get(protocol.HeaderKey) != "" {
			t.Fatalf("pinned %v: a refusal named the key: %v", pinned, resp.Header)
		}
	}
}

func TestWhoAmI(t *testing.T) {
	r := newRig(t, &Server{})
	resp, body := r.do(t, http.MethodGet, protocol.PathWhoAmI, nil, http.Header{"Authorization": {"Bearer " + r.active}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got protocol.WhoAmI
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Tenant != "tenant-a" || got.KeyName != "active" || got.KeyHint != keys.Hint(r.active) || got.CreatedAt.IsZero() {
		t.Fatalf("whoami = %+v", got)
	}
	if resp, _ := r.do(t, http.MethodGet, protocol.PathWhoAmI, nil, http.Header{"Authorization": {"Bearer " + r.revoked}}); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a revoked key got %d", resp.StatusCode)
	}
	if resp, _ := r.do(t, http.MethodPost, protocol.PathWhoAmI, nil, nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST got %d", resp.StatusCode)
	}
}

func TestFailuresAreRateLimitedButValidKeysNever(t *testing.T) {
	lim := NewFailureLimiter(1, 5, nil)
	lim.maxHold = 10 * time.Millisecond
	r := newRig(t, &Server{Limiter: lim})
	wrong := http.Header{"Authorization": {"Bearer lk_nope"}}
	var limited *http.Response
	for range 6 {
		resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong)
		if resp.StatusCode == http.StatusTooManyRequests {
			limited = resp
			break
		}
	}
	if limited == nil {
		t.Fatal("six failures in a row were never limited (burst 5)")
	}
	if limited.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.active}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a valid key from a limited address got %d", resp.StatusCode)
	}
}

// A refusal by the global budget is answered at once, on a connection kept
// open: the client refused is within its own budget, and the valid key it
// sends next on that connection is served.
func TestGlobalRefusalsAreNeitherHeldNorClosing(t *testing.T) {
	lim := NewFailureLimiter(1000, 1000, nil, WithGlobalBudget(0.001, 1))
	lim.maxHold = time.Hour // were a refusal held, the request would time out
	r := newRig(t, &Server{Limiter: lim})
	r.client.Timeout = 30 * time.Second
	wrong := http.Header{"Authorization": {"Bearer lk_nope"}}
	if resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the first wrong key: %d, want 401", resp.StatusCode)
	}
	resp, body := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, wrong)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Close || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, "from all addresses") {
		t.Fatalf("past the global budget: %d, close %v, Retry-After %q: %s", resp.StatusCode, resp.Close, resp.Header.Get("Retry-After"), body)
	}
	if lim.Held() != 0 {
		t.Fatalf("%d global refusals held", lim.Held())
	}
	if resp, _ := r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.active}}); resp.StatusCode != http.StatusOK {
		t.Fatalf("a valid key past the global budget: %d", resp.StatusCode)
	}
}

// A reviewer's address is not the key holder's: however many wrong keys it
// asks about, it gets TokenReview answers, never a 429 that kube-apiserver
// would retry, nor a held answer or a closed connection.
func TestTokenReviewFailuresAreNotChargedToTheReviewer(t *testing.T) {
	lim := NewFailureLimiter(1, 1, nil)
	r := newRig(t, &Server{Limiter: lim})
	for i := range 40 {
		resp, body := r.do(t, http.MethodPost, protocol.PathTokenReview, strings.NewReader(reviewBody("lk_nope")), nil)
		if resp.StatusCode != http.StatusOK || resp.Close || !strings.Contains(body, `"error":"malformed key"`) {
			t.Fatalf("wrong key %d: status %d, close %v: %s", i, resp.StatusCode, resp.Close, body)
		}
	}
	if lim.Held() != 0 {
		t.Fatalf("%d answers held", lim.Held())
	}
	if ok, _, _ := lim.Allow(netip.MustParseAddr("127.0.0.1"), time.Now()); !ok {
		t.Fatal("the reviewer's failure budget was spent")
	}
}
