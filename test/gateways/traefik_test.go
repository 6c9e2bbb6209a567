package gateways

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// The first lines of the README's two Traefik blocks.
const (
	traefikFileFirst = "# Traefik: file provider (dynamic configuration)"
	traefikCRDFirst  = "# Traefik: Kubernetes CRDs, Middlewares and an IngressRoute chaining them"
)

// traefik builds Traefik with hack/traefik.sh (cached after the first
// time) and returns its path.
func traefik(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "hack", "traefik.sh")).Output()
	if err != nil {
		var stderr []byte
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = exit.Stderr
		}
		missing(t, "building Traefik with hack/traefik.sh: %v\n%s", err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// startTraefik runs Traefik with the README's file-provider configuration
// in front of upstream, its names for the service, Latchkey, its CA and
// the pinned tenant replaced by the test's.
func startTraefik(t *testing.T, upstream, pinnedTenant string) string {
	t.Helper()
	bin := traefik(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, lk.WebhookCA, 0o600); err != nil {
		t.Fatal(err)
	}
	local := strings.NewReplacer("http://my-service", upstream,
		"https://latchkey-webhook-service.latchkey-system.svc", lk.Endpoint,
		"/etc/latchkey/ca.crt", ca,
		"Host(`api.example.com`) && ", "", "PathPrefix(`/payments/`)", "PathPrefix(`/pinned/`)",
		"X-Latchkey-Tenant-Required: payments", "X-Latchkey-Tenant-Required: "+pinnedTenant)
	dynamic := filepath.Join(dir, "dynamic.yaml")
	if err := os.WriteFile(dynamic, []byte(local.Replace(readmeBlock(t, "yaml", traefikFileFirst))), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := listenAddress(t)
	cmd := exec.Command(bin,
		"--entryPoints.web.address="+addr,
		"--providers.file.filename="+dynamic,
		"--log.level=ERROR",
		"--global.checkNewVersion=false",
		"--global.sendAnonymousUsage=false")
	return run(t, cmd, addr)
}

// TestTraefikForwardAuth puts Traefik's forwardAuth, configured as the
// README says, in front of a service.
func TestTraefikForwardAuth(t *testing.T) {
	Check(t, lk, startTraefik, Options{Caller: "127.0.0.3", Flooder: "127.0.0.2"})
}

// TestTraefikCRDsSayWhatTheFileSays holds the README's Kubernetes form of
// the Traefik configuration, which no test can run here, to the file form
// the test runs: the same middlewares, with the same settings but for
// where the CA comes from, chained alike.
func TestTraefikCRDsSayWhatTheFileSays(t *testing.T) {
	g := NewWithT(t)
	var file struct {
		HTTP struct {
			Routers     map[string]struct{ Middlewares []string }
			Middlewares map[string]map[string]any
		}
	}
	g.Expect(yaml.Unmarshal([]byte(readmeBlock(t, "yaml", traefikFileFirst)), &file)).To(Succeed())
	fileChains := make([][]string, 0, len(file.HTTP.Routers))
	var crdChains [][]string
	for _, r := range file.HTTP.Routers {
		fileChains = append(fileChains, r.Middlewares)
	}
	crds := map[string]map[string]any{}
	for _, doc := range strings.Split(readmeBlock(t, "yaml", traefikCRDFirst), "\n---\n") {
		var m struct {
			APIVersion string
			Kind       string
			Metadata   struct{ Name string }
			Spec       map[string]any
		}
		g.Expect(yaml.Unmarshal([]byte(doc), &m)).To(Succeed())
		g.Expect(m.APIVersion).To(Equal("traefik.io/v1alpha1"))
		switch m.Kind {
		case "Middleware":
			crds[m.Metadata.Name] = m.Spec
		case "IngressRoute":
			var route struct {
				Spec struct {
					Routes []struct{ Middlewares []struct{ Name string } }
				}
			}
			g.Expect(yaml.Unmarshal([]byte(doc), &route)).To(Succeed())
			for _, r := range route.Spec.Routes {
				var chain []string
				for _, mw := range r.Middlewares {
					chain = append(chain, mw.Name)
				}
				crdChains = append(crdChains, chain)
			}
		default:
			t.Errorf("a %s among the Traefik CRDs", m.Kind)
		}
	}
	g.Expect(crdChains).To(ConsistOf(fileChains))
	withoutTLS := func(m map[string]map[string]any) map[string]map[string]any {
		for _, spec := range m {
			if fa, ok := spec["forwardAuth"].(map[string]any); ok {
				g.Expect(fa).To(HaveKey("tls"))
				delete(fa, "tls")
			}
		}
		return m
	}
	g.Expect(withoutTLS(crds)).To(Equal(withoutTLS(file.HTTP.Middlewares)))
}
