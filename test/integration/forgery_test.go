package integration

import (
	"context"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// TestPlantedKeysNeverAuthenticate plays a user who may edit Secrets and
// ApiKeys in a namespace, and holds the raw value of a key that was revoked:
// whatever Secret they point at a new ApiKey, with whatever owner reference,
// the revoked value never authenticates again and nothing records it.
func TestPlantedKeysNeverAuthenticate(t *testing.T) {
	ctx := context.Background()
	g := NewWithT(t)
	ns := env.Namespace(t)

	old, raw := mint(t, ns, "old", authv1alpha1.ApiKeySpec{})
	revoke(t, old)
	g.Eventually(func() int { return authorize(t, raw) }).Should(Equal(http.StatusUnauthorized))

	t.Run("a revoked key's Secret re-pointed at a new ApiKey is not adopted", func(t *testing.T) {
		g := NewWithT(t)
		// Its Secret outlives the ApiKey (no garbage collector here; in a
		// cluster the user copies it first).
		g.Expect(env.Client.Delete(ctx, old)).To(Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(old), &authv1alpha1.ApiKey{}))
		}).WithTimeout(10 * time.Second).Should(BeTrue())
		fresh := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fresh"},
			Spec: authv1alpha1.ApiKeySpec{SecretName: old.SecretName()}}
		// The admission webhook refuses it until its cache has seen the old one go.
		g.Eventually(func() error { return env.Client.Create(ctx, fresh) }).WithTimeout(10 * time.Second).Should(Succeed())
		fresh = env.WaitForPhase(t, ns, fresh.Name, authv1alpha1.PhaseFailed)

		secret := &corev1.Secret{}
		g.Expect(env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: old.SecretName()}, secret)).To(Succeed())
		base := secret.DeepCopy()
		secret.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(fresh, authv1alpha1.GroupVersion.WithKind("ApiKey"))}
		g.Expect(env.Client.Patch(ctx, secret, client.MergeFrom(base))).To(Succeed())
		fresh = touch(t, fresh)

		g.Expect(fresh.Status.Phase).To(Equal(authv1alpha1.PhaseFailed))
		g.Expect(recordsOfKey(g, fresh)).To(BeEmpty(), "nothing records a value Latchkey did not generate")
		g.Consistently(func() int { return authorize(t, raw) }).WithTimeout(2 * time.Second).Should(Equal(http.StatusUnauthorized))
	})

	t.Run("a Secret planted in another tenant with a copy of a live key is not adopted", func(t *testing.T) {
		g := NewWithT(t)
		_, live := mint(t, ns, "live", authv1alpha1.ApiKeySpec{})
		other := env.Namespace(t)
		copied := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: "copied"}}
		// The copy is planted before the ApiKey exists, and pointed at it
		// once its UID is known.
		g.Expect(env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: "copied"},
			Data: map[string][]byte{authv1alpha1.SecretKeyAPIKey: []byte(live)}})).To(Succeed())
		g.Expect(env.Client.Create(ctx, copied)).To(Succeed())
		copied = env.WaitForPhase(t, other, copied.Name, authv1alpha1.PhaseFailed)
		secret := &corev1.Secret{}
		g.Expect(env.Client.Get(ctx, types.NamespacedName{Namespace: other, Name: "copied"}, secret)).To(Succeed())
		base := secret.DeepCopy()
		secret.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(copied, authv1alpha1.GroupVersion.WithKind("ApiKey"))}
		g.Expect(env.Client.Patch(ctx, secret, client.MergeFrom(base))).To(Succeed())
		copied = touch(t, copied)

		g.Expect(copied.Status.Phase).To(Equal(authv1alpha1.PhaseFailed))
		g.Expect(recordsOfKey(g, copied)).To(BeEmpty())
		id, err := op.Verifier.Verify(live)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(id.Tenant).To(Equal(ns), "the key still resolves to its own tenant only")
	})
}

// touch changes the key's description and waits until that generation is
// reconciled, so that the controller has looked at the Secret again.
func touch(t testing.TB, key *authv1alpha1.ApiKey) *authv1alpha1.ApiKey {
	t.Helper()
	base := key.DeepCopy()
	key.Spec.Description = "touched at " + time.Now().Format(time.RFC3339Nano)
	NewWithT(t).Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
	return env.WaitForPhase(t, key.Namespace, key.Name, key.Status.Phase)
}

func recordsOfKey(g Gomega, key *authv1alpha1.ApiKey) []authv1alpha1.ApiKeyRecord {
	var list authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(context.Background(), &list, client.MatchingLabels{authv1alpha1.LabelKeyUID: string(key.UID)})).To(Succeed())
	return list.Items
}
