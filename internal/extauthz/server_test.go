package extauthz

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// fixture is a Server over a verifier holding keys of tenant-a (active,
// revoked, expired) and tenant-b (other).
type fixture struct {
	e   *endpoints.Server
	raw map[string]string
}

func newFixture(t *testing.T) (*Server, *fixture) {
	t.Helper()
	return newFixtureReading(t, Options{}, endpoints.KeyPlaces{})
}

// newFixtureReading is newFixture with keys read from places.
func newFixtureReading(t *testing.T, o Options, places endpoints.KeyPlaces) (*Server, *fixture) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	v, raws := verifiertest.Named(t, clk, "active", "revoked", "expired", "other")
	f := &fixture{raw: raws}
	f.e = &endpoints.Server{
		Keys: places, Verifier: v, Clock: clk, Metrics: metrics.New(prometheus.NewRegistry()),
		Limiter: endpoints.NewFailureLimiter(1, 5, nil),
	}
	return New(f.e, o), f
}

// request is a CheckRequest as Envoy sends it, from client.
func request(client string, headers map[string]string, extensions map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: client, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}},
		}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/api/things", Headers: headers,
		}},
		ContextExtensions: extensions,
	}}
}

// answer is what a response tells Envoy, flattened for comparison.
type answer struct {
	code     codes.Code
	status   int
	headers  map[string]string
	remove   []string
	metadata map[string]string
}

func flatten(r *authv3.CheckResponse) answer {
	a := answer{code: codes.Code(r.GetStatus().GetCode()), headers: map[string]string{}, metadata: map[string]string{}}
	var hs []*corev3.HeaderValueOption
	if ok := r.GetOkResponse(); ok != nil {
		a.status = 200
		hs, a.remove = ok.GetHeaders(), ok.GetHeadersToRemove()
	} else {
		a.status = int(r.GetDeniedResponse().GetStatus().GetCode())
		hs = r.GetDeniedResponse().GetHeaders()
	}
	for _, h := range hs {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			a.headers[h.GetHeader().GetKey()] = "(appended) " + h.GetHeader().GetValue()
			continue
		}
		a.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	for k, v := range r.GetDynamicMetadata().GetFields() {
		a.metadata[k] = v.GetStringValue()
	}
	return a
}

func TestCheckAnswers(t *testing.T) {
	s, f := newFixture(t)
	bearer := func(name string) string { return protocol.Bearer(f.raw[name]) }
	pin := map[string]string{protocol.ContextExtensionTenantRequired: "tenant-a"}
	for _, c := range []struct {
		name       string
		headers    map[string]string
		extensions map[string]string
		code       codes.Code
		status     int
		remove     []string
	}{
		{"a bearer key", map[string]string{"authorization": bearer("active")}, nil, codes.OK, 200, []string{"authorization"}},
		{"a key in x-api-key", map[string]string{"x-api-key": f.raw["active"]}, nil, codes.OK, 200, []string{"x-api-key"}},
		{"the same key in both", map[string]string{"authorization": bearer("active"), "x-api-key": f.raw["active"]}, nil,
			codes.OK, 200, []string{"authorization", "x-api-key"}},
		{"another scheme in authorization, the key in x-api-key", map[string]string{"authorization": "Basic dXNlcjpwdw==", "x-api-key": f.raw["active"]},
			nil, codes.OK, 200, []string{"x-api-key"}},
		{"a key of the route's pinned tenant", map[string]string{"authorization": bearer("active")}, pin, codes.OK, 200, []string{"authorization"}},
		{"a key of the header's pinned tenant", map[string]string{"authorization": bearer("active"), "x-latchkey-tenant-required": "tenant-a"},
			nil, codes.OK, 200, []string{"authorization"}},
		{"another tenant's key on a pinned route", map[string]string{"authorization": bearer("other")}, pin, codes.PermissionDenied, 403, nil},
		{"another tenant's key, pinned by header", map[string]string{"x-api-key": f.raw["other"], "x-latchkey-tenant-required": "tenant-a"},
			nil, codes.PermissionDenied, 403, nil},
		{"no key", map[string]string{"accept": "*/*"}, nil, codes.Unauthenticated, 401, nil},
		{"an empty bearer", map[string]string{"authorization": "Bearer "}, nil, codes.Unauthenticated, 401, nil},
		{"a wrong key", map[string]string{"authorization": protocol.Bearer("lk_wrong")}, nil, codes.Unauthenticated, 401, nil},
		{"a revoked key", map[string]string{"authorization": bearer("revoked")}, nil, codes.Unauthenticated, 401, nil},
		{"an expired key", map[string]string{"x-api-key": f.raw["expired"]}, nil, codes.Unauthenticated, 401, nil},
		{"two authorization headers, as Envoy joins them", map[string]string{"authorization": bearer("active") + "," + bearer("active")},
			nil, codes.Unauthenticated, 401, nil},
		{"two different keys", map[string]string{"authorization": bearer("active"), "x-api-key": f.raw["other"]}, nil, codes.InvalidArgument, 400, nil},
		{"a key with the route's scopes", map[string]string{"authorization": bearer("active")},
			map[string]string{protocol.ContextExtensionScopesRequired: "read,write"}, codes.OK, 200, []string{"authorization"}},
		{"a key that lacks the route's scope", map[string]string{"authorization": bearer("active")},
			map[string]string{protocol.ContextExtensionScopesRequired: "admin"}, codes.PermissionDenied, 403, nil},
		{"a key that lacks the header's scope", map[string]string{"authorization": bearer("active"), "x-latchkey-scope-required": "read,admin"},
			nil, codes.PermissionDenied, 403, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := s.Check(context.Background(), request(fmt.Sprintf("192.0.2.%d", len(c.name)), c.headers, c.extensions))
			if err != nil {
				t.Fatal(err)
			}
			a := flatten(resp)
			if a.code != c.code || a.status != c.status || !slices.Equal(a.remove, c.remove) {
				t.Fatalf("code %v, status %d, headers_to_remove %v; want %v, %d, %v", a.code, a.status, a.remove, c.code, c.status, c.remove)
			}
			switch a.status {
			case 200:
				if a.headers["x-latchkey-tenant"] != "tenant-a" || a.headers["x-latchkey-key"] != "tenant-a/active" {
					t.Errorf("identity headers %v", a.headers)
				}
				if a.metadata[protocol.MetadataTenant] != "tenant-a" || a.metadata[protocol.MetadataKey] != "tenant-a/active" {
					t.Errorf("dynamic metadata %v", a.metadata)
				}
			case 401:
				if !strings.HasPrefix(a.headers["www-authenticate"], `Bearer error="invalid_token"`) {
					t.Errorf("www-authenticate %q", a.headers["www-authenticate"])
				}
			}
			noKeyMaterial(t, f, resp)
		})
	}
}

