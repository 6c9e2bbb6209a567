package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
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

// TestKilledWhileMinting (case 1): the real manager binary is killed
// (SIGKILL) at random points while 500 ApiKeys are minted, and restarted,
// five times. Afterwards every ApiKey is Active with one Secret and one
// active record whose hash is the Secret's key, and no other record of the
// tenant is active.
func TestKilledWhileMinting(t *testing.T) {
	slow(t)
	g := NewWithT(t)
	ctx := context.Background()
	manager := managerInsteadOfOperator(t)
	args := append(lk.ServingFlags(), "--leader-elect=false")
	p := manager.Start(t, nil, args...)
	p.WaitReady(t, time.Minute)

	ns := env.Namespace(t)
	const n, crashes = 500, 5
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("k%03d", i)}}
			// The webhook is down while the manager is: retry, as kubectl would be retried.
			for env.Client.Create(ctx, key) != nil {
				time.Sleep(50 * time.Millisecond)
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(key), &authv1alpha1.ApiKey{}); err == nil {
					break
				}
			}
		}
	})
	for range crashes {
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		p.Kill()
		p = manager.Start(t, nil, args...)
	}
	restarted := time.Now()
	wg.Wait()

	var converged time.Duration
	g.Eventually(func(g Gomega) {
		var list authv1alpha1.ApiKeyList
		g.Expect(env.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(n))
		for _, k := range list.Items {
			g.Expect(k.Status.Phase).To(Equal(authv1alpha1.PhaseActive), k.Name)
		}
		converged = time.Since(restarted)
	}).WithTimeout(5 * time.Minute).WithPolling(500 * time.Millisecond).Should(Succeed())

	var keysList authv1alpha1.ApiKeyList
	var records authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(ctx, &keysList, client.InNamespace(ns))).To(Succeed())
	g.Expect(env.Client.List(ctx, &records, client.MatchingLabels{authv1alpha1.LabelTenant: ns})).To(Succeed())
	byUID := map[string]*authv1alpha1.ApiKey{}
	for i := range keysList.Items {
		byUID[string(keysList.Items[i].UID)] = &keysList.Items[i]
	}
	perKey := map[string]int{}
	orphans, mismatched := 0, 0
	for _, r := range records.Items {
		if r.Spec.Revoked {
			continue
		}
		key, ok := byUID[r.Spec.KeyUID]
		if !ok {
			orphans++
			continue
		}
		perKey[key.Name]++
		secret := &corev1.Secret{}
		if env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: key.SecretName()}, secret) != nil ||
			keys.Hash(string(secret.Data[authv1alpha1.SecretKeyAPIKey])) != r.Spec.Hash || !metav1.IsControlledBy(secret, key) {
			mismatched++
		}
	}
	duplicates := 0
	for _, k := range keysList.Items {
		if perKey[k.Name] != 1 {
			duplicates++
		}
	}
	g.Expect(orphans).To(BeZero())
	g.Expect(duplicates).To(BeZero())
	g.Expect(mismatched).To(BeZero())
	record(t, "01 manager killed while minting", fmt.Sprintf("%d ApiKeys, %d SIGKILLs: %d orphans, %d keys without exactly one record, %d records not matching their Secret; all Active %.1fs after the last restart",
		n, crashes, orphans, duplicates, mismatched, converged.Seconds()))
}
