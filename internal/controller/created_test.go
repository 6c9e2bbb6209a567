package controller

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// countingRecordLists is the API server's reader, counting its record lists.
func countingRecordLists(t *testing.T, lists *atomic.Int32) client.Reader {
	t.Helper()
	return interceptor.NewClient(directClient(t), interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*authv1alpha1.ApiKeyRecordList); ok {
				lists.Add(1)
			}
			return c.List(ctx, list, opts...)
		},
	})
}

func directClient(t testing.TB) client.WithWatch {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMintingListsNoRecords mints without listing records at the API
// server (a list across every record in the cluster, on every new key, made
// minting N keys cost O(N²)), and still never mints a second key for an
// ApiKey when the cache is behind: its own fresh records are read by name,
// a delivered key's missing records are confirmed by a list, and a key its
// Secret already holds is looked up by its hash.
func TestMintingListsNoRecords(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now())
	var lists atomic.Int32
	reconciler := func() *ApiKeyReconciler {
		r := directReconciler(directClient(t), clk)
		r.Index = verifier.New(clk, 0) // fed by no watch: always behind
		r.APIReader = countingRecordLists(t, &lists)
		return r
	}
	pass := func(r *ApiKeyReconciler, name string) error {
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
		return err
	}

	r := reconciler()
	g.Expect(env.Client.Create(ctx, newKey(ns, "a", authv1alpha1.ApiKeySpec{}))).To(Succeed())
	g.Expect(pass(r, "a")).To(Succeed())
	key := getKey(g, ns, "a")
	g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	g.Expect(lists.Load()).To(BeZero(), "a new key is minted without listing records")
	hint := key.Status.KeyHint

	// A spec edit right after the mint, the cache still behind: the pass
	// reads its own record by name.
	base := key.DeepCopy()
	key.Spec.Scopes = []string{"read"}
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	g.Expect(pass(r, "a")).To(Succeed())
	g.Expect(recordsOf(g, ns, "a")).To(HaveLen(1), "no second key")
	g.Expect(getKey(g, ns, "a").Status.KeyHint).To(Equal(hint))
	g.Expect(lists.Load()).To(BeZero())

	// Another process, whose cache is behind: the status says a key was
	// delivered, so the miss is confirmed at the API server.
	g.Expect(pass(reconciler(), "a")).To(Succeed())
	g.Expect(recordsOf(g, ns, "a")).To(HaveLen(1), "no second key")
	g.Expect(getKey(g, ns, "a").Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	g.Expect(lists.Load()).To(Equal(int32(1)))

	// Its status not written yet either (the minting process died first):
	// the Secret holds the key, whose record is read by its hash, and the
	// pass waits for the cache rather than calling the Secret not ours.
	key = getKey(g, ns, "a")
	base = key.DeepCopy()
	key.Status = authv1alpha1.ApiKeyStatus{}
	g.Expect(env.Client.Status().Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	err := pass(reconciler(), "a")
	g.Expect(err).To(MatchError(ContainSubstring("not in the key index yet")))
	g.Expect(recordsOf(g, ns, "a")).To(HaveLen(1), "no second key")
	g.Expect(getKey(g, ns, "a").Status.Phase).NotTo(Equal(authv1alpha1.PhaseFailed))
}

// TestCreatedRecordsAreForgottenOnceCached mints keys through a running
// manager: what it remembers of the records it created goes as the cache
// shows them, so that it holds nothing per key once minting is over.
func TestCreatedRecordsAreForgottenOnceCached(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	m := startManager(t, ns, managerOptions{})
	for i := range 20 {
		g.Expect(env.Client.Create(ctx, newKey(ns, fmt.Sprintf("k%d", i), authv1alpha1.ApiKeySpec{}))).To(Succeed())
	}
	g.Eventually(func(g Gomega) {
		for i := range 20 {
			g.Expect(getKey(g, ns, fmt.Sprintf("k%d", i)).Status.Phase).To(Equal(authv1alpha1.PhaseActive))
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) {
		for i := range 20 {
			uid := getKey(g, ns, fmt.Sprintf("k%d", i)).UID
			g.Expect(m.reconciler.created.names.Of(uid)).To(BeEmpty())
		}
	}).WithTimeout(10 * time.Second).Should(Succeed())
}
