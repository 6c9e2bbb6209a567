package gatewayconfig

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// serviceFQDN is how Istio names Latchkey's Service: by its full name in
// the cluster's domain.
const serviceFQDN = serviceHost + ".cluster.local"

// object is a Kubernetes object whose spec is decoded apart: strictly,
// so that a misspelt top-level or metadata field fails too.
type object struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            json.RawMessage   `json:"spec"`
}

func decodeObject(t *testing.T, d document) object {
	t.Helper()
	var o object
	if err := yaml.UnmarshalStrict(d.body, &o); err != nil {
		t.Fatalf("not a Kubernetes object: %v", err)
	}
	if o.Metadata.Name == "" || o.Metadata.Namespace == "" {
		t.Errorf("%s has no name or namespace", o.Kind)
	}
	return o
}

// istio decodes a meshConfig (istiod's Helm values) or an Istio object,
// its spec through protojson into istio.io/api's type (unknown fields
// fail), and checks that it asks Latchkey where it serves.
func (c *checker) istio(t *testing.T, d document) string {
	var top map[string]json.RawMessage
	if err := yaml.Unmarshal(d.body, &top); err != nil {
		t.Fatal(err)
	}
	if mc, ok := top["meshConfig"]; ok {
		if len(top) != 1 {
			t.Errorf("Helm values beside meshConfig: %d keys", len(top))
		}
		var m meshv1alpha1.MeshConfig
		unmarshalSpec(t, mc, &m)
		c.istioMesh(t, &m)
		return "Istio MeshConfig"
	}
	o := decodeObject(t, d)
	switch o.APIVersion + "/" + o.Kind {
	case "security.istio.io/v1/AuthorizationPolicy":
		var p securityv1beta1.AuthorizationPolicy
		unmarshalSpec(t, o.Spec, &p)
		if p.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM {
			t.Errorf("action %s, want CUSTOM", p.GetAction())
		}
		c.policyProvider = append(c.policyProvider, p.GetProvider().GetName())
	case "networking.istio.io/v1/DestinationRule":
		var r networkingv1alpha3.DestinationRule
		unmarshalSpec(t, o.Spec, &r)
		c.istioTLS(t, &r)
	case "networking.istio.io/v1/VirtualService":
		var s networkingv1alpha3.VirtualService
		unmarshalSpec(t, o.Spec, &s)
		for _, h := range s.GetHttp() {
			if m := missing(h.GetHeaders().GetRequest().GetRemove(), keyHeaders); m != nil {
				t.Errorf("route %q passes %v upstream", h.GetName(), m)
			}
		}
	default:
		t.Fatalf("no Istio type for %s %s", o.APIVersion, o.Kind)
	}
	return "Istio " + o.Kind
}

// istioMesh checks the extension providers: gRPC to the ext-authz port,
// HTTP to /authorize on the verification port with the headers Latchkey
// needs listed.
func (c *checker) istioMesh(t *testing.T, m *meshv1alpha1.MeshConfig) {
	c.meshProviders = map[string]bool{}
	var grpc, http bool
	for _, p := range m.GetExtensionProviders() {
		c.meshProviders[p.GetName()] = true
		if g := p.GetEnvoyExtAuthzGrpc(); g != nil {
			grpc = true
			c.istioService(t, p.GetName(), g.GetService(), g.GetPort(), portExtAuthz)
		}
		if h := p.GetEnvoyExtAuthzHttp(); h != nil {
			http = true
			c.istioService(t, p.GetName(), h.GetService(), h.GetPort(), portVerification)
			if h.GetPathPrefix() != protocol.PathAuthorize {
				t.Errorf("provider %s: pathPrefix %q, want %q", p.GetName(), h.GetPathPrefix(), protocol.PathAuthorize)
			}
			if m := missing(h.GetIncludeRequestHeadersInCheck(), keyHeaders); m != nil {
				t.Errorf("provider %s: includeRequestHeadersInCheck lacks %v", p.GetName(), m)
			}
			if m := missing(h.GetHeadersToUpstreamOnAllow(), identityHeaders); m != nil {
				t.Errorf("provider %s: headersToUpstreamOnAllow lacks %v", p.GetName(), m)
			}
		}
	}
	if !grpc || !http {
		t.Errorf("want an envoyExtAuthzGrpc and an envoyExtAuthzHttp provider (grpc %t, http %t)", grpc, http)
	}
}

func (c *checker) istioService(t *testing.T, provider, service string, port uint32, portName string) {
	if service != serviceFQDN || int32(port) != c.ports[portName] {
		t.Errorf("provider %s: %s:%d, want %s:%d", provider, service, port, serviceFQDN, c.ports[portName])
	}
}

// istioTLS checks that the DestinationRule originates TLS, verified with
// Latchkey's CA, to both of Latchkey's ports.
func (c *checker) istioTLS(t *testing.T, r *networkingv1alpha3.DestinationRule) {
	if r.GetHost() != serviceFQDN {
		t.Errorf("host %q, want %q", r.GetHost(), serviceFQDN)
	}
	tlsPorts := map[int32]bool{}
	for _, p := range r.GetTrafficPolicy().GetPortLevelSettings() {
		tls := p.GetTls()
		if tls.GetMode() != networkingv1alpha3.ClientTLSSettings_SIMPLE || tls.GetSni() != serviceHost || tls.GetCaCertCredentialName() == "" {
			t.Errorf("port %d: want SIMPLE TLS with SNI %s, verified with a CA", p.GetPort().GetNumber(), serviceHost)
		}
		tlsPorts[int32(p.GetPort().GetNumber())] = true
	}
	for _, name := range []string{portExtAuthz, portVerification} {
		if !tlsPorts[c.ports[name]] {
			t.Errorf("no TLS to port %s (%d)", name, c.ports[name])
		}
	}
}

// unmarshalSpec decodes YAML-turned-JSON into an Istio proto, strictly.
func unmarshalSpec(t *testing.T, spec json.RawMessage, m proto.Message) {
	t.Helper()
	if len(strings.TrimSpace(string(spec))) == 0 {
		t.Fatalf("no spec for %T", m)
	}
	if err := protojson.Unmarshal(spec, m); err != nil {
		t.Fatalf("not a %T: %v", m, err)
	}
}
