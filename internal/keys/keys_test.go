package keys

import (
	"bytes"
	"crypto/rand"
	"errors"
	"math/big"
	"strings"
	"testing"
	"testing/iotest"
)

func TestGenerate(t *testing.T) {
	tests := []struct {
		name   string
		random []byte
		format Format
		want   string
	}{
		{"all-zero material is a body of zeros and its checksum", make([]byte, 32), Prefixed, "lk_" + strings.Repeat("0", 43) + checksum(strings.Repeat("0", 43))},
		{"all-ones material still fits the 43-character body", bytes.Repeat([]byte{0xff}, 32), Prefixed, "lk_" + encodeBody(maxKey()) + checksum(encodeBody(maxKey()))},
		{"a Hex key is the material in lowercase hex", bytes.Repeat([]byte{0xab}, 32), Hex, strings.Repeat("ab", 32)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Generate(bytes.NewReader(tt.random), tt.format)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("Generate = %q, want %q", got, tt.want)
			}
			if f, err := Parse(got); err != nil || f != tt.format {
				t.Fatalf("Parse(Generate) = %v, %v", f, err)
			}
		})
	}
	if got := encodeBody(maxKey()); got[0] == '0' && strings.Trim(got, "0") == "" {
		t.Fatalf("the largest key encodes as %q", got)
	}
}

func maxKey() *big.Int { return new(big.Int).SetBytes(bytes.Repeat([]byte{0xff}, 32)) }

func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name   string
		random []byte
		format Format
	}{
		{"a short random source is an error", make([]byte, 31), Prefixed},
		{"an unknown format is an error", make([]byte, 32), Format("Base64")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Generate(bytes.NewReader(tt.random), tt.format); err == nil {
				t.Fatal("no error")
			}
		})
	}
	if _, err := Generate(iotest.ErrReader(errors.New("boom")), Hex); err == nil {
		t.Fatal("a failing random source is not an error")
	}
}

func TestParseRefuses(t *testing.T) {
	good, _ := Generate(rand.Reader, Prefixed)
	hexKey, _ := Generate(rand.Reader, Hex)
	tests := []struct {
		name string
		raw  string
		want error
	}{
		{"an empty key is malformed", "", ErrMalformed},
		{"a key with another prefix is malformed", "gh_" + good[3:], ErrMalformed},
		{"a truncated key is malformed", good[:len(good)-1], ErrMalformed},
		{"a key with a trailing newline is malformed", good + "\n", ErrMalformed},
		{"a key with a trailing space is malformed", good + " ", ErrMalformed},
		{"a key with a character outside base62 is malformed", good[:10] + "-" + good[11:], ErrMalformed},
		{"a key with one changed character fails its checksum", good[:10] + flip(good[10]) + good[11:], ErrChecksum},
		{"a key with a changed checksum fails it", good[:len(good)-1] + flip(good[len(good)-1]), ErrChecksum},
		{"uppercase hex is malformed", strings.ToUpper(hexKey), ErrMalformed},
		{"63 hex characters are malformed", hexKey[:63], ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.raw)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			if tt.raw != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.raw)) {
				t.Fatal("the error carries the key")
			}
		})
	}
}

func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

// TestEveryOneCharacterMutationIsRefused changes each character of a key to
// every other base62 character: no mutation may pass Parse.
func TestEveryOneCharacterMutationIsRefused(t *testing.T) {
	key, err := Generate(rand.Reader, Prefixed)
	if err != nil {
		t.Fatal(err)
	}
	mutations := 0
	for i := len(Prefix); i < len(key); i++ {
		for j := 0; j < len(base62); j++ {
			if base62[j] == key[i] {
				continue
			}
			mutated := key[:i] + string(base62[j]) + key[i+1:]
			mutations++
			if _, err := Parse(mutated); err == nil {
				t.Fatalf("mutation at %d accepted", i)
			}
		}
	}
	t.Logf("%d one-character mutations, all refused", mutations)
}

func TestTenThousandKeysAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	hashes := map[string]bool{}
	for i := range 10000 {
		f := Prefixed
		if i%2 == 1 {
			f = Hex
		}
		k, err := Generate(rand.Reader, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(k); err != nil {
			t.Fatalf("a generated key does not parse: %v", err)
		}
		seen[k], hashes[Hash(k)] = true, true
	}
	if len(seen) != 10000 || len(hashes) != 10000 {
		t.Fatalf("%d distinct keys and %d distinct hashes of 10000", len(seen), len(hashes))
	}
}

func TestHash(t *testing.T) {
	if got := Hash("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("Hash(abc) = %s", got)
	}
}

func TestHint(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"a Prefixed key shows its first 8 and last 4 characters", "lk_abcdefghijklmnopqrstuvwxyz", "lk_abcde…wxyz"},
		{"a Hex key shows its first 8 and last 4 characters", strings.Repeat("0123456789abcdef", 4), "01234567…cdef"},
		{"a string of 12 characters shows them all, but never more", "abcdefghijkl", "abcdefgh…ijkl"},
		{"anything shorter is masked completely", "short", "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Hint(tt.raw); got != tt.want {
				t.Fatalf("Hint = %q, want %q", got, tt.want)
			}
		})
	}
}

func BenchmarkGenerate(b *testing.B) {
	for range b.N {
		if _, err := Generate(rand.Reader, Prefixed); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	key, _ := Generate(rand.Reader, Prefixed)
	b.ReportAllocs()
	for range b.N {
		if _, err := Parse(key); err != nil {
			b.Fatal(err)
		}
	}
}
