package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/internal/usage/store"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// TestUsageWindowRollsOverAtUTCMidnight summarises a ledger with an injected
// clock: the Usage appears with the first ApiKey, looks again at midnight,
// and days leave the window as it rolls.
func TestUsageWindowRollsOverAtUTCMidnight(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC))
	index := watchedIndex(t, ns)
	r := &UsageReconciler{Client: env.Client, Index: index, Clock: clk}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}}

	_, err := r.Reconcile(ctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.Client.Get(ctx, req.NamespacedName, &authv1alpha1.Usage{})).NotTo(Succeed(), "no Usage without an ApiKey")

	g.Expect(env.Client.Create(ctx, newKey(ns, "k", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	waitCounted(g, index, ns)
	ledgers := &store.Store{Client: env.Client, Reader: env.Client, Clock: clk}
	started := time.Date(2026, 11, 16, 9, 0, 0, 0, time.UTC) // six days ago
	finished := started.Add(3 * time.Second)
	_, err = ledgers.Report(ctx, ns, "svc", &usage.Batch{IdempotencyKey: "b", Executions: []usage.Execution{
		{ID: "old", State: usage.Succeeded, StartedAt: started, FinishedAt: &finished},
		{ID: "now", State: usage.Running, StartedAt: clk.Now().Add(-time.Hour)},
	}})
	g.Expect(err).NotTo(HaveOccurred())

	u := &authv1alpha1.Usage{}
	pass := func() time.Duration { return usagePass(g, r, req, u) }
	g.Expect(pass()).To(Equal(6*time.Hour + time.Second))
	base := u.DeepCopy()
	u.Spec.WindowDays = 7
	g.Expect(env.Client.Patch(ctx, u, client.MergeFrom(base))).To(Succeed())
	pass()
	g.Expect(u.Status.Executions).To(Equal(int64(2)))
	g.Expect(u.Status.InFlight).To(Equal(int64(1)))
	g.Expect(u.Status.Days).To(HaveLen(7))
	g.Expect(u.Status.Days[0].Date).To(Equal("2026-11-16"))
	g.Expect(u.Status.ObservedGeneration).To(Equal(u.Generation))
	updated := u.Status.UpdatedAt

	// Nothing changed: no write, so no hot loop on its own status.
	pass()
	g.Expect(u.Status.UpdatedAt).To(Equal(updated))

	clk.SetTime(time.Date(2026, 11, 23, 0, 0, 1, 0, time.UTC))
	pass()
	g.Expect(u.Status.Days[0].Date).To(Equal("2026-11-17"))
	g.Expect(u.Status.Executions).To(Equal(int64(1)), "the sixth day back left the window")
	g.Expect(u.Status.SuccessRate).To(BeEmpty())
	g.Expect(u.Status.WindowStart.Time.Equal(time.Date(2026, 11, 17, 0, 0, 0, 0, time.UTC))).To(BeTrue())
	g.Expect(u.Status.UpdatedAt.Time).NotTo(Equal(updated.Time))
}

// TestUsageWritesAreSpacedOut holds a tenant's summary back for the write
// interval after a write, so that minting many keys writes the Usage a few
// times rather than once per key, and writes it once the interval is over.
func TestUsageWritesAreSpacedOut(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC))
	index := watchedIndex(t, ns)
	r := &UsageReconciler{Client: env.Client, Index: index, Clock: clk, WriteInterval: 5 * time.Second}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}}
	u := &authv1alpha1.Usage{}
	pass := func() time.Duration { return usagePass(g, r, req, u) }

	g.Expect(env.Client.Create(ctx, newKey(ns, "a", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	waitCounted(g, index, ns)
	ledgers := &store.Store{Client: env.Client, Reader: env.Client, Clock: clk}
	report := func(id string) {
		_, err := ledgers.Report(ctx, ns, "svc", &usage.Batch{IdempotencyKey: id, Executions: []usage.Execution{
			{ID: id, State: usage.Running, StartedAt: clk.Now()},
		}})
		g.Expect(err).NotTo(HaveOccurred())
	}
	pass()
	g.Expect(u.Status.UpdatedAt).NotTo(BeNil())
	written := u.ResourceVersion

	// More executions within the interval: nothing written, looked at
	// again when it is over.
	report("b")
	report("c")
	clk.Step(2 * time.Second)
	g.Expect(pass()).To(Equal(3 * time.Second))
	g.Expect(u.ResourceVersion).To(Equal(written))

	// A spec change is summarised at once.
	base := u.DeepCopy()
	u.Spec.WindowDays = 7
	g.Expect(env.Client.Patch(ctx, u, client.MergeFrom(base))).To(Succeed())
	pass()
	g.Expect(u.Status.Days).To(HaveLen(7))
	written = u.ResourceVersion

	report("d")
	g.Expect(pass()).To(Equal(5 * time.Second))
	g.Expect(u.ResourceVersion).To(Equal(written))
	clk.Step(5 * time.Second)
	pass()
	g.Expect(u.ResourceVersion).NotTo(Equal(written), "written once the interval is over")
	g.Expect(u.Status.InFlight).To(Equal(int64(3)))
}

// usagePass reconciles req, reads its Usage into u and returns the requeue.
// waitCounted waits until the index holds an ApiKey of ns.
func waitCounted(g Gomega, index *verifier.Verifier, ns string) {
	g.Eventually(func() bool {
		_, found := index.CountKeys(ns, time.Now())
		return found
	}).Should(BeTrue())
}

func usagePass(g Gomega, r *UsageReconciler, req ctrl.Request, u *authv1alpha1.Usage) time.Duration {
	ctx := context.Background()
	res, err := r.Reconcile(ctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.Client.Get(ctx, req.NamespacedName, u)).To(Succeed())
	return res.RequeueAfter
}
