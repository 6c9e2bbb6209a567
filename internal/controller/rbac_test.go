package controller

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

const managerServiceAccount = "system:serviceaccount:latchkey-system:latchkey-manager"

// managerRoles are config/rbac/role.yaml, which controller-gen writes from
// the code's RBAC markers: the cluster-wide role, and the role in the
// manager's own namespace.
func managerRoles(t testing.TB) (*rbacv1.ClusterRole, *rbacv1.Role) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cluster, own := &rbacv1.ClusterRole{}, &rbacv1.Role{}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var into any = cluster
		if strings.Contains(doc, "\nkind: Role\n") {
			into = own
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatal(err)
		}
	}
	if cluster.Name == "" || own.Name == "" {
		t.Fatal("role.yaml holds no ClusterRole or no Role")
	}
	return cluster, own
}

// keyDeliveryRole is config/rbac/key_delivery_role.yaml, which namespaces
// bind to let the manager deliver keys there.
func keyDeliveryRole(t testing.TB) *rbacv1.ClusterRole {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "key_delivery_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(b, role); err != nil {
		t.Fatal(err)
	}
	return role
}

func TestRolesNeverListOrWatchSecrets(t *testing.T) {
	cluster, own := managerRoles(t)
	for _, rule := range cluster.Rules {
		if slicesContain(rule.Resources, "secrets") {
			t.Errorf("the cluster-wide manager role may %v secrets; it may touch no Secret outside namespaces that opt in", rule.Verbs)
		}
	}
	check := func(role string, rules []rbacv1.PolicyRule, extra string) {
		for _, rule := range rules {
			if !slicesContain(rule.Resources, "secrets") {
				continue
			}
			for _, verb := range rule.Verbs {
				switch {
				case verb == "get" || verb == "create" || verb == extra:
				case verb == "update" && len(rule.ResourceNames) == 1 && rule.ResourceNames[0] == "latchkey-webhook-server-cert":
					// Its own serving certificate, renewed in place.
				default:
					t.Errorf("%s may %s secrets %v; only get (by name), create, patch to rotate a delivered key, and update of its certificate are allowed", role, verb, rule.ResourceNames)
				}
			}
		}
	}
	check("the manager's namespaced role", own.Rules, "")
	// Rotation writes the new key into the Secret Latchkey created for the
	// ApiKey, in place, so that pods mounting it switch with no restart: a
	// patch, only of a Secret the ApiKey controls that holds exactly the
	// current key, under the resourceVersion it was read at (never update,
	// which would replace what others added to it).
	check("the key-delivery role", keyDeliveryRole(t).Rules, "patch")
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// asManager returns a config that acts as the manager's ServiceAccount with
// only the generated roles bound, and the key-delivery role bound in each
// of namespaces as a tenant would, so tests fail on any missing or extra
// need.
func asManager(t testing.TB, namespaces ...string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	cluster, _ := managerRoles(t)
	cluster.Name = "latchkey-test-manager-role"
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "latchkey-test-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cluster.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "latchkey-manager", Namespace: "latchkey-system"}},
	}
	delivery := keyDeliveryRole(t)
	delivery.Name = "latchkey-test-key-delivery"
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "latchkey-system"}}
	_ = env.Client.Create(ctx, ns)
	_ = env.Client.Delete(ctx, cluster)
	_ = env.Client.Delete(ctx, binding)
	_ = env.Client.Delete(ctx, delivery)
	for _, err := range []error{env.Client.Create(ctx, cluster), env.Client.Create(ctx, binding), env.Client.Create(ctx, delivery)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range namespaces {
		grantKeyDelivery(t, tenant)
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: managerServiceAccount}
	return cfg
}

// grantKeyDelivery binds the key-delivery role in ns, as a tenant opting in.
func grantKeyDelivery(t testing.TB, ns string) {
	t.Helper()
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: authv1alpha1.KeyDeliveryClusterRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "latchkey-test-key-delivery"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "latchkey-manager", Namespace: "latchkey-system"}},
	}
	if err := env.Client.Create(context.Background(), rb); err != nil {
		t.Fatal(err)
	}
}

// TestANamespaceOptsInToKeyDelivery: without the key-delivery RoleBinding
// an ApiKey waits, Pending, with a condition naming the command that grants
// it; once the namespace grants it, the key is minted.
func TestANamespaceOptsInToKeyDelivery(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	startManager(t, ns, managerOptions{asManager: true, optedOut: true, secretCheckInterval: time.Second})

	g.Expect(env.Client.Create(ctx, newKey(ns, "waiting", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	g.Eventually(func(g Gomega) {
		key := getKey(g, ns, "waiting")
		g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhasePending))
		cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)
		g.Expect(cond).NotTo(BeNil())
		g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(cond.Reason).To(Equal(authv1alpha1.ReasonSecretAccessDenied))
		g.Expect(cond.Message).To(ContainSubstring("kubectl create rolebinding latchkey-key-delivery -n " + ns))
	}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
	secrets := &corev1.SecretList{}
	g.Expect(env.Client.List(ctx, secrets, client.InNamespace(ns))).To(Succeed())
	g.Expect(secrets.Items).To(BeEmpty(), "nothing was written")
	g.Expect(recordsOf(g, ns, "waiting")).To(BeEmpty(), "nothing was recorded")

	grantKeyDelivery(t, ns)
	key := env.WaitForPhase(t, ns, "waiting", authv1alpha1.PhaseActive)
	g.Expect(meta.IsStatusConditionTrue(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)).To(BeTrue())
}
