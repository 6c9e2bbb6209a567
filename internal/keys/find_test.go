package keys

import (
	"crypto/rand"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	k1, _ := Generate(rand.Reader, Prefixed)
	k2, _ := Generate(rand.Reader, Prefixed)
	broken := k2[:20] + flip(k2[20]) + k2[21:]
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"a key in an env file is found", "API_KEY=" + k1 + "\n", []string{Hint(k1)}},
		{"two keys in quotes are both found", `a: "` + k1 + `", b: '` + k2 + `'`, []string{Hint(k1), Hint(k2)}},
		{"a key with a typo is not a key", "token " + broken, nil},
		{"a key inside a longer word is not a key", "x" + k1, nil},
		{"a key followed by more key characters is not a key", k1 + "A", nil},
		{"lk_ noise of the right length is not a key", "lk_" + strings.Repeat("a", 49), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Find([]byte(tt.text))
			if len(got) != len(tt.want) {
				t.Fatalf("found %d, want %d", len(got), len(tt.want))
			}
			for i, m := range got {
				if m.Hint != tt.want[i] {
					t.Fatalf("match %d is %s, want %s", i, m.Hint, tt.want[i])
				}
			}
		})
	}
}

// TestMillionKeys generates a million keys: no collision, every checksum
// valid, and every one-character mutation of a thousand of them refused
// before any lookup.
func TestMillionKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("a million keys: not in -short")
	}
	const n = 1_000_000
	seen := make(map[string]struct{}, n)
	collisions := 0
	var sample []string
	for i := range n {
		k, err := Generate(rand.Reader, Prefixed)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(k); err != nil {
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
		for i := len(Prefix); i < len(k); i++ {
			for j := 0; j < len(base62); j++ {
				if base62[j] == k[i] {
					continue
				}
				mutations++
				if _, err := Parse(k[:i] + string(base62[j]) + k[i+1:]); err != nil {
					refused++
				}
			}
		}
	}
	t.Logf("FIGURE %d keys: %d collisions; %d of %d one-character mutations refused before lookup (%.4f%%)",
		n, collisions, refused, mutations, 100*float64(refused)/float64(mutations))
	if collisions != 0 || refused != mutations {
		t.Fatal("collisions or accepted mutations")
	}
}
