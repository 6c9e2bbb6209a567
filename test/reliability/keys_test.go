package reliability

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/latchkey-dev/latchkey/internal/keys"
)

// base62 is the alphabet of Prefixed keys.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// TestMillionKeys (case 11) generates a million keys: no collision, every checksum
// valid, and every one-character mutation of a thousand of them refused
// before any lookup.
func TestMillionKeys(t *testing.T) {
	const n = 1_000_000
	seen := make(map[string]struct{}, n)
	collisions := 0
	var sample []string
	for i := range n {
		k, err := keys.Generate(rand.Reader, keys.Prefixed)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keys.Parse(k); err != nil {
			t.Fatalf("a generated key fails its own checksum: %v", err)
		}
		if _, dup := seen[k]; dup {
			collisions++
		}
		seen[k] = struct{}{}
		if i%1000 == 0 {
			sample = append(sample, k)
		}
	}
	mutations, refused := 0, 0
	for _, k := range sample {
		for i := len(keys.Prefix); i < len(k); i++ {
			for j := 0; j < len(base62); j++ {
				if base62[j] == k[i] {
					continue
				}
				mutations++
				if _, err := keys.Parse(k[:i] + string(base62[j]) + k[i+1:]); err != nil {
					refused++
				}
			}
		}
	}
	if collisions != 0 || refused != mutations {
		t.Error("collisions or accepted mutations")
	}
	record(t, "11 key format", fmt.Sprintf("%d keys: %d collisions, every checksum valid; %d of %d one-character mutations of %d keys refused before lookup (%.4f%%)",
		n, collisions, refused, mutations, len(sample), 100*float64(refused)/float64(mutations)))
}
