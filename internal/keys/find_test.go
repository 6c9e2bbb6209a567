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
