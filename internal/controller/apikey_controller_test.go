package controller

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

func TestMinting(t *testing.T) {
	tests := []struct {
		name       string
		spec       authv1alpha1.ApiKeySpec
		format     keys.Format
		secretName string
	}{
		{"a key with no format is minted Prefixed into a Secret named after it", authv1alpha1.ApiKeySpec{}, keys.Prefixed, "ci"},
		{"a Hex key is 64 hex characters", authv1alpha1.ApiKeySpec{Format: authv1alpha1.FormatHex}, keys.Hex, "ci"},
		{"a key goes to the Secret spec.secretName names", authv1alpha1.ApiKeySpec{SecretName: "ci-token"}, keys.Prefixed, "ci-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := context.Background()
			ns := env.Namespace(t)
			run := startManager(t, ns, managerOptions{asManager: true})

			g.Expect(env.Client.Create(ctx, newKey(ns, "ci", tt.spec))).To(Succeed())
			key := env.WaitForPhase(t, ns, "ci", authv1alpha1.PhaseActive)

			secret := getSecret(g, ns, tt.secretName)
			raw := string(secret.Data[authv1alpha1.SecretKeyAPIKey])
			format, err := keys.Parse(raw)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(format).To(Equal(tt.format))
			g.Expect(string(secret.Data[authv1alpha1.SecretKeyTenant])).To(Equal(ns))
			g.Expect(string(secret.Data[authv1alpha1.SecretKeyName])).To(Equal("ci"))
			g.Expect(metav1.IsControlledBy(secret, key)).To(BeTrue(), "the Secret is owned by its ApiKey")

			record := getRecord(g, key)
			g.Expect(record.Spec.Hash).To(Equal(keys.Hash(raw)))
			g.Expect(record.Spec.Tenant).To(Equal(ns))
			g.Expect(record.Spec.KeyName).To(Equal("ci"))
			g.Expect(record.Spec.KeyUID).To(Equal(string(key.UID)))
			g.Expect(string(record.Spec.Format)).To(Equal(string(tt.format)))
			g.Expect(record.Spec.Revoked).To(BeFalse())
			g.Expect(recordsOf(g, ns, "ci")).To(HaveLen(1))

			g.Expect(key.Status.KeyHint).To(Equal(keys.Hint(raw)))
			g.Expect(key.Status.KeyHint).To(Equal(record.Spec.Hint))
			g.Expect(key.Finalizers).To(ContainElement(authv1alpha1.Finalizer))
			for _, c := range []string{authv1alpha1.ConditionReady, authv1alpha1.ConditionKeyDelivered} {
				cond := meta.FindStatusCondition(key.Status.Conditions, c)
				g.Expect(cond).NotTo(BeNil())
				g.Expect(cond.Status).To(Equal(metav1.ConditionTrue), c)
				g.Expect(cond.ObservedGeneration).To(Equal(key.Generation))
			}

			// A spec change is reconciled but never re-mints or rewrites the key.
			readyAt := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionReady).LastTransitionTime
			base := key.DeepCopy()
			key.Spec.Description = "now with a description"
			g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
			g.Eventually(func(g Gomega) {
				k := getKey(g, ns, "ci")
				g.Expect(k.Status.ObservedGeneration).To(Equal(k.Generation))
				g.Expect(meta.FindStatusCondition(k.Status.Conditions, authv1alpha1.ConditionReady).LastTransitionTime).To(Equal(readyAt))
			}).Should(Succeed())
			again := getSecret(g, ns, tt.secretName)
			g.Expect(again.ResourceVersion).To(Equal(secret.ResourceVersion), "the Secret is never rewritten")
			g.Expect(getRecord(g, key).Spec.Hash).To(Equal(record.Spec.Hash))

			g.Expect(leaks(t, ns, []string{raw}, run.logs.String())).To(BeEmpty())
		})
	}
}

