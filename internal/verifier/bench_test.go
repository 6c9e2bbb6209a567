package verifier_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
)

// BenchmarkVerify measures the verify path (checksum, hash, lookup) with
// 10,000, 100,000 and 1,000,000 keys in the index, and what the index and
// the objects it holds (an ApiKey and a record per key, as small as
// verifiertest makes them) keep per key: on the heap, the benchmark's own
// raw keys (about 96 bytes each) included, and off it (the slabs).
//
//	go test -run '^$' -bench Verify ./internal/verifier/
func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			before, mapped := liveHeap(), verifier.MappedBytes()
			v, raws := verifiertest.Populated(b, n)
			perKey := float64(liveHeap()-before) / float64(n)
			offHeap := float64(verifier.MappedBytes()-mapped) / float64(n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := v.Verify(raws[i%len(raws)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(perKey, "heap-B/key")
			b.ReportMetric(offHeap, "offheap-B/key")
			runtime.KeepAlive(v)
		})
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkCollect measures a full garbage collection with 100,000 and
// 1,000,000 keys in the index: what the index adds to every collection's
// marking, which under load runs several times a second.
//
//	go test -run '^$' -bench Collect -benchtime 20x ./internal/verifier/
func BenchmarkCollect(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			v, _ := verifiertest.Populated(b, n)
			for b.Loop() {
				runtime.GC()
			}
			runtime.KeepAlive(v)
		})
	}
}
