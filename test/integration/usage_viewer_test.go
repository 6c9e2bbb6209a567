package integration

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestNamespaceViewersReadTheirUsage installs the ClusterRoles of
// dist/install.yaml and checks that whoever holds the built-in view role in
// a namespace may read its Usage, and no other namespace's.
func TestNamespaceViewersReadTheirUsage(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, other := env.Namespace(t), env.Namespace(t)

	view := &rbacv1.ClusterRole{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: "view"}, view)).To(Succeed())
	g.Expect(view.AggregationRule).NotTo(BeNil(), "the API server's view role aggregates others")
	selectors := make([]labels.Selector, 0, len(view.AggregationRule.ClusterRoleSelectors))
	for _, s := range view.AggregationRule.ClusterRoleSelectors {
		sel, err := metav1.LabelSelectorAsSelector(&s)
		g.Expect(err).NotTo(HaveOccurred())
		selectors = append(selectors, sel)
	}
	aggregated := 0
	for _, doc := range testenv.InstallDocs(t)["ClusterRole"] {
		role := &rbacv1.ClusterRole{}
		g.Expect(yaml.Unmarshal([]byte(doc), role)).To(Succeed())
		for _, sel := range selectors {
			if sel.Matches(labels.Set(role.Labels)) {
				if err := env.Client.Create(ctx, role); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatal(err)
				}
				aggregated++
				break
			}
		}
	}
	g.Expect(aggregated).NotTo(BeZero(), "no ClusterRole of dist/install.yaml aggregates into view")

	// envtest runs no kube-controller-manager, whose clusterrole-aggregation
	// controller would do this: view's rules become those of every
	// ClusterRole its selectors match.
	var rules []rbacv1.PolicyRule
	for _, sel := range selectors {
		var roles rbacv1.ClusterRoleList
		g.Expect(env.Client.List(ctx, &roles, client.MatchingLabelsSelector{Selector: sel})).To(Succeed())
		for _, r := range roles.Items {
			rules = append(rules, r.Rules...)
		}
	}
	view.Rules = rules
	g.Expect(env.Client.Update(ctx, view)).To(Succeed())

	const viewer = "tenant-viewer"
	g.Expect(env.Client.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "viewers"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: viewer}},
	})).To(Succeed())
	for _, n := range []string{ns, other} {
		u := &authv1alpha1.Usage{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: authv1alpha1.UsageName}}
		if err := env.Client.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: viewer}
	as, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() error {
		return as.Get(ctx, client.ObjectKey{Namespace: ns, Name: authv1alpha1.UsageName}, &authv1alpha1.Usage{})
	}).WithTimeout(10*time.Second).Should(Succeed(), "a viewer of the namespace reads its Usage")
	g.Expect(as.List(ctx, &authv1alpha1.UsageList{}, client.InNamespace(ns))).To(Succeed())
	err = as.Get(ctx, client.ObjectKey{Namespace: other, Name: authv1alpha1.UsageName}, &authv1alpha1.Usage{})
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "another namespace's Usage: %v", err)
}
