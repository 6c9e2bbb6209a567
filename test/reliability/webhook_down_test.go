package reliability

import (
	"context"
	"fmt"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// TestWebhookUnreachable (case 5) stops the operator, so its admission
// webhook cannot be reached: ApiKey writes fail with a clear message,
// nothing else is affected, and the CEL rules still keep revocation one way.
func TestWebhookUnreachable(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	revoked, _ := mint(t, ns, "revoked")
	base := revoked.DeepCopy()
	revoked.Spec.Revoked = true
	g.Expect(env.Client.Patch(ctx, revoked, client.MergeFrom(base))).To(Succeed())

	lk.StopOperator()
	// Registered before any manager process starts, so it runs after their
	// cleanups have killed them and freed the webhook port.
	t.Cleanup(func() {
		if err := lk.RestartOperator(context.Background()); err != nil {
			t.Errorf("restarting the operator: %v", err)
		}
	})

	err := env.Client.Create(ctx, &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "new"}})
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring(`failed calling webhook "vapikey-v1alpha1.latchkey.dev"`))

	base = revoked.DeepCopy()
	revoked.Spec.Revoked = false
	err = env.Client.Patch(ctx, revoked, client.MergeFrom(base))
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("revoked cannot be changed from true to false"), "CEL answers before any webhook")

	refused := 0
	const others = 50
	for i := range others {
		var obj client.Object
		switch i % 3 {
		case 0:
			obj = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("cm-%d", i)}}
		case 1:
			obj = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("s-%d", i)}}
		default:
			obj = &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("sa-%d", i)}}
		}
		if err := env.Client.Create(ctx, obj); err != nil {
			refused++
			t.Logf("refused: %v", err)
		}
	}
	g.Expect(refused).To(BeZero())
	record(t, "05 admission webhook unreachable", fmt.Sprintf("%d of %d non-ApiKey requests refused; ApiKey create refused with %q; un-revoke refused by CEL",
		refused, others, strings.SplitN(`failed calling webhook "vapikey-v1alpha1.latchkey.dev"`, ":", 2)[0]))
}
