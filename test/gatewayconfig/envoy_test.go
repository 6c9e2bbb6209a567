package gatewayconfig

import (
	"slices"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/pkg/protocol"

	// The types README's typed_configs name, so that protojson resolves
	// their Anys; the rest are imported above for the checks.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// validator is what protoc-gen-validate generates: Envoy's own rules for
// a message (required fields, ranges, patterns).
type validator interface{ ValidateAll() error }

// envoy decodes a bootstrap through protojson (unknown fields and
// unresolvable typed_configs fail), checks it against Envoy's validation
// rules, typed_configs included, and checks that its ext_authz filters ask
// Latchkey where it serves.
func (c *checker) envoy(t *testing.T, d document) string {
	js, err := yaml.YAMLToJSON(d.body)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v", err)
	}
	msgs, roots := messages(t, &b)
	for _, m := range roots {
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%T: %v", m, err)
			}
		}
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, cl := range b.GetStaticResources().GetClusters() {
		clusters[cl.GetName()] = cl
	}
	filters := 0
	for _, m := range msgs {
		if f, ok := m.(*extauthzv3.ExtAuthz); ok {
			filters++
			if f.GetFailureModeAllow() {
				t.Error("ext_authz fails open: a request passes when Latchkey cannot answer")
			}
			if g := f.GetGrpcService(); g != nil {
				c.envoyGRPC(t, g.GetEnvoyGrpc().GetClusterName(), clusters, msgs)
			} else {
				c.envoyHTTP(t, f, clusters, msgs)
			}
		}
	}
	if filters != 1 {
		t.Errorf("%d ext_authz filters, want 1", filters)
	}
	return "Envoy Bootstrap"
}

// envoyGRPC checks a gRPC ext_authz: HTTP/2 over TLS to the ext-authz
// port, and a route pinned to a tenant.
func (c *checker) envoyGRPC(t *testing.T, cluster string, clusters map[string]*clusterv3.Cluster, msgs []proto.Message) {
	cl := c.envoyCluster(t, cluster, clusters, portExtAuthz)
	var h2 bool
	all, _ := messages(t, cl)
	for _, m := range all {
		if o, ok := m.(*httpv3.HttpProtocolOptions); ok {
			h2 = o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
		}
		if tc, ok := m.(*tlsv3.UpstreamTlsContext); ok && !slices.Contains(tc.GetCommonTlsContext().GetAlpnProtocols(), "h2") {
			t.Errorf("cluster %s: TLS without ALPN h2, which gRPC requires", cluster)
		}
	}
	if !h2 {
		t.Errorf("cluster %s: not HTTP/2, which gRPC needs", cluster)
	}
	pinned := false
	for _, m := range msgs {
		if p, ok := m.(*extauthzv3.ExtAuthzPerRoute); ok && p.GetCheckSettings().GetContextExtensions()[protocol.ContextExtensionTenantRequired] != "" {
			pinned = true
		}
	}
	if !pinned {
		t.Errorf("no route sets context_extensions %s", protocol.ContextExtensionTenantRequired)
	}
}

// envoyHTTP checks an HTTP ext_authz: /authorize over TLS on the
// verification port, the key headers sent, the identity headers passed
// upstream and the key headers removed by the routes.
func (c *checker) envoyHTTP(t *testing.T, f *extauthzv3.ExtAuthz, clusters map[string]*clusterv3.Cluster, msgs []proto.Message) {
	h := f.GetHttpService()
	if h == nil {
		t.Fatal("ext_authz has neither grpc_service nor http_service")
	}
	if h.GetPathPrefix() != protocol.PathAuthorize {
		t.Errorf("path_prefix %q, want %q", h.GetPathPrefix(), protocol.PathAuthorize)
	}
	c.envoyCluster(t, h.GetServerUri().GetCluster(), clusters, portVerification)
	if m := missing(exact(f.GetAllowedHeaders().GetPatterns()), append(keyHeaders, "x-forwarded-for")); m != nil {
		t.Errorf("allowed_headers lacks %v", m)
	}
	if m := missing(exact(h.GetAuthorizationResponse().GetAllowedUpstreamHeaders().GetPatterns()), identityHeaders); m != nil {
		t.Errorf("allowed_upstream_headers lacks %v", m)
	}
	for _, m := range msgs {
		vh, ok := m.(*routev3.VirtualHost)
		if !ok {
			continue
		}
		for _, r := range vh.GetRoutes() {
			if m := missing(append(vh.GetRequestHeadersToRemove(), r.GetRequestHeadersToRemove()...), keyHeaders); m != nil {
				t.Errorf("virtual host %s passes %v upstream", vh.GetName(), m)
			}
		}
	}
}

// envoyCluster is the named cluster, checked to reach Latchkey's Service
// on the named port over TLS that verifies Latchkey's name.
func (c *checker) envoyCluster(t *testing.T, name string, clusters map[string]*clusterv3.Cluster, port string) *clusterv3.Cluster {
	cl := clusters[name]
	if cl == nil {
		t.Fatalf("no cluster %q", name)
	}
	n := 0
	for _, e := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			n++
			a := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if a.GetAddress() != serviceHost || int32(a.GetPortValue()) != c.ports[port] {
				t.Errorf("cluster %s: endpoint %s:%d, want %s:%d", name, a.GetAddress(), a.GetPortValue(), serviceHost, c.ports[port])
			}
		}
	}
	if n == 0 {
		t.Errorf("cluster %s has no endpoints", name)
	}
	var tc tlsv3.UpstreamTlsContext
	if err := cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tc); err != nil {
		t.Fatalf("cluster %s: no upstream TLS: %v", name, err)
	}
	v := tc.GetCommonTlsContext().GetValidationContext()
	if tc.GetSni() != serviceHost || v.GetTrustedCa() == nil || len(v.GetMatchTypedSubjectAltNames()) == 0 {
		t.Errorf("cluster %s: TLS must send SNI %s and verify the certificate and its name against Latchkey's CA", name, serviceHost)
	}
	return cl
}

func exact(ms []*matcherv3.StringMatcher) []string {
	var s []string
	for _, m := range ms {
		if m.GetExact() != "" {
			s = append(s, m.GetExact())
		}
	}
	return s
}

// messages are m and every message in it, typed_configs unpacked (which
// protojson has resolved, so unpacking cannot fail but for a bug here);
// roots are m and the typed_configs' messages, whose validation covers
// all the others.
func messages(t *testing.T, m proto.Message) (all, roots []proto.Message) {
	t.Helper()
	var walk func(protoreflect.Message)
	walk = func(r protoreflect.Message) {
		all = append(all, r.Interface())
		if a, ok := r.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Fatalf("typed_config %s: %v", a.GetTypeUrl(), err)
			}
			roots = append(roots, inner)
			walk(inner.ProtoReflect())
			return
		}
		r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	roots = append(roots, m)
	walk(m.ProtoReflect())
	return all, roots
}
