package keys

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"", "lk_", "lk_" + strings.Repeat("0", 49), strings.Repeat("a", 64), strings.Repeat("A", 64),
		"lk_" + strings.Repeat("0", 43) + checksum(strings.Repeat("0", 43)),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		format, err := Parse(raw)
		if err != nil {
			if strings.Contains(err.Error(), raw) && raw != "" && len(raw) > 3 {
				t.Fatalf("error %q carries the input", err)
			}
			return
		}
		switch format {
		case Prefixed:
			if len(raw) != PrefixedLen || checksum(raw[3:3+bodyLen]) != raw[3+bodyLen:] {
				t.Fatalf("accepted a bad Prefixed key %q", raw)
			}
		case Hex:
			if len(raw) != HexLen {
				t.Fatalf("accepted a bad Hex key %q", raw)
			}
		default:
			t.Fatalf("unknown format %q", format)
		}
	})
}

func FuzzGenerateRoundTrip(f *testing.F) {
	f.Add(bytes.Repeat([]byte{0}, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 32))
	f.Fuzz(func(t *testing.T, material []byte) {
		for _, format := range []Format{Prefixed, Hex} {
			k, err := Generate(bytes.NewReader(material), format)
			if len(material) < RandomBytes {
				if err == nil {
					t.Fatal("short material accepted")
				}
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, err := Parse(k); err != nil || got != format {
				t.Fatalf("Parse(%q) = %v, %v", k, got, err)
			}
		}
	})
}
