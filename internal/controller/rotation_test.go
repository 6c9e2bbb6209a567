package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// mintDirect creates an ApiKey, mints it with a healthy reconciler, and
// returns its name and raw key.
func mintDirect(g Gomega, clk *clocktesting.FakeClock, ns, name string, spec authv1alpha1.ApiKeySpec) (types.NamespacedName, string) {
	g.Expect(env.Client.Create(context.Background(), newKey(ns, name, spec))).To(Succeed())
	nn := types.NamespacedName{Namespace: ns, Name: name}
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 3)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(getKey(g, ns, name).Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	return nn, string(getSecret(g, ns, name).Data[authv1alpha1.SecretKeyAPIKey])
}

// requestRotation sets spec.rotation.requestedAt to at, with the grace period.
func requestRotation(g Gomega, nn types.NamespacedName, at time.Time, grace time.Duration) {
	key := getKey(g, nn.Namespace, nn.Name)
	base := key.DeepCopy()
	key.Spec.Rotation = &authv1alpha1.RotationSpec{
		RequestedAt: &metav1.Time{Time: at}, GracePeriod: &metav1.Duration{Duration: grace},
	}
	g.Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
}

// rotationRequest is an instant after any record minted so far: creation
// timestamps are whole seconds.
func rotationRequest() time.Time { return time.Now().Add(time.Second).Truncate(time.Second) }

// writesPerRotation are the writes of the pass that rotates: the pending
// record, the Secret, the record delivered, the previous record's
// validUntil, and status.
const writesPerRotation = 5

// TestCrashSafeRotation fails each write of a rotation in turn — before it
// lands, and after it lands with the answer lost — then recovers with a
// healthy reconciler and checks that the crash never left a working key
// nobody holds, never minted two new keys for the one request, and never
// cut the previous key's grace period short.
func TestCrashSafeRotation(t *testing.T) {
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	for failAt := 1; failAt <= writesPerRotation; failAt++ {
		for _, landed := range []bool{false, true} {
			name := fmt.Sprintf("write %d fails before it lands", failAt)
			if landed {
				name = fmt.Sprintf("write %d lands and its answer is lost", failAt)
			}
			t.Run(name, func(t *testing.T) {
				g := NewWithT(t)
				ctx := context.Background()
				nn, oldRaw := mintDirect(g, clk, ns, fmt.Sprintf("r%d-%t", failAt, landed), authv1alpha1.ApiKeySpec{})
				secretUID := getSecret(g, ns, nn.Name).UID
				requested := rotationRequest()
				requestRotation(g, nn, requested, time.Hour)

				faulty := &faults{failAt: failAt, landed: landed}
				_, err := directReconciler(faulty.client(t), clk).Reconcile(ctx, ctrl.Request{NamespacedName: nn})
				g.Expect(faulty.tripped).To(BeTrue(), "the fault was injected")
				g.Expect(err).To(MatchError(ContainSubstring(errInjected.Error())))

				// At the crash point every working key is the Secret's or the
				// previous one, which its holders have, and that one works on.
				inSecret := keys.Hash(string(getSecret(g, ns, nn.Name).Data[authv1alpha1.SecretKeyAPIKey]))
				for _, rec := range recordsOf(g, ns, nn.Name) {
					if rec.Spec.Pending || rec.Spec.Revoked {
						g.Expect(rec.Spec.Hash).NotTo(Equal(keys.Hash(oldRaw)), "the previous key works through its grace period")
						continue
					}
					g.Expect(rec.Spec.Hash).To(BeElementOf(inSecret, keys.Hash(oldRaw)), "a working key is one somebody holds")
				}

				_, err = reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 3)
				g.Expect(err).NotTo(HaveOccurred())
				checkRotated(g, nn, oldRaw, requested, time.Hour)
				g.Expect(getSecret(g, ns, nn.Name).UID).To(Equal(secretUID), "the Secret is patched in place, never replaced")
			})
		}
	}
}

