package reliability

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// granted is everything the manager's ServiceAccount may do in a tenant's
// namespace, as `kubectl auth can-i --list` prints it: resource, resource
// names, verbs. Anything more, or less, fails the case.
var granted = []string{
	"apikeyrecords.auth.latchkey.dev [] [create delete get list patch watch]",
	"apikeyrecords.auth.latchkey.dev/status [] [get patch]",
	"apikeys.auth.latchkey.dev [] [get list patch watch]",
	"apikeys.auth.latchkey.dev/finalizers [] [update]",
	"apikeys.auth.latchkey.dev/status [] [get patch]",
	"events.events.k8s.io [] [create patch]",
	"secrets [] [create get]",
	"secrets [latchkey-webhook-server-cert] [update]",
	"subjectaccessreviews.authorization.k8s.io [] [create]",
	"tokenreviews.authentication.k8s.io [] [create]",
	"usageledgers.auth.latchkey.dev [] [create get list update watch]",
	"usages.auth.latchkey.dev [] [create get list watch]",
	"usages.auth.latchkey.dev/status [] [get patch]",
	"validatingwebhookconfigurations.admissionregistration.k8s.io [latchkey-validating-webhook-configuration] [get update]",
}

// everyAccount is what Kubernetes grants every authenticated account.
var everyAccount = regexp.MustCompile(`^(selfsubject|clustertrustbundles\.)`)

// TestLeastPrivilege (case 10) applies the RBAC of dist/install.yaml and
// compares the manager's ServiceAccount's verbs with what the code needs.
func TestLeastPrivilege(t *testing.T) {
	g := NewWithT(t)
	docs := testenv.InstallDocs(t)
	var rbac []string
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		rbac = append(rbac, docs[kind]...)
	}
	_, errOut, err := env.Kubectl(strings.Join(rbac, "\n---\n"), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)

	out, errOut, err := env.Kubectl("", "auth", "can-i", "--list",
		"--as=system:serviceaccount:latchkey-system:latchkey-controller-manager", "-n", env.Namespace(t))
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	var got []string
	columns := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(out, "\n")[1:] {
		f := columns.Split(strings.TrimSpace(line), -1)
		if len(f) < 4 || everyAccount.MatchString(f[0]) {
			continue
		}
		got = append(got, f[0]+" "+f[2]+" "+f[3])
	}
	sort.Strings(got)
	g.Expect(got).To(Equal(granted))
	for _, rule := range got {
		if strings.HasPrefix(rule, "secrets ") {
			g.Expect(rule).NotTo(MatchRegexp(`list|watch`))
		}
	}
	t.Logf("verb inventory:\n%s", strings.Join(got, "\n"))
	record(t, "10 least privilege", fmt.Sprintf("%d rules, exactly what the code needs; Secrets: create, get by name, update of its own certificate only; no list or watch", len(got)))
}
