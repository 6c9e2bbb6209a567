package gatewayconfig

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// The channels of Gateway API's CRDs: ExternalAuth is experimental only.
const (
	channelStandard     = "standard"
	channelExperimental = "experimental"
)

// envoyGateway validates a SecurityPolicy against the CRD Envoy Gateway
// publishes, kept in testdata: its Go types come only with the whole of
// Envoy Gateway's module, which would raise k8s.io/utils, the go
// directive and a dozen of Latchkey's other dependencies. It then checks
// that the policy asks Latchkey where it serves.
func (c *checker) envoyGateway(t *testing.T, d document) string {
	o := decodeObject(t, d)
	if o.APIVersion != "gateway.envoyproxy.io/v1alpha1" || o.Kind != "SecurityPolicy" {
		t.Fatalf("no Envoy Gateway type for %s %s", o.APIVersion, o.Kind)
	}
	for _, p := range c.crd(t, "testdata/gateway.envoyproxy.io_securitypolicies.yaml", "v1alpha1").validate(d.body) {
		t.Errorf("refused by the SecurityPolicy CRD: %s", p)
	}
	// The few fields checked, read after the schema has vouched for the
	// whole.
	var spec struct {
		ExtAuth struct {
			GRPC *struct {
				BackendRefs []backendRef `json:"backendRefs"`
			} `json:"grpc"`
			HTTP *struct {
				BackendRefs      []backendRef `json:"backendRefs"`
				Path             string       `json:"path"`
				HeadersToBackend []string     `json:"headersToBackend"`
			} `json:"http"`
			HeadersToExtAuth  []string `json:"headersToExtAuth"`
			ContextExtensions []struct {
				Name  string `json:"name"`
				Value string `json:"value"`
			} `json:"contextExtensions"`
		} `json:"extAuth"`
	}
	if err := json.Unmarshal(o.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	a := spec.ExtAuth
	switch {
	case a.GRPC != nil:
		c.backends(t, o.Metadata.Namespace, "gateway.envoyproxy.io/SecurityPolicy", a.GRPC.BackendRefs, portExtAuthz)
		if len(a.HeadersToExtAuth) > 0 {
			if m := missing(a.HeadersToExtAuth, keyHeaders); m != nil {
				t.Errorf("headersToExtAuth lacks %v", m)
			}
		}
		pinned := false
		for _, e := range a.ContextExtensions {
			pinned = pinned || e.Name == protocol.ContextExtensionTenantRequired && e.Value != ""
		}
		if !pinned {
			t.Errorf("no contextExtensions %s", protocol.ContextExtensionTenantRequired)
		}
	case a.HTTP != nil:
		c.backends(t, o.Metadata.Namespace, "gateway.envoyproxy.io/SecurityPolicy", a.HTTP.BackendRefs, portVerification)
		if a.HTTP.Path != protocol.PathAuthorize {
			t.Errorf("path %q, want %q", a.HTTP.Path, protocol.PathAuthorize)
		}
		if m := missing(a.HeadersToExtAuth, keyHeaders); m != nil {
			t.Errorf("headersToExtAuth lacks %v", m)
		}
		if m := missing(a.HTTP.HeadersToBackend, identityHeaders); m != nil {
			t.Errorf("headersToBackend lacks %v", m)
		}
	default:
		t.Error("extAuth has neither grpc nor http")
	}
	return "Envoy Gateway " + o.Kind
}

// backendRef is a reference to a Service, as both projects spell it.
type backendRef struct {
	Name      string  `json:"name"`
	Namespace *string `json:"namespace"`
	Port      *int32  `json:"port"`
}

func (r backendRef) String() string {
	ns, port := "(none)", int32(0)
	if r.Namespace != nil {
		ns = *r.Namespace
	}
	if r.Port != nil {
		port = *r.Port
	}
	return fmt.Sprintf("%s in %s on port %d", r.Name, ns, port)
}

// backends checks that refs name Latchkey's Service on the named port,
// and notes that referrer, in namespace, needs a ReferenceGrant for it.
func (c *checker) backends(t *testing.T, namespace, referrer string, refs []backendRef, port string) {
	if len(refs) == 0 {
		t.Error("no backendRefs")
	}
	for _, r := range refs {
		if r.Name != serviceName || r.Namespace == nil || *r.Namespace != serviceNamespace || r.Port == nil || *r.Port != c.ports[port] {
			t.Errorf("backend %s, want %s in %s on port %d", r, serviceName, serviceNamespace, c.ports[port])
		}
	}
	if namespace != serviceNamespace {
		c.referrers = append(c.referrers, referrer+"/"+namespace)
	}
}

// gatewayAPI decodes a Gateway API object strictly into its Go type,
// validates it against the CRD of its channel, and checks it.
func (c *checker) gatewayAPI(t *testing.T, d document) string {
	o := decodeObject(t, d)
	if o.APIVersion != gatewayv1.GroupVersion.String() {
		t.Fatalf("no Gateway API type for %s %s", o.APIVersion, o.Kind)
	}
	strict := func(into any) {
		if err := yaml.UnmarshalStrict(d.body, into); err != nil {
			t.Fatalf("not a %T: %v", into, err)
		}
	}
	channel, plural := channelStandard, strings.ToLower(o.Kind)+"s"
	switch o.Kind {
	case "HTTPRoute":
		channel = channelExperimental
		if len(c.gatewayAPICRD(t, channelStandard, plural).validate(d.body)) == 0 {
			t.Error("the standard channel's HTTPRoute takes it: then ExternalAuth is no longer experimental only, as README says")
		}
	case "BackendTLSPolicy":
		plural = "backendtlspolicies"
	}
	for _, p := range c.gatewayAPICRD(t, channel, plural).validate(d.body) {
		t.Errorf("refused by the %s channel's %s CRD: %s", channel, o.Kind, p)
	}
	switch o.Kind {
	case "HTTPRoute":
		var r gatewayv1.HTTPRoute
		strict(&r)
		c.httpRoute(t, &r)
	case "ReferenceGrant":
		var g gatewayv1.ReferenceGrant
		strict(&g)
		c.referenceGrant(t, &g)
	case "BackendTLSPolicy":
		var p gatewayv1.BackendTLSPolicy
		strict(&p)
		c.backendTLSPolicy(t, &p)
	default:
		t.Fatalf("no Gateway API type for %s", o.Kind)
	}
	return "Gateway API " + o.Kind
}

// backendTLSPolicy checks that the policy verifies Latchkey's name with
// its CA on Latchkey's Service.
func (c *checker) backendTLSPolicy(t *testing.T, p *gatewayv1.BackendTLSPolicy) {
	if p.Spec.Validation.Hostname != serviceHost || len(p.Spec.Validation.CACertificateRefs) == 0 {
		t.Errorf("validation: want hostname %s and Latchkey's CA", serviceHost)
	}
	for _, r := range p.Spec.TargetRefs {
		if r.Kind != "Service" || r.Name != serviceName || p.Namespace != serviceNamespace {
			t.Errorf("targets %s %s/%s, want Service %s/%s", r.Kind, p.Namespace, r.Name, serviceNamespace, serviceName)
		}
	}
}

// httpRoute checks each ExternalAuth filter: gRPC to the ext-authz port
// with the key headers sent; HTTP to /authorize with them sent, the
// identity headers passed upstream and the key removed.
func (c *checker) httpRoute(t *testing.T, r *gatewayv1.HTTPRoute) {
	filters := 0
	for _, rule := range r.Spec.Rules {
		var removed []string
		for _, f := range rule.Filters {
			if f.RequestHeaderModifier != nil {
				removed = append(removed, f.RequestHeaderModifier.Remove...)
			}
		}
		for _, f := range rule.Filters {
			a := f.ExternalAuth
			if f.Type != gatewayv1.HTTPRouteFilterExternalAuth || a == nil {
				continue
			}
			filters++
			ref := backendRef{Name: string(a.BackendRef.Name), Namespace: (*string)(a.BackendRef.Namespace), Port: a.BackendRef.Port}
			switch a.ExternalAuthProtocol {
			case gatewayv1.HTTPRouteExternalAuthGRPCProtocol:
				c.backends(t, r.Namespace, "gateway.networking.k8s.io/HTTPRoute", []backendRef{ref}, portExtAuthz)
				if g := a.GRPCAuthConfig; g != nil && len(g.AllowedRequestHeaders) > 0 {
					if m := missing(g.AllowedRequestHeaders, keyHeaders); m != nil {
						t.Errorf("grpc.allowedHeaders lacks %v", m)
					}
				}
			case gatewayv1.HTTPRouteExternalAuthHTTPProtocol:
				c.backends(t, r.Namespace, "gateway.networking.k8s.io/HTTPRoute", []backendRef{ref}, portVerification)
				h := a.HTTPAuthConfig
				if h == nil {
					t.Error("protocol HTTP without http")
					continue
				}
				if h.Path != protocol.PathAuthorize {
					t.Errorf("http.path %q, want %q", h.Path, protocol.PathAuthorize)
				}
				if m := missing(h.AllowedRequestHeaders, keyHeaders); m != nil {
					t.Errorf("http.allowedHeaders lacks %v", m)
				}
				if m := missing(h.AllowedResponseHeaders, identityHeaders); m != nil {
					t.Errorf("http.allowedResponseHeaders lacks %v", m)
				}
				if m := missing(removed, keyHeaders); m != nil {
					t.Errorf("the rule passes %v upstream: no RequestHeaderModifier removes them", m)
				}
			}
		}
	}
	if filters == 0 {
		t.Error("no ExternalAuth filter")
	}
}

// referenceGrant notes whom the grant lets name Latchkey's Service.
func (c *checker) referenceGrant(t *testing.T, g *gatewayv1.ReferenceGrant) {
	if g.Namespace != serviceNamespace {
		t.Errorf("namespace %s: a grant for Latchkey's Service lives in %s", g.Namespace, serviceNamespace)
	}
	toService := false
	for _, to := range g.Spec.To {
		toService = toService || to.Group == "" && to.Kind == "Service" && (to.Name == nil || *to.Name == serviceName)
	}
	if !toService {
		t.Errorf("grants nothing of Service %s", serviceName)
	}
	if c.granted == nil {
		c.granted = map[string]bool{}
	}
	for _, f := range g.Spec.From {
		c.granted[string(f.Group)+"/"+string(f.Kind)+"/"+string(f.Namespace)] = true
	}
}
