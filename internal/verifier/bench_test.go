package verifier_test

import (
	"fmt"
	"testing"

	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
)

// BenchmarkVerify measures the verify path (checksum, hash, lookup) with
// 10,000 and 100,000 keys in the index.
//
//	go test -run '^$' -bench Verify ./internal/verifier/
func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			v, raws := verifiertest.Populated(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				if _, err := v.Verify(raws[i%len(raws)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
