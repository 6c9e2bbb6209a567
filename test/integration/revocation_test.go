package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// TestRevocationIsImmediate revokes and deletes keys while they are in use:
// no request that starts after the API call returned may be accepted. A
// second verifier, standing for a replica that did not get the admission
// call, measures how long its watch takes to catch up.
func TestRevocationIsImmediate(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()

	// The other replica: its own cache and index, no admission webhook.
	replicaCache, err := cache.New(env.Config, cache.Options{Scheme: env.Scheme, DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		t.Fatal(err)
	}
	replica := verifier.New(clock.RealClock{}, verifier.DefaultFenceTTL)
	if err := replica.Watch(ctx, replicaCache); err != nil {
		t.Fatal(err)
	}
	cacheCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = replicaCache.Start(cacheCtx) }()
	NewWithT(t).Eventually(replica.Synced).Should(BeTrue())

	const keys = 20
	var lags []time.Duration
	for i := range keys {
		name := fmt.Sprintf("k%02d", i)
		key, raw := mint(t, ns, name, authv1alpha1.ApiKeySpec{})
		NewWithT(t).Eventually(func() error { _, err := replica.Verify(raw); return err }).Should(Succeed())

		// Keep the key busy while it is revoked, as a real caller would.
		var accepted atomic.Int64
		busy, quit := sync.WaitGroup{}, make(chan struct{})
		busy.Go(func() {
			for {
				select {
				case <-quit:
					return
				default:
					if authorize(t, raw) != http.StatusOK {
						return
					}
					accepted.Add(1)
				}
			}
		})

		if i%2 == 0 {
			revoke(t, key)
		} else {
			NewWithT(t).Expect(env.Client.Delete(ctx, key)).To(Succeed())
		}
		returned := time.Now()
		// The first request that starts after the call returned is refused.
		NewWithT(t).Expect(authorize(t, raw)).To(Equal(http.StatusUnauthorized), "key %s worked after its revocation returned", name)
		close(quit)
		busy.Wait()

		for {
			if _, err := replica.Verify(raw); err != nil {
				lags = append(lags, time.Since(returned))
				break
			}
			if time.Since(returned) > 10*time.Second {
				t.Fatalf("the other replica still accepts %s after 10s", name)
			}
			time.Sleep(100 * time.Microsecond)
		}
		NewWithT(t).Expect(authorize(t, raw)).To(Equal(http.StatusUnauthorized))
	}
	slices.Sort(lags)
	t.Logf("FIGURE replica without the admission call stops accepting a revoked key %v (median) / %v (max) after the API call returns, over %d keys",
		lags[len(lags)/2].Round(10*time.Microsecond), lags[len(lags)-1].Round(10*time.Microsecond), keys)
}

// TestLastUseIsWrittenInBatches uses a key for several intervals and checks
// it was written at most once per interval, to the ApiKey and its record.
func TestLastUseIsWrittenInBatches(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	ctx := context.Background()
	key, raw := mint(t, ns, "busy", authv1alpha1.ApiKeySpec{})
	g.Expect(key.Status.LastUsedAt).To(BeNil(), "unused keys show no last use")

	// Every distinct lastUsedAt the ApiKey shows is one write; polling
	// faster than the interval sees them all.
	seen := map[string]bool{}
	var mu sync.Mutex
	watching, quit := sync.WaitGroup{}, make(chan struct{})
	watching.Go(func() {
		for {
			k := &authv1alpha1.ApiKey{}
			if env.Client.Get(ctx, client.ObjectKeyFromObject(key), k) == nil && k.Status.LastUsedAt != nil {
				mu.Lock()
				seen[k.Status.LastUsedAt.String()] = true
				mu.Unlock()
			}
			select {
			case <-quit:
				return
			case <-time.After(lastUsedInterval / 20):
			}
		}
	})
	start := time.Now()
	requests := 0
	for time.Since(start) < 3*lastUsedInterval {
		g.Expect(authorize(t, raw)).To(Equal(http.StatusOK))
		requests++
	}
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(key), key)).To(Succeed())
		g.Expect(key.Status.LastUsedAt).NotTo(BeNil())
	}).WithTimeout(5 * lastUsedInterval).Should(Succeed())
	time.Sleep(lastUsedInterval + lastUsedInterval/2) // the last flush
	close(quit)
	watching.Wait()
	elapsed := time.Since(start)
	written := len(seen)
	intervals := int(elapsed/lastUsedInterval) + 1
	t.Logf("FIGURE %d requests in %v gave %d last-use writes (at most one per key per %v)", requests, elapsed.Round(time.Millisecond), written, lastUsedInterval)
	g.Expect(written).To(BeNumerically("<=", intervals))
	g.Expect(requests).To(BeNumerically(">", 10*intervals), "enough requests to show batching")

	rec := &authv1alpha1.ApiKeyRecord{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: string(key.UID)}, rec)).To(Succeed())
	g.Expect(rec.Status.LastUsedAt).NotTo(BeNil())
	out, _, err := env.Kubectl("", "get", "apikeys", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(MatchRegexp(`(?m)^NAME\s+KEY\s+STATUS\s+CREATED\s+LAST USED$`))
	g.Expect(out).To(MatchRegexp(`busy\s+\S+…\S+\s+Active\s+\S+\s+\d+s`))
}
