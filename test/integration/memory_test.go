package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// BenchmarkManagerMemory starts the real manager binary against the test
// API server holding 0, 10,000 and 100,000 key records and prints its
// resident memory once its index has synced (/readyz).
//
//	go test -run '^$' -bench ManagerMemory -benchtime 1x -timeout 30m ./test/integration/
func BenchmarkManagerMemory(b *testing.B) {
	manager := env.BuildManager(b)
	created := 0
	for range b.N {
		for _, n := range []int{0, 10_000, 100_000} {
			createRecords(b, created, n)
			created = n
			rss := manager.ReadyRSS(b)
			b.Logf("FIGURE manager resident memory with %d key records: %.1f MiB", n, float64(rss)/(1<<20))
			b.ReportMetric(float64(rss)/(1<<20), fmt.Sprintf("MiB-at-%d-records", n))
		}
	}
}

// createRecords creates revoked records from index from to to: revoked and
// within retention, so no controller writes to them, and the verifier
// indexes them all the same.
func createRecords(b *testing.B, from, to int) {
	ctx := context.Background()
	ns := fmt.Sprintf("memory-%d", time.Now().UnixNano())
	at := metav1.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				hash := keys.Hash(fmt.Sprintf("%s-%d", ns, i))
				rec := &authv1alpha1.ApiKeyRecord{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("mem-%d", i)},
					Spec: authv1alpha1.ApiKeyRecordSpec{
						Hash: hash, Tenant: ns, KeyName: fmt.Sprintf("key-%d", i), KeyUID: fmt.Sprintf("uid-%d", i),
						Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
						Revoked: true, RevokedAt: &at, RevocationReason: authv1alpha1.RevocationDeleted,
					},
				}
				if err := env.Client.Create(ctx, rec); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
}
