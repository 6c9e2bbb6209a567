package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// TestRevocationIsImmediate revokes (and deletes) keys while several
// goroutines hammer /authorize with them: no request that starts after the
// API call returned may be accepted. Over 50 trials it measures the time
// from the call returning to the first refusal, for the replica that got
// the admission call (and fenced the key) and for a second verifier fed
// only by its watch, standing for a replica that did not.
//
//	go test -run RevocationIsImmediate -v ./test/integration/ | grep FIGURE
func TestRevocationIsImmediate(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()

	opts := operator.CacheOptions()
	opts.Scheme = env.Scheme
	replicaCache, err := cache.New(env.Config, opts)
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

	const trials, hammers = 50, 4
	fencing, watching := make([]time.Duration, 0, trials), make([]time.Duration, 0, trials)
	for i := range trials {
		name := fmt.Sprintf("k%02d", i)
		key, raw := mint(t, ns, name, authv1alpha1.ApiKeySpec{})
		NewWithT(t).Eventually(func() error { _, err := replica.Verify(raw); return err }).Should(Succeed())

		type call struct {
			start  time.Time
			status int
		}
		var mu sync.Mutex
		var calls []call
		var wg sync.WaitGroup
		quit := make(chan struct{})
		for range hammers {
			wg.Go(func() {
				for {
					select {
					case <-quit:
						return
					default:
					}
					start := time.Now()
					status := authorize(t, raw)
					mu.Lock()
					calls = append(calls, call{start, status})
					mu.Unlock()
				}
			})
		}
		time.Sleep(5 * time.Millisecond)
		if i%2 == 0 {
			revoke(t, key)
		} else {
			NewWithT(t).Expect(env.Client.Delete(ctx, key)).To(Succeed())
		}
		returned := time.Now()
		// One request that surely starts after the call returned, however
		// the hammering goroutines are scheduled.
		status := authorize(t, raw)
		mu.Lock()
		calls = append(calls, call{returned.Add(time.Nanosecond), status})
		mu.Unlock()
		for {
			if _, err := replica.Verify(raw); err != nil {
				watching = append(watching, time.Since(returned))
				break
			}
			if time.Since(returned) > 10*time.Second {
				t.Fatalf("the watching verifier still accepts %s after 10s", name)
			}
			time.Sleep(50 * time.Microsecond)
		}
		time.Sleep(10 * time.Millisecond)
		close(quit)
		wg.Wait()

		firstRefusal := time.Duration(-1)
		for _, c := range calls {
			if !c.start.After(returned) {
				continue
			}
			if c.status == http.StatusOK {
				t.Fatalf("%s: a request started %v after the revocation returned was accepted", name, c.start.Sub(returned))
			}
			if d := c.start.Sub(returned); firstRefusal < 0 || d < firstRefusal {
				firstRefusal = d
			}
		}
		// The first request that started after the call returned was refused:
		// the fencing replica's propagation time is zero by construction.
		if firstRefusal < 0 {
			t.Fatalf("%s: no request started after the revocation returned", name)
		}
		fencing = append(fencing, 0)
	}
	t.Logf("FIGURE revocation propagation over %d trials (%d goroutines hammering): fencing replica %s; watch-only replica %s",
		trials, hammers, spread(fencing), spread(watching))
}

// spread formats median, p90 and max of durations.
func spread(ds []time.Duration) string {
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("median %v, p90 %v, max %v", q(0.5), q(0.9), ds[len(ds)-1].Round(10*time.Microsecond))
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

	var recs authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(ctx, &recs, client.MatchingLabels{authv1alpha1.LabelKeyUID: string(key.UID)})).To(Succeed())
	g.Expect(recs.Items).To(HaveLen(1))
	g.Expect(recs.Items[0].Status.LastUsedAt).NotTo(BeNil())
	out, _, err := env.Kubectl("", "get", "apikeys", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(MatchRegexp(`(?m)^NAME\s+KEY\s+STATUS\s+CREATED\s+LAST USED$`))
	g.Expect(out).To(MatchRegexp(`busy\s+\S+…\S+\s+Active\s+\S+\s+\d+s`))
}
