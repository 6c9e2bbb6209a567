package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var errInjected = errors.New("injected fault")

// faults fails the failAt-th write made through its client. With landed
// set, the write reaches the API server first and only the answer is lost,
// as when the process dies right after a write.
type faults struct {
	mu      sync.Mutex
	writes  int
	failAt  int
	landed  bool
	tripped bool
}

func (f *faults) write(do func() error) error {
	f.mu.Lock()
	f.writes++
	fail := f.writes == f.failAt
	if fail {
		f.tripped = true
	}
	f.mu.Unlock()
	if !fail {
		return do()
	}
	if f.landed {
		if err := do(); err != nil {
			return err
		}
	}
	return errInjected
}

// client is a direct client of the test API server whose writes f fails.
func (f *faults) client(t testing.TB) client.Client {
	t.Helper()
	return interceptor.NewClient(directClient(t), interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			return f.write(func() error { return c.Create(ctx, obj, opts...) })
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			return f.write(func() error { return c.Update(ctx, obj, opts...) })
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
			return f.write(func() error { return c.Patch(ctx, obj, p, opts...) })
		},
		Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			return f.write(func() error { return c.Delete(ctx, obj, opts...) })
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			return f.write(func() error { return c.SubResource(sub).Patch(ctx, obj, p, opts...) })
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			return f.write(func() error { return c.SubResource(sub).Update(ctx, obj, opts...) })
		},
	})
}

// directReconciler reconciles against the API server with no cache, with an
// injected clock and the given client.
func directReconciler(c client.Client, clk *clocktesting.FakeClock) *ApiKeyReconciler {
	return &ApiKeyReconciler{
		Client:    c,
		APIReader: env.Client,
		Recorder:  events.NewFakeRecorder(100),
		Clock:     clk,
		Random:    rand.Reader,
	}
}

// reconcileUntilQuiet reconciles until a pass returns no error, at most n times.
func reconcileUntilQuiet(r *ApiKeyReconciler, key types.NamespacedName, n int) (ctrl.Result, error) {
	var res ctrl.Result
	var err error
	for range n {
		res, err = r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
		if err == nil {
			return res, nil
		}
	}
	return res, err
}

// TestCrashSafeMinting fails each write of a mint in turn — before it lands,
// and after it lands with the answer lost — then recovers with a new,
// healthy reconciler (a restarted process) and checks the end state.
func TestCrashSafeMinting(t *testing.T) {
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())

	// A full mint is five writes: finalizer, pending record, Secret, record
	// delivered, status.
	const writesPerMint = 5
	for failAt := 1; failAt <= writesPerMint; failAt++ {
		for _, landed := range []bool{false, true} {
			name := fmt.Sprintf("write %d fails before it lands", failAt)
			if landed {
				name = fmt.Sprintf("write %d lands and its answer is lost", failAt)
			}
			t.Run(name, func(t *testing.T) {
				g := NewWithT(t)
				ctx := context.Background()
				keyName := fmt.Sprintf("k%d-%t", failAt, landed)
				g.Expect(env.Client.Create(ctx, newKey(ns, keyName, authv1alpha1.ApiKeySpec{}))).To(Succeed())
				nn := types.NamespacedName{Namespace: ns, Name: keyName}

				faulty := &faults{failAt: failAt, landed: landed}
				_, err := directReconciler(faulty.client(t), clk).Reconcile(ctx, ctrl.Request{NamespacedName: nn})
				g.Expect(faulty.tripped).To(BeTrue(), "the fault was injected")
				g.Expect(err).To(HaveOccurred())
				g.Expect(err.Error()).To(ContainSubstring(errInjected.Error()))

				// At the crash point, a working key is always one somebody holds.
				for _, rec := range recordsOf(g, ns, keyName) {
					if !rec.Spec.Pending {
						s := getSecret(g, ns, keyName)
						g.Expect(keys.Hash(string(s.Data[authv1alpha1.SecretKeyAPIKey]))).To(Equal(rec.Spec.Hash))
					}
				}
				var secretUID types.UID
				if s := (&corev1.Secret{}); env.Client.Get(ctx, nn, s) == nil {
					secretUID = s.UID
				}

				_, err = reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 3)
				g.Expect(err).NotTo(HaveOccurred())

				key := getKey(g, ns, keyName)
				g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
				secret := getSecret(g, ns, keyName)
				if secretUID != "" {
					g.Expect(secret.UID).To(Equal(secretUID), "a delivered Secret is never replaced")
				}
				recs := recordsOf(g, ns, keyName)
				g.Expect(recs).To(HaveLen(1), "exactly one record")
				raw := string(secret.Data[authv1alpha1.SecretKeyAPIKey])
				g.Expect(recs[0].Spec.Hash).To(Equal(keys.Hash(raw)), "the working key is the delivered key")
				g.Expect(recs[0].Spec.Pending).To(BeFalse(), "and it authenticates")
				g.Expect(recs[0].Name).To(Equal(recs[0].Spec.Hash))
				g.Expect(recs[0].Spec.KeyUID).To(Equal(string(key.UID)))
				g.Expect(key.Status.KeyHint).To(Equal(keys.Hint(raw)))
			})
		}
	}
}

