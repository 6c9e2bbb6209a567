package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	authnv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
)

// TestKubeAPIServerAuthenticatesKeys has kube-apiserver itself call
// /tokenreview (--authentication-token-webhook-config-file), and kubectl
// use a Latchkey key as its bearer token.
func TestKubeAPIServerAuthenticatesKeys(t *testing.T) {
	g := NewWithT(t)
	ns, other := env.Namespace(t), env.Namespace(t)
	key, raw := mint(t, ns, "ci", authv1alpha1.ApiKeySpec{})

	out, errOut, err := env.KubectlWithToken(raw, "auth", "whoami", "-o", "json")
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	var review struct {
		Status struct {
			UserInfo struct {
				Username string              `json:"username"`
				UID      string              `json:"uid"`
				Groups   []string            `json:"groups"`
				Extra    map[string][]string `json:"extra"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	g.Expect(json.Unmarshal([]byte(out), &review)).To(Succeed())
	u := review.Status.UserInfo
	g.Expect(u.Username).To(Equal("latchkey:" + ns + ":ci"))
	g.Expect(u.UID).To(Equal(string(key.UID)))
	g.Expect(u.Groups).To(ContainElements("latchkey:authenticated", "latchkey:tenant:"+ns))
	g.Expect(u.Extra["latchkey.dev/key-hint"]).To(Equal([]string{key.Status.KeyHint}))

	// A RoleBinding to the tenant's group grants access in its namespace only.
	grantConfigMapReads(t, ns, "latchkey:tenant:"+ns)
	g.Eventually(func() error {
		_, _, err := env.KubectlWithToken(raw, "get", "configmaps", "-n", ns)
		return err
	}).WithTimeout(10 * time.Second).Should(Succeed())
	_, errOut, err = env.KubectlWithToken(raw, "get", "configmaps", "-n", other)
	g.Expect(err).To(HaveOccurred())
	g.Expect(errOut).To(ContainSubstring("Forbidden"))
	g.Expect(errOut).To(ContainSubstring("latchkey:" + ns + ":ci"))

	// After revocation, and the API server's 1s cache TTL, the key is refused.
	revoke(t, key)
	g.Eventually(func(g Gomega) {
		_, errOut, err := env.KubectlWithToken(raw, "get", "configmaps", "-n", ns)
		g.Expect(err).To(HaveOccurred())
		g.Expect(errOut).To(ContainSubstring("Unauthorized"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	_, errOut, err = env.KubectlWithToken(raw, "auth", "whoami")
	g.Expect(err).To(HaveOccurred())
	g.Expect(strings.Contains(errOut, raw)).To(BeFalse())
}

// grantConfigMapReads lets group get and list the ConfigMaps of ns.
func grantConfigMapReads(t *testing.T, ns, group string) {
	t.Helper()
	g := NewWithT(t)
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "read-configmaps"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reads-configmaps"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: group}},
	}
	g.Expect(env.Client.Create(context.Background(), role)).To(Succeed())
	g.Expect(env.Client.Create(context.Background(), binding)).To(Succeed())
}

// Keys are valid for their own audiences only, and kube-apiserver's
// TokenReview API passes a review's audiences on to Latchkey: a review
// meant for another service refuses a key, one for the API server (none
// named) or for Latchkey's audience accepts it.
func TestKubeAPIServerReviewsKeysForTheirAudiencesOnly(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "ci", authv1alpha1.ApiKeySpec{})
	tests := []struct {
		name          string
		audiences     []string
		authenticated bool
	}{
		{"a review meant for another service refuses a key", []string{"vault"}, false},
		{"a review naming no audience, the API server's, accepts a key", nil, true},
		{"a review for Latchkey's audience accepts a key", []string{endpoints.DefaultAudience}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			review := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: raw, Audiences: tt.audiences}}
			NewWithT(t).Expect(env.Client.Create(ctx, review)).To(Succeed())
			NewWithT(t).Expect(review.Status.Authenticated).To(Equal(tt.authenticated), "%+v", review.Status)
			if tt.authenticated {
				NewWithT(t).Expect(review.Status.User.Username).To(Equal("latchkey:" + ns + ":ci"))
			}
		})
	}
}