// checkRotated checks the end state of one rotation of a key first minted
// with oldRaw: two records, the new one in the Secret, the old one valid
// for the grace period from the new one's creation, and status saying so.
func checkRotated(g Gomega, nn types.NamespacedName, oldRaw string, requested time.Time, grace time.Duration) {
	key := getKey(g, nn.Namespace, nn.Name)
	raw := string(getSecret(g, nn.Namespace, nn.Name).Data[authv1alpha1.SecretKeyAPIKey])
	g.Expect(keys.Hash(raw)).NotTo(Equal(keys.Hash(oldRaw)), "the Secret holds the new key") // hashes: never print a key
	recs := recordsOf(g, nn.Namespace, nn.Name)
	g.Expect(recs).To(HaveLen(2), "one new key for one rotation")
	set := splitRecords(recs)
	g.Expect(set.pending).To(BeEmpty())
	cur, prev := set.current, set.previous[0]
	g.Expect(cur.Spec.Hash).To(Equal(keys.Hash(raw)))
	g.Expect(cur.Spec.Rotation).To(Equal(int32(1)))
	g.Expect(cur.Spec.RequestedAt.Time.Equal(requested)).To(BeTrue(), "the record names the request it answered")
	g.Expect(cur.Spec.ValidUntil).To(BeNil())
	g.Expect(prev.Spec.Hash).To(Equal(keys.Hash(oldRaw)))
	g.Expect(prev.Spec.Rotation).To(BeZero())
	g.Expect(prev.Spec.Revoked).To(BeFalse())
	g.Expect(prev.Spec.ValidUntil.Time.Equal(cur.CreationTimestamp.Add(grace))).To(BeTrue(),
		"validUntil %v is the new key's creation %v plus the grace period", prev.Spec.ValidUntil, cur.CreationTimestamp)

	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	g.Expect(key.Status.KeyHint).To(Equal(keys.Hint(raw)))
	g.Expect(key.Status.Rotation).To(Equal(int32(1)))
	g.Expect(key.Status.RotatedAt.Equal(&cur.CreationTimestamp)).To(BeTrue())
	g.Expect(key.Status.PreviousKeys).To(ConsistOf(authv1alpha1.PreviousKey{
		KeyHint: keys.Hint(oldRaw), Rotation: 0, ValidUntil: *prev.Spec.ValidUntil,
	}))
}

// TestRotationWrites counts the API writes of a rotation, from the pass
// that rotates to the one that ends the previous key's grace period, and
// checks the previous key is then revoked as Rotated.
func TestRotationWrites(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, oldRaw := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	requested := rotationRequest()
	requestRotation(g, nn, requested, time.Minute)

	counted := &faults{}
	r := directReconciler(counted.client(t), clk)
	res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: nn})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(counted.writes).To(Equal(writesPerRotation))
	rotating := counted.writes
	checkRotated(g, nn, oldRaw, requested, time.Minute)
	// The new key's creation is the API server's clock, clk the test's.
	until := getKey(g, ns, "k").Status.PreviousKeys[0].ValidUntil.Time
	g.Expect(res.RequeueAfter).To(BeNumerically("<=", until.Sub(clk.Now())+time.Second), "looked at again when the grace period ends")

	res, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: nn})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(counted.writes).To(Equal(rotating), "a pass after the rotation writes nothing")

	prev := getKey(g, ns, "k").Status.PreviousKeys[0]
	clk.SetTime(prev.ValidUntil.Time)
	_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: nn})
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("API writes per rotation: %d in the pass that rotates, %d when the grace period ends (revoke, status); %d in all",
		rotating, counted.writes-rotating, counted.writes)
	g.Expect(counted.writes - rotating).To(Equal(2))
	key := getKey(g, ns, "k")
	g.Expect(key.Status.PreviousKeys).To(BeEmpty())
	for _, rec := range recordsOf(g, ns, "k") {
		if rec.Spec.Hash == keys.Hash(oldRaw) {
			g.Expect(rec.Spec.Revoked).To(BeTrue())
			g.Expect(rec.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationRotated))
		} else {
			g.Expect(rec.Spec.Revoked).To(BeFalse())
		}
	}
}

// TestRotationGraceZero: a grace period of 0s ends the previous key in the
// pass that rotates.
func TestRotationGraceZero(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, oldRaw := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	requestRotation(g, nn, rotationRequest(), 0)
	clk.SetTime(time.Now().Add(2 * time.Second))
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Rotation).To(Equal(int32(1)))
	g.Expect(key.Status.PreviousKeys).To(BeEmpty())
	for _, rec := range recordsOf(g, ns, "k") {
		g.Expect(rec.Spec.Revoked).To(Equal(rec.Spec.Hash == keys.Hash(oldRaw)))
	}
}

