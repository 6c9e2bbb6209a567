package reliability

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// granted is everything the manager's ServiceAccount may do in a tenant's
// namespace that has not opted in to key delivery, as `kubectl auth can-i
// --list` prints it: resource, resource names, verbs. Anything more, or
// less, fails the case. No Secrets: the manager holds Secret access only in
// its own namespace and in namespaces that bind latchkey-key-delivery.
var granted = []string{
	"apikeyrecords.auth.latchkey.dev [] [create delete get list patch watch]",
	"apikeyrecords.auth.latchkey.dev/status [] [get patch]",
	"apikeys.auth.latchkey.dev [] [get list patch watch]",
	"apikeys.auth.latchkey.dev/finalizers [] [update]",
	"apikeys.auth.latchkey.dev/status [] [get patch]",
	"events.events.k8s.io [] [create patch]",
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

	const sa = "system:serviceaccount:latchkey-system:latchkey-controller-manager"
	canI := func(ns string) []string {
		out, errOut, err := env.Kubectl("", "auth", "can-i", "--list", "--as="+sa, "-n", ns)
		g.Expect(err).NotTo(HaveOccurred(), errOut)
		var got []string
		columns := regexp.MustCompile(`\s{2,}`)
		for _, line := range strings.Split(out, "\n")[1:] {
			f := columns.Split(strings.TrimSpace(line), -1)
			if len(f) < 4 || everyAccount.MatchString(f[0]) {
				continue
			}
			got = append(got, f[0]+" "+f[2]+" "+sortedVerbs(f[3]))
		}
		sort.Strings(got)
		return got
	}
	secretRules := func(rules []string) []string {
		var s []string
		for _, r := range rules {
			if strings.HasPrefix(r, "secrets ") {
				s = append(s, r)
			}
		}
		return s
	}

	tenant := env.Namespace(t)
	got := canI(tenant)
	g.Expect(got).To(Equal(granted))
	own := secretRules(canI("latchkey-system"))
	g.Expect(own).To(Equal([]string{"secrets [] [create get]", "secrets [latchkey-webhook-server-cert] [update]"}))
	// Also in its own namespace, for fencing every replica (docs/replicas.md):
	// the EndpointSlices of its Service, listed (never watched) to find the
	// peers a revocation is fenced on; and serving leases, which leader
	// election's Role covers as well — created, renewed and taken (update),
	// read back and listed (to judge another replica's stale), deleted when
	// a replica stops.
	g.Expect(canI("latchkey-system")).To(ContainElements("endpointslices.discovery.k8s.io [] [list]",
		"leases.coordination.k8s.io [] [create delete get list patch update watch]"))

	// The tenant opts in with the command the ApiKey's condition gives.
	_, errOut, err = env.Kubectl("", "create", "rolebinding", "latchkey-key-delivery", "-n", tenant,
		"--clusterrole=latchkey-key-delivery", "--serviceaccount=latchkey-system:latchkey-controller-manager")
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	// Patch is rotation's: the new key is written into the Secret Latchkey
	// created, in place, once it is checked to hold the current key.
	optedIn := secretRules(canI(tenant))
	g.Expect(optedIn).To(Equal([]string{"secrets [] [create get patch]"}))

	// The overlay for clusters that deliver keys everywhere adds exactly one
	// binding, and with it create, get and patch in every namespace, still
	// never list or watch.
	overlay, errOut, err := env.Kubectl("", "kustomize", filepath.Join(testenv.RepoRoot(), "config", "overlays", "cluster-wide-delivery"))
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	wide := testenv.DocsByKind(overlay)
	g.Expect(wide["ClusterRoleBinding"]).To(HaveLen(len(docs["ClusterRoleBinding"]) + 1))
	_, errOut, err = env.Kubectl(strings.Join(wide["ClusterRoleBinding"], "\n---\n"), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	t.Cleanup(func() { _, _, _ = env.Kubectl("", "delete", "clusterrolebinding", "latchkey-key-delivery") })
	g.Expect(secretRules(canI(env.Namespace(t)))).To(Equal([]string{"secrets [] [create get patch]"}))

	t.Logf("verb inventory in a tenant's namespace:\n%s", strings.Join(got, "\n"))
	record(t, "10 least privilege", fmt.Sprintf("%d rules in a tenant's namespace, exactly what the code needs, none on Secrets; Secrets only in the manager's namespace (create, get, update of its certificate) and, once a namespace opts in with a RoleBinding (or everywhere, with config/overlays/cluster-wide-delivery), create and get there; never list or watch",
		len(got)))
}

// sortedVerbs is kubectl's "[get list watch]" with the verbs sorted: it
// lists the verbs of rules merged from several roles in the order the API
// server resolved them, which varies.
func sortedVerbs(list string) string {
	verbs := strings.Fields(strings.Trim(list, "[]"))
	sort.Strings(verbs)
	return "[" + strings.Join(verbs, " ") + "]"
}
