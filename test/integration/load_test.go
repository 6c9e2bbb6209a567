package integration

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/usage"
)

// BenchmarkExecutionsLoad is a load run: 8 services of one tenant report
// batches of 100 executions for 10 seconds. It prints the executions per
// second accepted (acknowledged, hence durable) and the API writes per
// second they caused.
//
//	go test -run '^$' -bench ExecutionsLoad -benchtime 1x ./test/integration/
func BenchmarkExecutionsLoad(b *testing.B) {
	const reporters, per, duration = 8, 100, 10 * time.Second
	for range b.N {
		ns := env.Namespace(b)
		_, raw := mint(b, ns, "svc", authv1alpha1.ApiKeySpec{})
		writesBefore := ledgerWrites("written")
		conflictsBefore := ledgerWrites("conflict")
		var accepted, batches atomic.Int64
		started := time.Now().UTC()
		var wg sync.WaitGroup
		for r := range reporters {
			wg.Go(func() {
				for n := 0; time.Since(started) < duration; n++ {
					batch := usage.Batch{IdempotencyKey: fmt.Sprintf("%d-%d", r, n)}
					for i := range per {
						batch.Executions = append(batch.Executions, execution(fmt.Sprintf("%d-%d-%d", r, n, i), usage.Succeeded, started, time.Second))
					}
					if status, body := report(b, raw, batch); status != http.StatusOK {
						b.Errorf("status %d: %s", status, body)
						return
					}
					accepted.Add(per)
					batches.Add(1)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(started).Seconds()
		writes := ledgerWrites("written") - writesBefore
		b.ReportMetric(float64(accepted.Load())/elapsed, "executions/s")
		b.ReportMetric(writes/elapsed, "api-writes/s")
		b.Logf("FIGURE %d executions in %d batches accepted in %.1fs: %.0f executions/s, %.1f ledger writes/s (%.4f writes per execution), %.0f conflicts retried",
			accepted.Load(), batches.Load(), elapsed, float64(accepted.Load())/elapsed, writes/elapsed, writes/float64(accepted.Load()), ledgerWrites("conflict")-conflictsBefore)
	}
}
