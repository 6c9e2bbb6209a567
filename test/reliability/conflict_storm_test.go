package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// TestConflictStorm (case 4): 20 goroutines keep patching labels and
// annotations of 50 ApiKeys while the controller works and some are
// revoked: no status update is lost, no key is minted twice, and the
// reconcile count stays bounded (no loop on its own status writes).
func TestConflictStorm(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	const n, writers, revokeEvery = 50, 20, 5
	names := make([]string, 0, n)
	secrets := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("k%02d", i)
		_, raw := mint(t, ns, name)
		names = append(names, name)
		secrets[name] = keys.Hash(raw)
	}
	before := reconciles(t)

	var patches atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := &authv1alpha1.ApiKey{}
				key.Namespace, key.Name = ns, names[rand.IntN(n)]
				patch := fmt.Sprintf(`{"metadata":{"labels":{"storm-%d":"%d"},"annotations":{"touched-by":"writer-%d"}}}`, w, i, w)
				if env.Client.Patch(ctx, key, client.RawPatch("application/merge-patch+json", []byte(patch))) == nil {
					patches.Add(1)
				}
			}
		})
	}
	for i := 0; i < n; i += revokeEvery {
		key := &authv1alpha1.ApiKey{}
		g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: names[i]}, key)).To(Succeed())
		base := key.DeepCopy()
		key.Spec.Revoked = true
		g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(5 * time.Second)
	close(stop)
	wg.Wait()

	g.Eventually(func(g Gomega) {
		for i, name := range names {
			key := &authv1alpha1.ApiKey{}
			g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, key)).To(Succeed())
			want := authv1alpha1.PhaseActive
			if i%revokeEvery == 0 {
				want = authv1alpha1.PhaseRevoked
			}
			g.Expect(key.Status.Phase).To(Equal(want), name)
			g.Expect(key.Status.ObservedGeneration).To(Equal(key.Generation), name)
			var records authv1alpha1.ApiKeyRecordList
			g.Expect(env.Client.List(ctx, &records, client.MatchingLabels{authv1alpha1.LabelTenant: ns, authv1alpha1.LabelKeyName: name})).To(Succeed())
			g.Expect(records.Items).To(HaveLen(1), "minted once")
			g.Expect(records.Items[0].Spec.Hash).To(Equal(secrets[name]))
			g.Expect(records.Items[0].Spec.Revoked).To(Equal(want == authv1alpha1.PhaseRevoked))
		}
	}).WithTimeout(60 * time.Second).Should(Succeed())
	per := (reconciles(t) - before) / n
	g.Expect(per).To(BeNumerically("<", 5), "a bounded number of passes per key")
	record(t, "04 conflict storm", fmt.Sprintf("%.2f reconciles per ApiKey while %d label/annotation patches hit 50 keys (10 revoked); no status lost, none minted twice",
		per, patches.Load()))
}

// reconciles is the ApiKey controller's reconcile count so far.
func reconciles(t *testing.T) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "controller") == "apikey" {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
