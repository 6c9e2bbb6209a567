package extauthz_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// TestCheckAgainstTheOperator calls the running operator's ext_authz over
// TLS as Envoy would, with go-control-plane's generated client, then with
// grpcurl: a client nobody here wrote.
func TestCheckAgainstTheOperator(t *testing.T) {
	ctx := context.Background()
	logs := &testenv.Logs{}
	lk, err := inprocess.Start(ctx, inprocess.Options{Logger: zap.New(zap.WriteTo(logs), zap.UseDevMode(true), zap.Level(zapcore.Level(-10)))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lk.Stop() }()

	ns, other := lk.Namespace(t), lk.Namespace(t)
	_, active := lk.Mint(t, ns, "active", authv1alpha1.ApiKeySpec{})
	revokedKey, revoked := lk.Mint(t, ns, "revoked", authv1alpha1.ApiKeySpec{})
	soon := metav1.NewTime(time.Now().Add(3 * time.Second))
	_, expired := lk.Mint(t, ns, "expiring", authv1alpha1.ApiKeySpec{ExpiresAt: &soon})
	_, foreign := lk.Mint(t, other, "foreign", authv1alpha1.ApiKeySpec{})
	raws := []string{active, revoked, expired, foreign}
	revokedKey.Spec.Revoked = true
	if err := lk.Client.Update(ctx, revokedKey); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(soon.Time))

	conn := dial(t, lk)
	client := authv3.NewAuthorizationClient(conn)
	check := func(source string, headers, extensions map[string]string) *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(ctx, checkRequest(source, headers, extensions))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	bearer := func(raw string) map[string]string { return map[string]string{"authorization": protocol.Bearer(raw)} }
	pinned := map[string]string{protocol.ContextExtensionTenantRequired: ns}

	t.Run("health", func(t *testing.T) {
		for _, service := range []string{"", authv3.Authorization_ServiceDesc.ServiceName} {
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health of %q: %v, %v", service, resp.GetStatus(), err)
			}
		}
	})

	t.Run("answers", func(t *testing.T) {
		for _, c := range []struct {
			name       string
			headers    map[string]string
			extensions map[string]string
			code       codes.Code
			status     int
		}{
			{"a valid bearer key", bearer(active), nil, codes.OK, 200},
			{"a valid key in x-api-key", map[string]string{"x-api-key": active}, nil, codes.OK, 200},
			{"a valid key on a route pinned to its tenant", bearer(active), pinned, codes.OK, 200},
			{"no key", map[string]string{"accept": "*/*"}, nil, codes.Unauthenticated, 401},
			{"a wrong key", bearer("lk_wrong"), nil, codes.Unauthenticated, 401},
			{"a revoked key", bearer(revoked), nil, codes.Unauthenticated, 401},
			{"an expired key", map[string]string{"x-api-key": expired}, nil, codes.Unauthenticated, 401},
			{"another tenant's key on a pinned route", bearer(foreign), pinned, codes.PermissionDenied, 403},
			{"another tenant's key, pinned by header", map[string]string{"x-api-key": foreign, "x-latchkey-tenant-required": ns}, nil, codes.PermissionDenied, 403},
		} {
			resp := check("198.51.100.1", c.headers, c.extensions)
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.code || status(resp) != c.status {
				t.Errorf("%s: %v %d, want %v %d", c.name, got, status(resp), c.code, c.status)
			}
		}
	})

	t.Run("identity and the key removed", func(t *testing.T) {
		for header, headers := range map[string]map[string]string{
			"authorization": {"authorization": protocol.Bearer(active), "x-latchkey-tenant": "forged"},
			"x-api-key":     {"x-api-key": active, "x-latchkey-key": "forged/forged"},
		} {
			ok := check("198.51.100.2", headers, nil).GetOkResponse()
			got := map[string]string{}
			for _, h := range ok.GetHeaders() {
				if h.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
				}
			}
			if got["x-latchkey-tenant"] != ns || got["x-latchkey-key"] != ns+"/active" {
				t.Errorf("key in %s: headers overwritten with %v", header, got)
			}
			// The key's header, and the client's x-latchkey-scopes: the key has none.
			if !slices.Equal(ok.GetHeadersToRemove(), []string{header, "x-latchkey-scopes"}) {
				t.Errorf("key in %s: headers_to_remove %v", header, ok.GetHeadersToRemove())
			}
		}
		md := check("198.51.100.2", bearer(active), nil).GetDynamicMetadata().GetFields()
		if md[protocol.MetadataTenant].GetStringValue() != ns || md[protocol.MetadataKey].GetStringValue() != ns+"/active" {
			t.Errorf("dynamic metadata %v", md)
		}
	})

	t.Run("a flood of wrong keys", func(t *testing.T) {
		limited := 0
		for range 200 {
			resp := check("203.0.113.9", bearer("lk_wrong"), nil)
			if status(resp) == 429 {
				limited++
				if retry := header(resp, "retry-after"); retry == "" {
					t.Fatalf("a 429 without retry-after")
				}
			}
			if resp := check("198.51.100.3", bearer(active), nil); status(resp) != 200 {
				t.Fatalf("a valid caller during the flood: %d", status(resp))
			}
		}
		if limited == 0 {
			t.Errorf("200 wrong keys from one client, no 429")
		}
		if resp := check("203.0.113.9", bearer(active), nil); status(resp) != 200 {
			t.Errorf("a valid key from the flooding client: %d", status(resp))
		}
	})

	t.Run("grpcurl", func(t *testing.T) { grpcurl(t, lk, ns, active) })

	if leaks := testenv.KeyMaterial(raws, map[string]string{"logs": logs.String()}); len(leaks) > 0 {
		t.Errorf("key material in %v", leaks)
	}
}