// TestRotationGraceZeroSticks: a 0s rotation that cannot be made (its
// Secret is gone) still ends the current key, for good: raising the grace
// period afterwards does not bring it back.
func TestRotationGraceZeroSticks(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, _ := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	g.Expect(env.Client.Delete(ctx, getSecret(g, ns, "k"))).To(Succeed())
	requested := rotationRequest()
	requestRotation(g, nn, requested, 0)
	clk.SetTime(requested.Add(time.Second))
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	recs := recordsOf(g, ns, "k")
	g.Expect(recs).To(HaveLen(1), "no Secret, no new key")
	g.Expect(recs[0].Spec.ValidUntil).NotTo(BeNil())
	g.Expect(recs[0].Spec.ValidUntil.Time).To(BeTemporally("<=", requested))

	requestRotation(g, nn, requested, time.Hour)
	_, err = reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	recs = recordsOf(g, ns, "k")
	g.Expect(recs[0].Spec.ValidUntil).NotTo(BeNil())
	g.Expect(recs[0].Spec.ValidUntil.Time).To(BeTemporally("<=", requested), "a validUntil is never extended")
}

// TestAtMostEightPreviousKeys rotates nine times within the grace period:
// the ninth ends the first key's grace at once, so that the eight newest
// replaced keys are those status lists.
func TestAtMostEightPreviousKeys(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, firstRaw := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	r := directReconciler(env.Client, clk)
	base := rotationRequest()
	for i := range MaxPreviousKeys + 1 {
		requestRotation(g, nn, base.Add(time.Duration(i)*time.Hour), time.Hour)
		_, err := reconcileUntilQuiet(r, nn, 1)
		g.Expect(err).NotTo(HaveOccurred())
	}
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Rotation).To(Equal(int32(MaxPreviousKeys + 1)))
	g.Expect(key.Status.PreviousKeys).To(HaveLen(MaxPreviousKeys))
	for i, p := range key.Status.PreviousKeys {
		g.Expect(p.Rotation).To(Equal(int32(MaxPreviousKeys - i)))
	}
	for _, rec := range recordsOf(g, ns, "k") {
		if rec.Spec.Hash == keys.Hash(firstRaw) {
			g.Expect(rec.Spec.Revoked).To(BeTrue())
			g.Expect(rec.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationRotated))
		}
	}
}

// TestScheduledRotation: spec.rotation.every rotates the key that long
// after it was minted, says when in nextRotationAt, and each rotation
// moves the schedule on by every.
func TestScheduledRotation(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, _ := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{Rotation: &authv1alpha1.RotationSpec{Every: &metav1.Duration{Duration: time.Hour}}})
	key := getKey(g, ns, "k")
	first := getRecord(g, key)
	g.Expect(key.Status.NextRotationAt.Time.Equal(first.CreationTimestamp.Add(time.Hour))).To(BeTrue())

	r := directReconciler(env.Client, clk)
	res, err := reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(BeNumerically("<=", key.Status.NextRotationAt.Sub(clk.Now())), "looked at again when it is due")
	g.Expect(getKey(g, ns, "k").Status.Rotation).To(BeZero(), "not before it is due")

	clk.SetTime(key.Status.NextRotationAt.Time)
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	rotated := getKey(g, ns, "k")
	g.Expect(rotated.Status.Rotation).To(Equal(int32(1)))
	g.Expect(rotated.Status.NextRotationAt.Time.Equal(key.Status.NextRotationAt.Add(time.Hour))).To(BeTrue(),
		"next rotation at %v, an hour after the last was due", rotated.Status.NextRotationAt)
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(getKey(g, ns, "k").Status.Rotation).To(Equal(int32(1)), "one rotation per schedule")
}

// TestRevokingRevokesEveryKey: a key in its grace period is revoked with
// the ApiKey.
func TestRevokingRevokesEveryKey(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, _ := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	requestRotation(g, nn, rotationRequest(), time.Hour)
	r := directReconciler(env.Client, clk)
	_, err := reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	key := getKey(g, ns, "k")
	base := key.DeepCopy()
	key.Spec.Revoked = true
	g.Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	recs := recordsOf(g, ns, "k")
	g.Expect(recs).To(HaveLen(2))
	for _, rec := range recs {
		g.Expect(rec.Spec.Revoked).To(BeTrue())
		g.Expect(rec.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationRevoked))
	}
	g.Expect(getKey(g, ns, "k").Status.PreviousKeys).To(BeEmpty())
}

// TestRotationNeverWritesASecretItDoesNotHold: a Secret that no longer
// holds the current key (edited by someone) is not rotated into.
func TestRotationNeverWritesASecretItDoesNotHold(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, _ := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	secret := getSecret(g, ns, "k")
	base := secret.DeepCopy()
	secret.Data[authv1alpha1.SecretKeyAPIKey] = []byte("someone else's value")
	g.Expect(env.Client.Patch(ctx, secret, client.MergeFrom(base))).To(Succeed())
	requestRotation(g, nn, rotationRequest(), time.Hour)
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(getSecret(g, ns, "k").Data[authv1alpha1.SecretKeyAPIKey])).To(Equal("someone else's value"))
	g.Expect(recordsOf(g, ns, "k")).To(HaveLen(1))
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Rotation).To(BeZero())
	g.Expect(key.Status.Conditions).To(ContainElement(And(
		HaveField("Type", authv1alpha1.ConditionKeyDelivered),
		HaveField("Reason", authv1alpha1.ReasonSecretChanged),
		HaveField("Message", ContainSubstring("The rotation requested waits")))))
}