func TestSecretNotCreatedByLatchkeyIsNeverTouched(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	startManager(t, ns, managerOptions{secretCheckInterval: time.Second})

	theirs := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken"},
		Data:       map[string][]byte{"api-key": []byte("someone else's")},
	}
	g.Expect(env.Client.Create(ctx, theirs)).To(Succeed())
	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{SecretName: "taken"}))).To(Succeed())

	key := env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseFailed)
	cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)
	g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
	g.Expect(cond.Reason).To(Equal(authv1alpha1.ReasonSecretNotOwned))
	g.Expect(cond.Message).To(ContainSubstring(`Secret "taken"`))
	g.Expect(getSecret(g, ns, "taken").ResourceVersion).To(Equal(theirs.ResourceVersion), "their Secret is untouched")
	g.Expect(recordsOf(g, ns, "k")).To(BeEmpty(), "no key works that nobody holds")
	g.Eventually(func(g Gomega) {
		var list eventsv1.EventList
		g.Expect(env.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		reasons := make([]string, 0, len(list.Items))
		for _, e := range list.Items {
			reasons = append(reasons, e.Reason)
		}
		g.Expect(reasons).To(ContainElement(EventSecretNotOwned))
	}).Should(Succeed())

	// Once the user removes their Secret, the key is minted.
	g.Expect(env.Client.Delete(ctx, theirs)).To(Succeed())
	key = env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseActive)
	g.Expect(meta.IsStatusConditionTrue(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)).To(BeTrue())
}

// activeKeyCheckedOften starts a manager that looks at Secrets every 300
// ms and mints key k in a new namespace; it returns them and the key's hash.
func activeKeyCheckedOften(t *testing.T, g Gomega) (string, *authv1alpha1.ApiKey, string) {
	ns := env.Namespace(t)
	startManager(t, ns, managerOptions{secretCheckInterval: 300 * time.Millisecond})
	g.Expect(env.Client.Create(context.Background(), newKey(ns, "k", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	key := env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseActive)
	return ns, key, getRecord(g, key).Spec.Hash
}

func TestSecretDeletedByUserKeepsKeyWorking(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, _, hash := activeKeyCheckedOften(t, g)
	g.Expect(env.Client.Delete(ctx, getSecret(g, ns, "k"))).To(Succeed())

	g.Eventually(func(g Gomega) {
		cond := meta.FindStatusCondition(getKey(g, ns, "k").Status.Conditions, authv1alpha1.ConditionKeyDelivered)
		g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(cond.Reason).To(Equal(authv1alpha1.ReasonSecretMissing))
		g.Expect(cond.Message).To(ContainSubstring("still works"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	record := getRecord(g, key)
	g.Expect(record.Spec.Revoked).To(BeFalse())
	g.Expect(record.Spec.Hash).To(Equal(hash), "the key is never regenerated")
	g.Consistently(func(g Gomega) {
		s := &corev1.Secret{}
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "k"}, s)
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "no new Secret is written")
	}).WithTimeout(time.Second).Should(Succeed())
}

func TestRevocation(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	run := startManager(t, ns, managerOptions{})

	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	key := env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseActive)
	raw := string(getSecret(g, ns, "k").Data[authv1alpha1.SecretKeyAPIKey])

	base := key.DeepCopy()
	key.Spec.Revoked = true
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	key = env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseRevoked)
	g.Expect(key.Status.RevokedAt).NotTo(BeNil())
	g.Expect(key.Status.KeyHint).To(Equal(keys.Hint(raw)), "a revoked key stays recognisable for audit")
	g.Expect(meta.IsStatusConditionFalse(key.Status.Conditions, authv1alpha1.ConditionReady)).To(BeTrue())
	record := getRecord(g, key)
	g.Expect(record.Spec.Revoked).To(BeTrue())
	g.Expect(record.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationRevoked))
	g.Expect(record.Spec.RevokedAt).NotTo(BeNil())

	// The API server itself refuses to bring it back.
	base = key.DeepCopy()
	key.Spec.Revoked = false
	err := env.Client.Patch(ctx, key, client.MergeFrom(base))
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("spec.revoked"))
	g.Expect(err.Error()).To(ContainSubstring("revoked cannot be changed from true to false"))

	g.Expect(leaks(t, ns, []string{raw}, run.logs.String())).To(BeEmpty())
}

func TestDeletionRevokesTheRecordAndKeepsIt(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	startManager(t, ns, managerOptions{retention: time.Hour})

	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	key := env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseActive)
	g.Expect(env.Client.Delete(ctx, key)).To(Succeed())

	g.Eventually(func(g Gomega) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(key), &authv1alpha1.ApiKey{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
	}).WithTimeout(10 * time.Second).Should(Succeed())
	record := getRecord(g, key)
	g.Expect(record.Spec.Revoked).To(BeTrue())
	g.Expect(record.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationDeleted))
	g.Consistently(func(g Gomega) {
		g.Expect(getRecord(g, key).Spec.Revoked).To(BeTrue())
	}).WithTimeout(time.Second).Should(Succeed(), "the record stays for its retention")
}

func TestRevokedAtCreationIsNeverMinted(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	startManager(t, ns, managerOptions{})

	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{Revoked: true}))).To(Succeed())
	env.WaitForPhase(t, ns, "k", authv1alpha1.PhaseRevoked)
	err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "k"}, &corev1.Secret{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
	g.Expect(recordsOf(g, ns, "k")).To(BeEmpty())
}