// grpcurl checks health and calls Check with a CheckRequest as Envoy
// sends it, in JSON, over TLS against the endpoints' CA.
func grpcurl(t *testing.T, lk *inprocess.Latchkey, tenant, raw string) {
	out, err := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "hack", "grpcurl.sh")).Output()
	if err != nil {
		t.Fatalf("building grpcurl: %v", err)
	}
	bin := strings.TrimSpace(string(out))
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, lk.WebhookCA, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-cacert", ca}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %v: %v\n%s", args[len(args)-1], err, strings.ReplaceAll(string(out), raw, "(the key)"))
		}
		if strings.Contains(string(out), raw) {
			t.Fatalf("grpcurl printed the key")
		}
		return string(out)
	}
	// The schema, in a protoset built from go-control-plane's and grpc's own
	// descriptors: the listener serves no reflection.
	protoset := filepath.Join(t.TempDir(), "auth.protoset")
	if err := os.WriteFile(protoset, descriptorSet(t, authv3.File_envoy_service_auth_v3_external_auth_proto, healthpb.File_grpc_health_v1_health_proto), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := lk.ExtAuthzAddress()
	if out := run("", "-protoset", protoset, addr, "grpc.health.v1.Health/Check"); !strings.Contains(out, `"SERVING"`) {
		t.Errorf("health:\n%s", out)
	}
	// Envoy's request, as JSON.
	req, err := json.Marshal(map[string]any{"attributes": map[string]any{
		"source": map[string]any{"address": map[string]any{"socketAddress": map[string]any{"address": "198.51.100.4", "portValue": 51000}}},
		"request": map[string]any{"http": map[string]any{
			"method": "GET", "path": "/api/things", "host": "api.example", "protocol": "HTTP/1.1",
			"headers": map[string]string{":authority": "api.example", "x-api-key": raw},
		}},
		"contextExtensions": map[string]string{protocol.ContextExtensionTenantRequired: tenant},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out = []byte(run(string(req), "-protoset", protoset, "-d", "@", addr, "envoy.service.auth.v3.Authorization/Check"))
	var resp struct {
		Status     struct{ Code int }
		OkResponse struct {
			Headers []struct {
				Header       struct{ Key, Value string }
				AppendAction string
			}
			HeadersToRemove []string
		}
		DynamicMetadata map[string]string
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("grpcurl's answer: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, h := range resp.OkResponse.Headers {
		got[h.Header.Key] = h.Header.Value + " " + h.AppendAction
	}
	if resp.Status.Code != 0 || got["x-latchkey-tenant"] != tenant+" OVERWRITE_IF_EXISTS_OR_ADD" ||
		!slices.Equal(resp.OkResponse.HeadersToRemove, []string{"x-api-key", "x-latchkey-scopes"}) || resp.DynamicMetadata[protocol.MetadataTenant] != tenant {
		t.Errorf("grpcurl's Check:\n%s", out)
	}
	if out := run(strings.Replace(string(req), raw, "lk_wrong", 1), "-protoset", protoset, "-d", "@", addr, "envoy.service.auth.v3.Authorization/Check"); !strings.Contains(out, `"code": "Unauthorized"`) {
		t.Errorf("grpcurl's Check with a wrong key:\n%s", out)
	}
}

// descriptorSet is a serialized FileDescriptorSet of files and every file
// they import, dependencies first, as grpcurl -protoset reads it.
func descriptorSet(t *testing.T, files ...protoreflect.FileDescriptor) []byte {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		for i := range f.Imports().Len() {
			add(f.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	for _, f := range files {
		add(f)
	}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dial(t *testing.T, lk *inprocess.Latchkey) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(lk.WebhookCA)
	conn, err := grpc.NewClient(lk.ExtAuthzAddress(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func checkRequest(source string, headers, extensions map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: source, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 51000}},
		}}},
		Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/api/things", Headers: headers}},
		ContextExtensions: extensions,
	}}
}

func status(r *authv3.CheckResponse) int {
	if r.GetOkResponse() != nil {
		return 200
	}
	return int(r.GetDeniedResponse().GetStatus().GetCode())
}

func header(r *authv3.CheckResponse, name string) string {
	for _, h := range r.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}