// TestExpiryWarning: ExpiringSoon turns True within the warning, with one
// Warning Event, and the key counts in the gauge until it leaves the window.
func TestExpiryWarning(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	expires := metav1.NewTime(clk.Now().Add(DefaultExpiryWarning + time.Hour))
	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{ExpiresAt: &expires}))).To(Succeed())
	nn := types.NamespacedName{Namespace: ns, Name: "k"}
	r := directReconciler(env.Client, clk)
	recorder := r.Recorder.(*events.FakeRecorder)
	warnings := func() int {
		n := 0
		for {
			select {
			case e := <-recorder.Events:
				if strings.HasPrefix(e, corev1.EventTypeWarning+" "+EventKeyExpiringSoon+" ") {
					n++
				}
			default:
				return n
			}
		}
	}
	soon := func() metav1.ConditionStatus {
		for _, c := range getKey(g, ns, "k").Status.Conditions {
			if c.Type == authv1alpha1.ConditionExpiringSoon {
				return c.Status
			}
		}
		return ""
	}

	res, err := reconcileUntilQuiet(r, nn, 3)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(soon()).To(Equal(metav1.ConditionFalse))
	g.Expect(res.RequeueAfter).To(BeNumerically("<=", time.Hour))
	g.Expect(warnings()).To(BeZero())
	g.Expect(r.ExpiringSoonByNamespace()).To(BeEmpty())

	clk.Step(time.Hour)
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(soon()).To(Equal(metav1.ConditionTrue))
	g.Expect(warnings()).To(Equal(1))
	g.Expect(r.ExpiringSoonByNamespace()).To(Equal(map[string]int{ns: 1}))
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(warnings()).To(BeZero(), "once per window")

	key := getKey(g, ns, "k")
	base := key.DeepCopy()
	later := metav1.NewTime(expires.Add(30 * 24 * time.Hour))
	key.Spec.ExpiresAt = &later
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(soon()).To(Equal(metav1.ConditionFalse))
	g.Expect(r.ExpiringSoonByNamespace()).To(BeEmpty(), "a namespace's series goes with its last expiring key")
}

// TestRotationWaitsForACacheBehind: a pass whose cache has not seen the
// newest key yet finds the Secret holding it, and retries rather than
// report the Secret changed; an older key of the ApiKey put back in the
// Secret is reported changed.
func TestRotationWaitsForACacheBehind(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	nn, oldRaw := mintDirect(g, clk, ns, "k", authv1alpha1.ApiKeySpec{})
	requestRotation(g, nn, rotationRequest(), time.Hour)
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	before := getKey(g, ns, "k").Status

	direct, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	g.Expect(err).NotTo(HaveOccurred())
	behind := interceptor.NewClient(direct, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if err := c.List(ctx, list, opts...); err != nil {
				return err
			}
			if recs, ok := list.(*authv1alpha1.ApiKeyRecordList); ok {
				recs.Items = slices.DeleteFunc(recs.Items, func(r authv1alpha1.ApiKeyRecord) bool { return r.Spec.Rotation > 0 })
			}
			return nil
		},
	})
	r := directReconciler(behind, clk)
	r.APIReader = behind
	_, err = r.Reconcile(ctx, ctrl.Request{NamespacedName: nn})
	g.Expect(err).To(MatchError(ContainSubstring("not in the key index yet")))
	g.Expect(getKey(g, ns, "k").Status.Conditions).To(Equal(before.Conditions), "status is not written from a cache behind")

	secret := getSecret(g, ns, "k")
	base := secret.DeepCopy()
	secret.Data[authv1alpha1.SecretKeyAPIKey] = []byte(oldRaw)
	g.Expect(env.Client.Patch(ctx, secret, client.MergeFrom(base))).To(Succeed())
	_, err = reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Rotation).To(Equal(int32(1)))
	g.Expect(key.Status.Conditions).To(ContainElement(And(
		HaveField("Type", authv1alpha1.ConditionKeyDelivered), HaveField("Reason", authv1alpha1.ReasonSecretChanged))))
}