func TestManyKeysNoLeaksAndDistinctHashes(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	run := startManager(t, ns, managerOptions{})

	const n = 20
	for i := range n {
		format := authv1alpha1.FormatPrefixed
		if i%2 == 1 {
			format = authv1alpha1.FormatHex
		}
		g.Expect(env.Client.Create(ctx, newKey(ns, "k"+strings.Repeat("x", i), authv1alpha1.ApiKeySpec{Format: format}))).To(Succeed())
	}
	raws := make([]string, 0, n)
	hashes := map[string]bool{}
	for i := range n {
		name := "k" + strings.Repeat("x", i)
		key := env.WaitForPhase(t, ns, name, authv1alpha1.PhaseActive)
		raws = append(raws, string(getSecret(g, ns, name).Data[authv1alpha1.SecretKeyAPIKey]))
		hashes[getRecord(g, key).Spec.Hash] = true
	}
	g.Expect(hashes).To(HaveLen(n))
	g.Expect(leaks(t, ns, raws, run.logs.String())).To(BeEmpty())
	g.Expect(run.logs.String()).To(ContainSubstring("Minted key"), "the logs were captured")
}

// TestForgedSecretIsNeverAdopted plays a user who may create Secrets: they
// write the ApiKey's Secret first, with a controller reference to it (its
// UID is visible to anyone who can read it) and a key value of their
// choosing. Latchkey records only keys it generated, so it never adopts it.
func TestForgedSecretIsNeverAdopted(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	chosen, err := keys.Generate(rand.Reader, keys.Prefixed)
	if err != nil {
		t.Fatal(err)
	}
	for name, value := range map[string]string{
		"a valid key of their choosing": chosen,
		"an all-zero hex value":         strings.Repeat("0", 64),
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			keyName := fmt.Sprintf("forged-%d", len(value))
			g.Expect(env.Client.Create(ctx, newKey(ns, keyName, authv1alpha1.ApiKeySpec{}))).To(Succeed())
			key := getKey(g, ns, keyName)
			forged := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: keyName,
					OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(key, authv1alpha1.GroupVersion.WithKind("ApiKey"))}},
				Data: map[string][]byte{authv1alpha1.SecretKeyAPIKey: []byte(value)},
			}
			g.Expect(env.Client.Create(ctx, forged)).To(Succeed())

			_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), client.ObjectKeyFromObject(key), 3)
			g.Expect(err).NotTo(HaveOccurred())

			key = getKey(g, ns, keyName)
			g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseFailed))
			cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)
			g.Expect(cond.Reason).To(Equal(authv1alpha1.ReasonSecretNotOwned))
			g.Expect(cond.Message).NotTo(ContainSubstring("exist"), "the message confirms nothing to those who may not read Secrets")
			g.Expect(recordsOf(g, ns, keyName)).To(BeEmpty(), "the chosen value is never recorded")
			g.Expect(getSecret(g, ns, keyName).ResourceVersion).To(Equal(forged.ResourceVersion), "and their Secret is never touched")
		})
	}
}

func TestSecretWhoseKeyWasReplacedIsReported(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, key, hash := activeKeyCheckedOften(t, g)
	secret := getSecret(g, ns, "k")
	base := secret.DeepCopy()
	secret.Data[authv1alpha1.SecretKeyAPIKey] = []byte(strings.Repeat("0", 64))
	g.Expect(env.Client.Patch(ctx, secret, client.MergeFrom(base))).To(Succeed())

	g.Eventually(func(g Gomega) {
		cond := meta.FindStatusCondition(getKey(g, ns, "k").Status.Conditions, authv1alpha1.ConditionKeyDelivered)
		g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(cond.Reason).To(Equal(authv1alpha1.ReasonSecretChanged))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Expect(getKey(g, ns, "k").Status.Phase).To(Equal(authv1alpha1.PhaseActive), "the delivered key still works")
	g.Expect(getRecord(g, key).Spec.Hash).To(Equal(hash), "and the value put in its place is never recorded")
}

func TestNamesLongerThanALabelAreRefused(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	err := env.Client.Create(context.Background(), newKey(ns, strings.Repeat("k", 64), authv1alpha1.ApiKeySpec{}))
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("metadata.name"))
	g.Expect(err.Error()).To(ContainSubstring("at most 63 characters"))
	g.Expect(env.Client.Create(context.Background(), newKey(ns, strings.Repeat("k", 63), authv1alpha1.ApiKeySpec{}))).To(Succeed())
}