// TestObservedGenerationOnlyForPassesThatSucceeded revokes an Active key
// and fails the pass's first write: status must not claim the new
// generation (Argo CD's health check trusts observedGeneration with
// Ready), and the next pass that succeeds says Revoked for it.
func TestObservedGenerationOnlyForPassesThatSucceeded(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	nn := types.NamespacedName{Namespace: ns, Name: "k"}
	_, err := reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 3)
	g.Expect(err).NotTo(HaveOccurred())
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	active := key.Generation

	base := key.DeepCopy()
	key.Spec.Revoked = true
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	faulty := &faults{failAt: 1}
	_, err = directReconciler(faulty.client(t), clk).Reconcile(ctx, ctrl.Request{NamespacedName: nn})
	g.Expect(err).To(MatchError(ContainSubstring(errInjected.Error())))

	key = getKey(g, ns, "k")
	g.Expect(key.Generation).To(BeNumerically(">", active))
	g.Expect(key.Status.ObservedGeneration).To(Equal(active), "a failed pass does not stamp the generation it did not reconcile")

	_, err = reconcileUntilQuiet(directReconciler(env.Client, clk), nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	key = getKey(g, ns, "k")
	g.Expect(key.Status.ObservedGeneration).To(Equal(key.Generation))
	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseRevoked))
}

func TestExpiryAtItsInstant(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	expiresAt := metav1.NewTime(clk.Now().Add(5 * time.Minute))
	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{ExpiresAt: &expiresAt}))).To(Succeed())
	nn := types.NamespacedName{Namespace: ns, Name: "k"}
	r := directReconciler(env.Client, clk)

	res, err := reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(getKey(g, ns, "k").Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	g.Expect(res.RequeueAfter).To(Equal(5*time.Minute), "it looks again exactly at expiry, not by polling")
	g.Expect(getRecord(g, getKey(g, ns, "k")).Spec.ExpiresAt.Equal(&expiresAt)).To(BeTrue())

	clk.Step(5*time.Minute - time.Second)
	res, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(getKey(g, ns, "k").Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	g.Expect(res.RequeueAfter).To(Equal(time.Second))

	clk.Step(time.Second)
	_, err = reconcileUntilQuiet(r, nn, 1)
	g.Expect(err).NotTo(HaveOccurred())
	key := getKey(g, ns, "k")
	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseExpired))
	g.Expect(key.Status.Conditions).To(ContainElement(And(
		HaveField("Type", authv1alpha1.ConditionReady),
		HaveField("Status", metav1.ConditionFalse),
		HaveField("Reason", authv1alpha1.ReasonExpired))))
}

func TestRecordRetentionAndOrphans(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	r := &ApiKeyRecordReconciler{Client: env.Client, Index: verifier.New(clk, 0), APIReader: env.Client, Clock: clk, Retention: 90 * 24 * time.Hour}
	newRecord := func(g Gomega, ns string, revoked bool) *authv1alpha1.ApiKeyRecord {
		rec := &authv1alpha1.ApiKeyRecord{
			ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(ns)},
			Spec: authv1alpha1.ApiKeyRecordSpec{
				Hash: keys.Hash(ns), Tenant: ns, KeyName: "gone", KeyUID: "uid-of-a-deleted-key",
				Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
			},
		}
		if revoked {
			at := metav1.NewTime(clk.Now())
			rec.Spec.Revoked, rec.Spec.RevokedAt, rec.Spec.RevocationReason = true, &at, authv1alpha1.RevocationDeleted
		}
		g.Expect(env.Client.Create(ctx, rec)).To(Succeed())
		return rec
	}
	pass := func(g Gomega, rec *authv1alpha1.ApiKeyRecord) ctrl.Result {
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: rec.Name}})
		g.Expect(err).NotTo(HaveOccurred())
		return res
	}

	t.Run("a revoked record of a deleted key is kept for the retention, then deleted", func(t *testing.T) {
		g := NewWithT(t)
		rec := newRecord(g, env.Namespace(t), true)
		g.Expect(pass(g, rec).RequeueAfter).To(Equal(90 * 24 * time.Hour))
		clk.Step(90*24*time.Hour - time.Second)
		g.Expect(pass(g, rec).RequeueAfter).To(Equal(time.Second))
		clk.Step(time.Second)
		pass(g, rec)
		err := env.Client.Get(ctx, types.NamespacedName{Name: rec.Name}, &authv1alpha1.ApiKeyRecord{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
	})
	t.Run("an active record whose key vanished is revoked as orphaned", func(t *testing.T) {
		g := NewWithT(t)
		rec := newRecord(g, env.Namespace(t), false)
		pass(g, rec)
		got := &authv1alpha1.ApiKeyRecord{}
		g.Expect(env.Client.Get(ctx, types.NamespacedName{Name: rec.Name}, got)).To(Succeed())
		g.Expect(got.Spec.Revoked).To(BeTrue())
		g.Expect(got.Spec.RevocationReason).To(Equal(authv1alpha1.RevocationOrphaned))
	})
}
