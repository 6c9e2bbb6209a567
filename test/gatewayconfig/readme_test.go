package gatewayconfig

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// Where Latchkey serves, as installed: its Service, and the names of that
// Service's ports (config/webhook/service.yaml) for the HTTPS endpoints and
// for gRPC ext_authz.
const (
	serviceName      = "latchkey-webhook-service"
	serviceNamespace = "latchkey-system"
	serviceHost      = serviceName + "." + serviceNamespace + ".svc"
	portVerification = "verification"
	portExtAuthz     = "ext-authz"
)

// Headers in Envoy's lower case: what must reach Latchkey, and what
// Latchkey's answer sets for the upstream.
var (
	headerAuthorization = "authorization"
	headerAPIKey        = strings.ToLower(protocol.HeaderAPIKey)
	headerTenant        = strings.ToLower(protocol.HeaderTenant)
	headerKey           = strings.ToLower(protocol.HeaderKey)
	headerScopes        = strings.ToLower(protocol.HeaderScopes)
	keyHeaders          = []string{headerAuthorization, headerAPIKey}
	// All three, so that Latchkey's answer replaces what a client sent.
	identityHeaders = []string{headerTenant, headerKey, headerScopes}
)

// The labels a configuration's first line starts with ("# Envoy: …"),
// naming whose types it decodes into.
const (
	labelEnvoy        = "Envoy"
	labelIstio        = "Istio"
	labelEnvoyGateway = "Envoy Gateway"
	labelGatewayAPI   = "Gateway API"
)

// otherLabels are the configurations of the Gateways section that other
// tests check (the proxies run for real in test/integration): they may
// hold none of the markers below.
var otherLabels = []string{"Traefik", "Caddy", "nginx"}

// markers are what only a configuration of Envoy, Istio, Envoy Gateway or
// Gateway API contains: a YAML document anywhere in the README with one
// of them must be one this test decodes.
var markers = []string{"type.googleapis.com/envoy.", "istio.io/", "meshConfig:", "gateway.envoyproxy.io", "gateway.networking.k8s.io"}

// document is one YAML document of a README code block.
type document struct {
	section string // the "### " heading it is under
	line    int    // where it starts in README.md
	label   string // from its first line, or the document before it in the block
	inGate  bool   // whether it is in the Gateways section
	body    []byte
}

func (d document) String() string { return fmt.Sprintf("README.md:%d (%s)", d.line, d.section) }

var labelLine = regexp.MustCompile(`^# ([A-Za-z][A-Za-z ]*?): `)

// readmeDocuments splits every YAML code block of README.md into its
// documents.
func readmeDocuments(t *testing.T) []document {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var (
		docs            []document
		section         string
		inGate, inBlock bool
		yamlBlock       bool
		cur             *document
	)
	flush := func() {
		if cur != nil && len(bytes.TrimSpace(cur.body)) > 0 {
			docs = append(docs, *cur)
		}
		cur = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			if inBlock {
				flush()
			}
			inBlock = !inBlock
			yamlBlock = inBlock && (line == "```yaml" || line == "```yml")
			continue
		case inBlock && !yamlBlock:
			continue
		case inBlock && line == "---":
			label := ""
			if cur != nil {
				label = cur.label
			}
			flush()
			cur = &document{section: section, line: n + 1, label: label, inGate: inGate}
			continue
		case inBlock:
			if cur == nil {
				cur = &document{section: section, line: n, inGate: inGate}
			}
			if m := labelLine.FindStringSubmatch(line); m != nil && len(bytes.TrimSpace(cur.body)) == 0 {
				cur.label = m[1]
			}
			cur.body = append(append(cur.body, line...), '\n')
			continue
		case strings.HasPrefix(line, "## "):
			inGate = line == "## Gateways"
			section = ""
		case strings.HasPrefix(line, "### "):
			section = strings.TrimPrefix(line, "### ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if inBlock {
		t.Fatal("README.md ends inside a code block")
	}
	return docs
}

// ports are the Service's port numbers by name, from its manifest.
func ports(t *testing.T) map[string]int32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "webhook", "service.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var svc corev1.Service
	if err := yaml.UnmarshalStrict(b, &svc); err != nil {
		t.Fatalf("config/webhook/service.yaml: %v", err)
	}
	p := map[string]int32{}
	for _, sp := range svc.Spec.Ports {
		p[sp.Name] = sp.Port
	}
	for _, name := range []string{portVerification, portExtAuthz} {
		if p[name] == 0 {
			t.Fatalf("config/webhook/service.yaml has no port %q", name)
		}
	}
	return p
}

