package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestInstallManifestIsAccepted has a real API server accept every object
// of dist/install.yaml (server-side dry run), and checks what the
// installation promises: two replicas under Pod Security "restricted", and
// a webhook that can never block kube-system or the operator's namespace.
func TestInstallManifestIsAccepted(t *testing.T) {
	g := NewWithT(t)
	docs := testenv.InstallDocs(t)
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
