package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// BenchmarkMint1000 applies 1,000 ApiKeys at once and reports the seconds
// until all are Active, and keys per second: once with cmd/main.go's default
// client rate limits (--kube-api-qps 50, --kube-api-burst 100), where the
// client limit is the bound, and once with them raised tenfold, with more
// workers, to show what the API server itself allows.
//
//	make bench    (or: go test -run '^$' -bench Mint1000 -benchtime 1x ./internal/controller/)
func BenchmarkMint1000(b *testing.B) {
	b.Run("default-limits", func(b *testing.B) {
		benchmarkMint(b, managerOptions{maxConcurrent: DefaultMaxConcurrentReconciles, defaultRateLimits: true})
	})
	b.Run("raised-limits", func(b *testing.B) {
		benchmarkMint(b, managerOptions{maxConcurrent: 16})
	})
}

func benchmarkMint(b *testing.B, o managerOptions) {
	const n = 1000
	for range b.N {
		ns := env.Namespace(b)
		startManager(b, ns, o)
		ctx := context.Background()
		start := time.Now()

		var wg sync.WaitGroup
		names := make(chan int)
		for range 16 {
			wg.Go(func() {
				for i := range names {
					if err := env.Client.Create(ctx, newKey(ns, fmt.Sprintf("key-%04d", i), authv1alpha1.ApiKeySpec{})); err != nil {
						b.Error(err)
					}
				}
			})
		}
		for i := range n {
			names <- i
		}
		close(names)
		wg.Wait()
		applied := time.Since(start)

		for {
			var list authv1alpha1.ApiKeyList
			if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				b.Fatal(err)
			}
			active := 0
			for _, k := range list.Items {
				if k.Status.Phase == authv1alpha1.PhaseActive {
					active++
				}
			}
			if active == n {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Fatalf("only %d of %d keys Active after 10 minutes", active, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.ReportMetric(elapsed.Seconds(), "s-until-all-active")
		b.ReportMetric(n/elapsed.Seconds(), "keys/s")
		b.ReportMetric(applied.Seconds(), "s-to-apply")
		b.Logf("%d ApiKeys applied in %.1fs, all Active after %.1fs: %.0f keys/s", n, applied.Seconds(), elapsed.Seconds(), n/elapsed.Seconds())
	}
}