// TestRawHeaders: with encode_raw_headers, Envoy sends the headers in
// header_map, values as raw bytes; the key is read from there as well, and
// a header twice is joined as Envoy joins it.
func TestRawHeaders(t *testing.T) {
	s, f := newFixture(t)
	req := request("192.0.2.1", nil, nil)
	req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "x-api-key", RawValue: []byte(f.raw["active"])}, {Key: "accept", Value: "*/*"},
	}}
	resp, _ := s.Check(context.Background(), req)
	if a := flatten(resp); a.status != 200 || len(a.remove) != 1 || a.remove[0] != "x-api-key" {
		t.Errorf("a key in header_map: status %d, headers_to_remove %v", a.status, a.remove)
	}
	req.Attributes.Request.Http.HeaderMap.Headers = append(req.Attributes.Request.Http.HeaderMap.Headers,
		&corev3.HeaderValue{Key: "X-API-Key", RawValue: []byte(f.raw["active"])})
	resp, _ = s.Check(context.Background(), req)
	if a := flatten(resp); a.status != 401 {
		t.Errorf("x-api-key twice in header_map: status %d, want 401 (not one key)", a.status)
	}
}

// TestScopesAnswered: an OK names the key's scopes in a header that
// replaces the client's and in dynamic metadata; a refusal for a scope
// says insufficient_scope.
func TestScopesAnswered(t *testing.T) {
	s, f := newFixture(t)
	resp, _ := s.Check(context.Background(), request("192.0.2.1", map[string]string{"x-api-key": f.raw["active"], "x-latchkey-scopes": "admin"}, nil))
	if a := flatten(resp); a.headers["x-latchkey-scopes"] != "read,write" || a.metadata[protocol.MetadataScopes] != "read,write" {
		t.Errorf("scopes: headers %v, metadata %v", a.headers, a.metadata)
	}
	resp, _ = s.Check(context.Background(), request("192.0.2.1", map[string]string{"x-api-key": f.raw["other"], "x-latchkey-scopes": "admin"}, nil))
	if a := flatten(resp); a.headers["x-latchkey-scopes"] != "" || !slices.Contains(a.remove, "x-latchkey-scopes") {
		t.Errorf("a key without scopes: headers %v, headers_to_remove %v; want the client's x-latchkey-scopes removed", a.headers, a.remove)
	}
	resp, _ = s.Check(context.Background(), request("192.0.2.1", map[string]string{"x-api-key": f.raw["active"]},
		map[string]string{protocol.ContextExtensionScopesRequired: "admin"}))
	if a := flatten(resp); !strings.HasPrefix(a.headers["www-authenticate"], `Bearer error="insufficient_scope"`) {
		t.Errorf("a missing scope: www-authenticate %q", a.headers["www-authenticate"])
	}
}