// TestREADMEGatewayConfigurations decodes every Envoy, Istio, Envoy
// Gateway and Gateway API configuration of README.md, and fails on one it
// cannot tell apart, so that none is skipped.
func TestREADMEGatewayConfigurations(t *testing.T) {
	docs := readmeDocuments(t)
	c := &checker{ports: ports(t)}
	decoders := map[string]func(*testing.T, document) string{
		labelEnvoy:        c.envoy,
		labelIstio:        c.istio,
		labelEnvoyGateway: c.envoyGateway,
		labelGatewayAPI:   c.gatewayAPI,
	}
	var got []string
	for _, d := range docs {
		decode, ours := decoders[d.label]
		switch {
		case ours && !d.inGate:
			t.Errorf("%s: a %s configuration outside the Gateways section", d, d.label)
		case ours:
			t.Run(fmt.Sprintf("%s/line%d", d.section, d.line), func(t *testing.T) {
				got = append(got, d.section+": "+decode(t, d))
			})
		case d.inGate && d.label == "":
			t.Errorf("%s: a YAML document whose first line does not say what it is (# Envoy: …)", d)
		case d.inGate && !slices.Contains(otherLabels, d.label):
			t.Errorf("%s: no decoder for %q configurations", d, d.label)
		default:
			for _, m := range markers {
				if bytes.Contains(d.body, []byte(m)) {
					t.Errorf("%s: looks like an Envoy, Istio or Gateway API configuration (%s) but is labelled %q", d, m, d.label)
				}
			}
		}
	}
	c.crossCheck(t)
	want := []string{
		"Envoy over gRPC: Envoy Bootstrap",
		"Envoy over HTTP: Envoy Bootstrap",
		"Istio: Istio MeshConfig",
		"Istio: Istio AuthorizationPolicy",
		"Istio: Istio DestinationRule",
		"Istio: Istio VirtualService",
		"Envoy Gateway: Envoy Gateway SecurityPolicy",
		"Envoy Gateway: Envoy Gateway SecurityPolicy",
		"Envoy Gateway: Gateway API ReferenceGrant",
		"Envoy Gateway: Gateway API BackendTLSPolicy",
		"Gateway API ExternalAuth: Gateway API HTTPRoute",
		"Gateway API ExternalAuth: Gateway API HTTPRoute",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("README's gateway configurations decoded as\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// checker checks decoded configurations against where Latchkey serves,
// and remembers what one configuration names for another to be checked
// against.
type checker struct {
	ports map[string]int32

	meshProviders  map[string]bool // Istio extension providers
	policyProvider []string        // providers AuthorizationPolicies name
	referrers      []string        // "group/Kind/namespace" naming Latchkey's Service across namespaces
	granted        map[string]bool // the same, as ReferenceGrants allow

	crds map[string]*crd // by file and version
}

// crossCheck checks what one configuration needs of another.
func (c *checker) crossCheck(t *testing.T) {
	for _, p := range c.policyProvider {
		if !c.meshProviders[p] {
			t.Errorf("an AuthorizationPolicy names the provider %q, which no meshConfig defines", p)
		}
	}
	for _, r := range c.referrers {
		if !c.granted[r] {
			t.Errorf("%s names %s in %s, which no ReferenceGrant allows", r, serviceName, serviceNamespace)
		}
	}
}

// missing are the names of want that have is without.
func missing(have, want []string) []string {
	var m []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			m = append(m, w)
		}
	}
	return m
}
