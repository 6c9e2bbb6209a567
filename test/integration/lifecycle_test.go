package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// TestSuspendAndResume suspends a key through the API and resumes it: the
// same key is refused with "key suspended" and phase Suspended, Ready
// False, and then works again.
func TestSuspendAndResume(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key, raw := mint(t, env.Namespace(t), "paused", authv1alpha1.ApiKeySpec{})
	setSuspended := func(v bool) {
		base := key.DeepCopy()
		key.Spec.Suspended = v
		g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	}

	setSuspended(true)
	status, body := authorizeBody(t, raw)
	g.Expect(status).To(Equal(http.StatusUnauthorized))
	g.Expect(body).To(ContainSubstring("key suspended"))
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(key), key)).To(Succeed())
		g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseSuspended))
		ready := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(authv1alpha1.ReasonSuspended))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	setSuspended(false)
	g.Eventually(func() int { return authorize(t, raw) }).WithTimeout(10 * time.Second).Should(Equal(http.StatusOK))
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(key), key)).To(Succeed())
		g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// TestScopes gives a key scopes: /authorize names them and refuses a route
// that requires another, /whoami lists them, and kube-apiserver, through
// /tokenreview, puts the key in the groups latchkey:scope:<scope> and
// latchkey:tenant:<tenant>:scope:<scope>, so that a RoleBinding grants per
// scope, of one tenant; removing the scope removes the grant, and another
// tenant's key with the same scope gets none.
func TestScopes(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	key, raw := mint(t, ns, "scoped", authv1alpha1.ApiKeySpec{Scopes: []string{"configmaps.read", "deploy"}})

	req, _ := http.NewRequest(http.MethodGet, endpoint+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := httpsClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	_ = resp.Body.Close()
	g.Expect(resp.Header.Get(protocol.HeaderScopes)).To(Equal("configmaps.read,deploy"))
	g.Expect(authorizeWith(t, raw, http.Header{protocol.HeaderScopeRequired: {"deploy"}})).To(Equal(http.StatusOK))
	g.Expect(authorizeWith(t, raw, http.Header{protocol.HeaderScopeRequired: {"deploy,admin"}})).To(Equal(http.StatusForbidden))

	req, _ = http.NewRequest(http.MethodGet, endpoint+protocol.PathWhoAmI, nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err = httpsClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	var who protocol.WhoAmI
	g.Expect(json.NewDecoder(resp.Body).Decode(&who)).To(Succeed())
	_ = resp.Body.Close()
	g.Expect(who.Scopes).To(Equal([]string{"configmaps.read", "deploy"}))

	grantConfigMapReads(t, ns, protocol.TenantScopeGroup(ns, "configmaps.read"))
	g.Eventually(func() error {
		_, _, err := env.KubectlWithToken(raw, "get", "configmaps", "-n", ns)
		return err
	}).WithTimeout(10 * time.Second).Should(Succeed())
	_, intruder := mint(t, env.Namespace(t), "intruder", authv1alpha1.ApiKeySpec{Scopes: []string{"configmaps.read"}})
	_, errOut, err := env.KubectlWithToken(intruder, "get", "configmaps", "-n", ns)
	g.Expect(err).To(HaveOccurred(), "another tenant's key with the same scope")
	g.Expect(errOut).To(ContainSubstring("Forbidden"))

	base := key.DeepCopy()
	key.Spec.Scopes = []string{"deploy"}
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	// At once at Latchkey; kube-apiserver after its 1s cache of reviews.
	g.Expect(authorizeWith(t, raw, http.Header{protocol.HeaderScopeRequired: {"configmaps.read"}})).To(Equal(http.StatusForbidden))
	g.Eventually(func(g Gomega) {
		_, errOut, err := env.KubectlWithToken(raw, "get", "configmaps", "-n", ns)
		g.Expect(err).To(HaveOccurred())
		g.Expect(errOut).To(ContainSubstring("Forbidden"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// authorizeBody is authorize with the answer's body.
func authorizeBody(t testing.TB, raw string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, endpoint+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := httpsClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(b), raw) {
		t.Fatal("an answer carries the key")
	}
	return resp.StatusCode, string(b)
}
