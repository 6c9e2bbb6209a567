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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// TestRevocationIsImmediate revokes (and deletes) keys while several
// goroutines hammer /authorize with them: no request that starts after the
// API call returned may be accepted. Over 50 trials it measures the time
// from the call returning to the first refusal, for the replica that got
// the admission call (and fenced the key) and for a second verifier fed
// only by its watch: what a replica would do without the fencing protocol
// (test/replicas holds every replica of the real thing to the promise).
//
//	go test -run 'RevocationIsImmediate|AreImmediate' -v ./test/integration/ | grep FIGURE
func TestRevocationIsImmediate(t *testing.T) {
	ctx := context.Background()
	takeAwayTrials(t, "revocation", authv1alpha1.ApiKeySpec{}, func(i int, key *authv1alpha1.ApiKey) {
		if i%2 == 0 {
			revoke(t, key)
		} else {
			NewWithT(t).Expect(env.Client.Delete(ctx, key)).To(Succeed())
		}
	}, authorize, func(id verifier.Identity, err error) bool { return err != nil })
}

// TestSuspensionScopeRemovalAndZeroGraceRotationAreImmediate: what else
// takes a key away — suspension, removing a scope a route requires, a
// rotation with a grace period of 0s — holds to the same promise.
func TestSuspensionScopeRemovalAndZeroGraceRotationAreImmediate(t *testing.T) {
	patch := func(t *testing.T, key *authv1alpha1.ApiKey, change func(*authv1alpha1.ApiKey)) {
		t.Helper()
		base := key.DeepCopy()
		change(key)
		NewWithT(t).Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
	}
	refused := func(_ verifier.Identity, err error) bool { return err != nil }
	t.Run("suspension", func(t *testing.T) {
		takeAwayTrials(t, "suspension", authv1alpha1.ApiKeySpec{}, func(_ int, key *authv1alpha1.ApiKey) {
			patch(t, key, func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true })
		}, authorize, refused)
	})
	t.Run("scope removal", func(t *testing.T) {
		takeAwayTrials(t, "scope removal", authv1alpha1.ApiKeySpec{Scopes: []string{"read", "write"}}, func(_ int, key *authv1alpha1.ApiKey) {
			patch(t, key, func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read"} })
		}, func(t testing.TB, raw string) int {
			return authorizeWith(t, raw, http.Header{protocol.HeaderScopeRequired: {"write"}})
		}, func(id verifier.Identity, err error) bool { return err != nil || !id.HasScope("write") })
	})
	t.Run("rotation with a grace period of 0s", func(t *testing.T) {
		takeAwayTrials(t, "0s rotation", authv1alpha1.ApiKeySpec{}, func(_ int, key *authv1alpha1.ApiKey) {
			// Later than the mint, which metav1.Time records to the second.
			at := metav1.NewTime(time.Now().Truncate(time.Second).Add(time.Second))
			patch(t, key, func(k *authv1alpha1.ApiKey) {
				k.Spec.Rotation = &authv1alpha1.RotationSpec{RequestedAt: &at, GracePeriod: &metav1.Duration{}}
			})
		}, authorize, refused)
	})
}

// takeAwayTrials mints a key per trial with spec, has four goroutines
// call it while takeAway changes it through the API, and fails if any
// call that started after the change returned succeeded. refused says
// whether a verifier fed only by its watch has caught up.
func takeAwayTrials(t *testing.T, what string, spec authv1alpha1.ApiKeySpec, takeAway func(i int, key *authv1alpha1.ApiKey),
	call func(t testing.TB, raw string) int, refused func(verifier.Identity, error) bool) {
	t.Helper()
	ns := env.Namespace(t)
	ctx := context.Background()

	watchClient, err := verifier.NewWatchClient(env.Config, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	replica := verifier.New(clock.RealClock{}, verifier.DefaultFenceTTL)
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	replica.Watch(watchCtx, watchClient)
	NewWithT(t).Eventually(replica.Synced).Should(BeTrue())

	const trials, hammers = 50, 4
	fencing, watching := make([]time.Duration, 0, trials), make([]time.Duration, 0, trials)
	for i := range trials {
		name := fmt.Sprintf("k%02d", i)
		key, raw := mint(t, ns, name, spec)
		NewWithT(t).Eventually(func() bool { return refused(replica.Verify(raw)) }).Should(BeFalse())
		NewWithT(t).Expect(call(t, raw)).To(Equal(http.StatusOK))

		type result struct {
			start  time.Time
			status int
		}
		var mu sync.Mutex
		var calls []result
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
					status := call(t, raw)
					mu.Lock()
					calls = append(calls, result{start, status})
					mu.Unlock()
				}
			})
		}
		time.Sleep(5 * time.Millisecond)
		takeAway(i, key)
		returned := time.Now()
		// One request that surely starts after the call returned, however
		// the hammering goroutines are scheduled.
		status := call(t, raw)
		mu.Lock()
		calls = append(calls, result{returned.Add(time.Nanosecond), status})
		mu.Unlock()
		for !refused(replica.Verify(raw)) {
			if time.Since(returned) > 10*time.Second {
				t.Fatalf("the watching verifier still accepts %s after 10s", name)
			}
			time.Sleep(50 * time.Microsecond)
		}
		watching = append(watching, time.Since(returned))
		time.Sleep(10 * time.Millisecond)
		close(quit)
		wg.Wait()

		firstRefusal := time.Duration(-1)
		for _, c := range calls {
			if !c.start.After(returned) {
				continue
			}
			if c.status == http.StatusOK {
				t.Fatalf("%s: a request started %v after the %s returned was accepted", name, c.start.Sub(returned), what)
			}
			if d := c.start.Sub(returned); firstRefusal < 0 || d < firstRefusal {
				firstRefusal = d
			}
		}
		// The first request that started after the call returned was refused:
		// the fencing replica's propagation time is zero by construction.
		if firstRefusal < 0 {
			t.Fatalf("%s: no request started after the %s returned", name, what)
		}
		fencing = append(fencing, 0)
	}
	t.Logf("FIGURE %s propagation over %d trials (%d goroutines hammering): fencing replica %s; watch-only replica %s",
		what, trials, hammers, spread(fencing), spread(watching))
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
