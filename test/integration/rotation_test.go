package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// requestRotation sets the key's spec.rotation.requestedAt, keeping the
// rest of spec.rotation, and returns the instant requested. The API keeps
// whole seconds, so the request is the next second: later than any record
// minted so far, as Supersedes needs.
func requestRotation(t testing.TB, key *authv1alpha1.ApiKey) time.Time {
	t.Helper()
	g := NewWithT(t)
	g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(key), key)).To(Succeed())
	base := key.DeepCopy()
	at := metav1.NewTime(time.Now().Truncate(time.Second).Add(time.Second))
	if key.Spec.Rotation == nil {
		key.Spec.Rotation = &authv1alpha1.RotationSpec{}
	}
	key.Spec.Rotation.RequestedAt = &at
	g.Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
	return at.Time
}

// secretKey is the raw key in the ApiKey's Secret now.
func secretKey(g Gomega, key *authv1alpha1.ApiKey) string {
	s := &corev1.Secret{}
	g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: key.Namespace, Name: key.SecretName()}, s)).To(Succeed())
	return string(s.Data[authv1alpha1.SecretKeyAPIKey])
}

// rotated waits until the Secret holds a key other than old and it
// authenticates, and returns it.
func rotated(t testing.TB, key *authv1alpha1.ApiKey, old string) string {
	t.Helper()
	var raw string
	NewWithT(t).Eventually(func(g Gomega) {
		raw = secretKey(g, key)
		g.Expect(keys.Hash(raw)).NotTo(Equal(keys.Hash(old)), "the Secret holds a new key") // hashes: never print a key
		g.Expect(authorize(t, raw)).To(Equal(200))
	}).WithTimeout(30 * time.Second).WithPolling(5 * time.Millisecond).Should(Succeed())
	return raw
}

// keyRecords are the ApiKey's records, newest first.
func keyRecords(g Gomega, key *authv1alpha1.ApiKey) []authv1alpha1.ApiKeyRecord {
	var list authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(context.Background(), &list, client.MatchingLabels{
		authv1alpha1.LabelTenant: key.Namespace, authv1alpha1.LabelKeyName: key.Name,
	})).To(Succeed())
	slices.SortFunc(list.Items, func(a, b authv1alpha1.ApiKeyRecord) int { return int(b.Spec.Rotation - a.Spec.Rotation) })
	return list.Items
}

// TestRotationWithGracePeriod rotates a key with a grace period of 2s: the
// new key authenticates from the Secret, the old one keeps working until
// its validUntil and is refused from then on.
func TestRotationWithGracePeriod(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	key, oldRaw := mint(t, ns, "rotating", authv1alpha1.ApiKeySpec{
		Rotation: &authv1alpha1.RotationSpec{GracePeriod: &metav1.Duration{Duration: 2 * time.Second}},
	})
	requested := requestRotation(t, key)
	newRaw := rotated(t, key, oldRaw)
	g.Expect(authorize(t, oldRaw)).To(Equal(200), "the previous key works through its grace period")

	var validUntil time.Time
	g.Eventually(func(g Gomega) {
		recs := keyRecords(g, key)
		g.Expect(recs).To(HaveLen(2))
		g.Expect(recs[0].Spec.Rotation).To(Equal(int32(1)))
		g.Expect(recs[0].Spec.Hash).To(Equal(keys.Hash(newRaw)))
		g.Expect(recs[0].Spec.RequestedAt.Time.Equal(requested)).To(BeTrue())
		g.Expect(recs[1].Spec.Rotation).To(BeZero())
		g.Expect(recs[1].Spec.Hash).To(Equal(keys.Hash(oldRaw)))
		g.Expect(recs[1].Spec.ValidUntil).NotTo(BeNil())
		g.Expect(recs[1].Spec.ValidUntil.Time.Equal(recs[0].CreationTimestamp.Add(2 * time.Second))).To(BeTrue())
		validUntil = recs[1].Spec.ValidUntil.Time

		got := &authv1alpha1.ApiKey{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(key), got)).To(Succeed())
		g.Expect(got.Status.Rotation).To(Equal(int32(1)))
		g.Expect(got.Status.KeyHint).To(Equal(keys.Hint(newRaw)))
		g.Expect(got.Status.RotatedAt).NotTo(BeNil())
		g.Expect(got.Status.PreviousKeys).To(ConsistOf(HaveField("KeyHint", keys.Hint(oldRaw))))
	}).WithTimeout(10 * time.Second).WithPolling(20 * time.Millisecond).Should(Succeed())

	// Until validUntil the old key works; from then on it is refused.
	for time.Until(validUntil) > 200*time.Millisecond {
		g.Expect(authorize(t, oldRaw)).To(Equal(200), "the previous key works until %v", validUntil)
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Until(validUntil))
	g.Expect(authorize(t, oldRaw)).To(Equal(401), "the previous key is refused from its validUntil")
	g.Expect(authorize(t, newRaw)).To(Equal(200))

	g.Eventually(func(g Gomega) {
		recs := keyRecords(g, key)
		g.Expect(recs[1].Spec.Revoked).To(BeTrue())
		g.Expect(recs[1].Spec.RevocationReason).To(Equal(authv1alpha1.RevocationRotated))
		got := &authv1alpha1.ApiKey{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(key), got)).To(Succeed())
		g.Expect(got.Status.PreviousKeys).To(BeEmpty())
	}).WithTimeout(10 * time.Second).WithPolling(20 * time.Millisecond).Should(Succeed())
}

// TestScheduledRotationSaysWhen: spec.rotation.every puts the next
// rotation in status.
func TestScheduledRotationSaysWhen(t *testing.T) {
	g := NewWithT(t)
	key, _ := mint(t, env.Namespace(t), "scheduled", authv1alpha1.ApiKeySpec{
		Rotation: &authv1alpha1.RotationSpec{Every: &metav1.Duration{Duration: 90 * 24 * time.Hour}},
	})
	recs := keyRecords(g, key)
	g.Expect(recs).To(HaveLen(1))
	g.Expect(key.Status.NextRotationAt).NotTo(BeNil())
	g.Expect(key.Status.NextRotationAt.Time.Equal(recs[0].CreationTimestamp.Add(90 * 24 * time.Hour))).To(BeTrue())
}

// TestRotationLatency measures, over 20 rotations of one key, the time from
// the write that sets spec.rotation.requestedAt to the new key (read from
// the Secret) authenticating at /authorize.
func TestRotationLatency(t *testing.T) {
	const rotations = 20
	key, raw := mint(t, env.Namespace(t), "latency", authv1alpha1.ApiKeySpec{})
	took := make([]time.Duration, 0, rotations)
	for range rotations {
		// One request a second at most: requests are whole seconds.
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
		start := time.Now()
		requestRotation(t, key)
		raw = rotated(t, key, raw)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("FIGURE rotation (requestedAt set) to the new key authenticating, %d rotations: median %v, min %v, max %v",
		rotations, took[rotations/2], took[0], took[rotations-1])
}
