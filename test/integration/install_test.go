package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// installDocs splits dist/install.yaml into documents by kind.
func installDocs(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "dist", "install.yaml"))
	if err != nil {
		t.Fatalf("%v: run make build-installer", err)
	}
	docs := map[string][]string{}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil || head.Kind == "" {
			continue
		}
		docs[head.Kind] = append(docs[head.Kind], doc)
	}
	return docs
}

// TestInstallManifestIsAccepted has a real API server accept every object
// of dist/install.yaml (server-side dry run), and checks what the
// installation promises: two replicas under Pod Security "restricted", and
// a webhook that can never block kube-system or the operator's namespace.
func TestInstallManifestIsAccepted(t *testing.T) {
	g := NewWithT(t)
	docs := installDocs(t)
	_, errOut, err := env.Kubectl(strings.Join(docs["Namespace"], "\n---\n"), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)

	all, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "dist", "install.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	out, errOut, err := env.Kubectl(string(all), "apply", "--dry-run=server", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/apikeys.auth.latchkey.dev",
		"customresourcedefinition.apiextensions.k8s.io/usages.auth.latchkey.dev",
		"deployment.apps/latchkey-controller-manager",
		"validatingwebhookconfiguration.admissionregistration.k8s.io/latchkey-validating-webhook-configuration",
		"service/latchkey-webhook-service",
	} {
		g.Expect(out).To(ContainSubstring(want))
	}

	// The samples are accepted too, admission webhook and CEL included.
	ns := env.Namespace(t)
	out, errOut, err = env.Kubectl("", "apply", "--dry-run=server", "-n", ns, "-k", filepath.Join(testenv.RepoRoot(), "config", "samples"))
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	g.Expect(out).To(ContainSubstring("apikey.auth.latchkey.dev/partner-acme created (server dry run)"))

	deployment := docs["Deployment"][0]
	for _, want := range []string{"replicas: 2", "runAsNonRoot: true", "readOnlyRootFilesystem: true",
		"allowPrivilegeEscalation: false", "- ALL", "type: RuntimeDefault", "--leader-elect", "POD_NAMESPACE"} {
		g.Expect(deployment).To(ContainSubstring(want))
	}
	g.Expect(docs["Namespace"][0]).To(ContainSubstring("pod-security.kubernetes.io/enforce: restricted"))
	webhook := docs["ValidatingWebhookConfiguration"][0]
	g.Expect(webhook).To(MatchRegexp(`(?s)namespaceSelector:.*NotIn.*kube-system.*latchkey-system`))
	g.Expect(webhook).To(ContainSubstring("timeoutSeconds: 5"))
	g.Expect(webhook).To(ContainSubstring("- apikeys"), "only ApiKeys go through the webhook")
}

// TestInstalledServiceAccountHasLeastPrivilege applies the RBAC of
// dist/install.yaml for real and lists what the manager's ServiceAccount
// may do (kubectl auth can-i --list): never list or watch Secrets, never
// read them but by name, and nothing beyond the inventory below.
func TestInstalledServiceAccountHasLeastPrivilege(t *testing.T) {
	g := NewWithT(t)
	docs := installDocs(t)
	var rbac []string
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		rbac = append(rbac, docs[kind]...)
	}
	_, errOut, err := env.Kubectl(strings.Join(rbac, "\n---\n"), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)

	tenant := env.Namespace(t)
	as := "--as=system:serviceaccount:latchkey-system:latchkey-controller-manager"
	inventory := map[string]string{}
	for _, ns := range []string{tenant, "latchkey-system"} {
		out, errOut, err := env.Kubectl("", "auth", "can-i", "--list", as, "-n", ns)
		g.Expect(err).NotTo(HaveOccurred(), errOut)
		for _, line := range strings.Split(out, "\n")[1:] {
			f := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
			if len(f) < 4 || strings.HasPrefix(f[0], "selfsubject") {
				continue
			}
			inventory[ns+" "+f[0]+" "+f[2]] = f[3]
		}
	}
	keys := make([]string, 0, len(inventory))
	for k := range inventory {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lines := make([]string, 0, len(keys))
	for _, k := range keys {
		lines = append(lines, k+" "+inventory[k])
		if strings.Contains(k, " secrets ") {
			g.Expect(inventory[k]).NotTo(ContainSubstring("list"), k)
			g.Expect(inventory[k]).NotTo(ContainSubstring("watch"), k)
		}
	}
	t.Logf("FIGURE verb inventory of the manager's ServiceAccount:\n%s", strings.Join(lines, "\n"))
	for _, k := range keys {
		if strings.Contains(k, " secrets ") && strings.Contains(k, "[]") {
			g.Expect(inventory[k]).To(Equal("[create get]"), "unnamed Secrets: create, and get by name, only")
		}
	}
}
