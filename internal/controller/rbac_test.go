package controller

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

const managerServiceAccount = "system:serviceaccount:latchkey-system:latchkey-manager"

// generatedRole is config/rbac/role.yaml, the role controller-gen writes
// from the code's RBAC markers.
func generatedRole(t testing.TB) *rbacv1.ClusterRole {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(b, role); err != nil {
		t.Fatal(err)
	}
	return role
}

func TestRoleNeverListsOrWatchesSecrets(t *testing.T) {
	for _, rule := range generatedRole(t).Rules {
		for _, res := range rule.Resources {
			if res != "secrets" {
				continue
			}
			for _, verb := range rule.Verbs {
				switch {
				case verb == "get" || verb == "create":
				case verb == "update" && len(rule.ResourceNames) == 1 && rule.ResourceNames[0] == "latchkey-webhook-server-cert":
					// Its own serving certificate, renewed in place.
				default:
					t.Errorf("the manager role may %s secrets %v; only get (by name), create, and update of its certificate are allowed", verb, rule.ResourceNames)
				}
			}
		}
	}
}

// asManager returns a config that acts as the manager's ServiceAccount with
// only the generated role bound, so tests fail on any missing or extra need.
func asManager(t testing.TB) *rest.Config {
	t.Helper()
	ctx := context.Background()
	role := generatedRole(t)
	role.Name = "latchkey-test-manager-role"
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "latchkey-test-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "latchkey-manager", Namespace: "latchkey-system"}},
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "latchkey-system"}}
	_ = env.Client.Create(ctx, ns)
	_ = env.Client.Delete(ctx, role)
	_ = env.Client.Delete(ctx, binding)
	if err := env.Client.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: managerServiceAccount}
	return cfg
}