func TestKeepCredentialAndKeyHeaders(t *testing.T) {
	places, err := endpoints.NewKeyPlaces([]string{"X-Token"}, "")
	if err != nil {
		t.Fatal(err)
	}
	s, f := newFixtureReading(t, Options{KeepCredential: true}, places)
	resp, _ := s.Check(context.Background(), request("192.0.2.1", map[string]string{"x-token": f.raw["active"]}, nil))
	if a := flatten(resp); a.status != 200 || len(a.remove) != 0 {
		t.Errorf("a kept credential: status %d, headers_to_remove %v", a.status, a.remove)
	}
	resp, _ = s.Check(context.Background(), request("192.0.2.1", map[string]string{"x-api-key": f.raw["active"]}, nil))
	if a := flatten(resp); a.status != 401 {
		t.Errorf("x-api-key when only x-token is configured: status %d", a.status)
	}
}

// TestQueryParameter: with a key query parameter configured, a key in the
// path's query authenticates and Envoy is told to remove it, and a
// different key in a header is two keys.
func TestQueryParameter(t *testing.T) {
	places, err := endpoints.NewKeyPlaces(nil, "api_key")
	if err != nil {
		t.Fatal(err)
	}
	s, f := newFixtureReading(t, Options{}, places)
	req := request("192.0.2.1", nil, nil)
	req.Attributes.Request.Http.Path = "/things?a=1&api_key=" + f.raw["active"] + "&b=2"
	resp, _ := s.Check(context.Background(), req)
	ok := resp.GetOkResponse()
	if a := flatten(resp); a.status != 200 || len(a.remove) != 0 || len(ok.GetQueryParametersToRemove()) != 1 || ok.GetQueryParametersToRemove()[0] != "api_key" {
		t.Errorf("a key in the query: status %d, headers_to_remove %v, query_parameters_to_remove %v", a.status, a.remove, ok.GetQueryParametersToRemove())
	}
	req.Attributes.Request.Http.Headers = map[string]string{"x-api-key": f.raw["other"]}
	resp, _ = s.Check(context.Background(), req)
	if a := flatten(resp); a.status != 400 {
		t.Errorf("a key in the query and another in x-api-key: status %d", a.status)
	}
	noKeyMaterial(t, f, resp)
	req.Attributes.Request.Http.Headers = map[string]string{"authorization": protocol.Bearer(f.raw["active"])}
	resp, _ = s.Check(context.Background(), req)
	if a := flatten(resp); a.status != 200 || len(a.remove) != 1 || len(resp.GetOkResponse().GetQueryParametersToRemove()) != 1 {
		t.Errorf("the same key in the query and authorization: status %d, headers_to_remove %v", a.status, a.remove)
	}
}

// TestFloodIsLimited: one client's wrong keys get 429 with retry-after,
// charged to the address Envoy names, while a valid key from the same
// client and a wrong one from another are answered as usual.
func TestFloodIsLimited(t *testing.T) {
	s, f := newFixture(t)
	wrong := map[string]string{"authorization": protocol.Bearer("lk_wrong")}
	var last answer
	for range 10 {
		resp, _ := s.Check(context.Background(), request("192.0.2.7", wrong, nil))
		last = flatten(resp)
	}
	if last.status != 429 || last.headers["retry-after"] == "" {
		t.Fatalf("a flood: status %d, headers %v", last.status, last.headers)
	}
	resp, _ := s.Check(context.Background(), request("192.0.2.7", map[string]string{"authorization": protocol.Bearer(f.raw["active"])}, nil))
	if a := flatten(resp); a.status != 200 {
		t.Errorf("a valid key from the flooding client: %d", a.status)
	}
	resp, _ = s.Check(context.Background(), request("::ffff:192.0.2.8", wrong, nil))
	if a := flatten(resp); a.status != 401 {
		t.Errorf("a wrong key from another client: %d", a.status)
	}
	if n := testutil.ToFloat64(f.e.Metrics.Verifications.WithLabelValues(Endpoint, "rate_limited")); n != 5 {
		t.Errorf("rate_limited counted %v times for ext_authz, want 5", n)
	}
	if f.e.Limiter.Held() != 0 {
		t.Errorf("refusals are held: Envoy's connection carries everyone's checks")
	}
}

// noKeyMaterial fails if the response, as JSON, shows any of the keys.
func noKeyMaterial(t *testing.T, f *fixture, resp *authv3.CheckResponse) {
	t.Helper()
	b, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range f.raw {
		if strings.Contains(string(b), raw) || strings.Contains(string(b), raw[8:len(raw)-4]) {
			t.Errorf("the response carries key material")
		}
	}
}
