// Package keys is the format of Latchkey's API keys: how they are generated,
// recognised, hashed and masked.
//
// A Prefixed key is "lk_" + 256 random bits in base62 (43 characters) + a
// 6-character base62 CRC32 of those 43 characters: the layout GitHub uses
// for its tokens, so a mistyped key is refused without a lookup and a
// secret scanner can tell a real key from noise. A Hex key is 256 random
// bits as 64 lowercase hex characters.
//
// The checksum is not a secret and proves nothing about who holds a key: it
// only filters typos and garbage cheaply. Authentication is the lookup of
// the key's SHA-256 hash.
package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
)

// Format is how a raw key is written; the values are the API's enum.
type Format string

const (
	Prefixed Format = "Prefixed"
	Hex      Format = "Hex"
)

const (
	// Prefix starts every Prefixed key.
	Prefix = "lk_"
	// RandomBytes is the key material in every key: 256 bits.
	RandomBytes = 32

	bodyLen       = 43 // ceil(256 / log2(62))
	checksumLen   = 6  // 62^6 > 2^32
	PrefixedLen   = len(Prefix) + bodyLen + checksumLen
	HexLen        = 2 * RandomBytes
	base62        = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	hintHead      = 8
	hintTail      = 4
	hintSeparator = "…"
)

// Errors of Parse. Their texts are fixed: an error never carries key material.
var (
	ErrMalformed = errors.New("not a Latchkey key")
	ErrChecksum  = errors.New("key checksum does not match")
)

// Generate reads 256 bits from random and writes them as a key of format f.
func Generate(random io.Reader, f Format) (string, error) {
	var b [RandomBytes]byte
	if _, err := io.ReadFull(random, b[:]); err != nil {
		return "", fmt.Errorf("reading key material: %w", err)
	}
	switch f {
	case Prefixed:
		body := encodeBody(new(big.Int).SetBytes(b[:]))
		return Prefix + body + checksum(body), nil
	case Hex:
		return hex.EncodeToString(b[:]), nil
	default:
		return "", fmt.Errorf("unknown key format %q", f)
	}
}

// Parse tells the format of a presented key and checks it without a lookup.
// It looks at no more than a key's length of input.
func Parse(raw string) (Format, error) {
	switch {
	case len(raw) == PrefixedLen && raw[:len(Prefix)] == Prefix:
		body, sum := raw[len(Prefix):len(Prefix)+bodyLen], raw[len(Prefix)+bodyLen:]
		if !isBase62(body) || !isBase62(sum) {
			return "", ErrMalformed
		}
		var want [checksumLen]byte
		checksumInto(&want, body)
		if string(want[:]) != sum {
			return "", ErrChecksum
		}
		return Prefixed, nil
	case len(raw) == HexLen && isLowerHex(raw):
		return Hex, nil
	default:
		return "", ErrMalformed
	}
}

// Hash is the lowercase hex SHA-256 of a raw key: what Latchkey stores.
func Hash(raw string) string {
	sum := Sum(raw)
	return hex.EncodeToString(sum[:])
}

// Sum is the SHA-256 of a raw key. It does not allocate for keys of up to
// 64 bytes (every Latchkey key): it is on every verification's path.
func Sum(raw string) [32]byte {
	if len(raw) > 64 {
		return sha256.Sum256([]byte(raw))
	}
	var buf [64]byte
	n := copy(buf[:], raw)
	return sha256.Sum256(buf[:n])
}

// Hint masks a key for display: its first 8 and last 4 characters. Anything
// shorter than 12 characters is masked completely.
func Hint(raw string) string {
	if len(raw) < hintHead+hintTail {
		return hintSeparator
	}
	return raw[:hintHead] + hintSeparator + raw[len(raw)-hintTail:]
}

func checksum(body string) string {
	var sum [checksumLen]byte
	checksumInto(&sum, body)
	return string(sum[:])
}

// checksumInto writes the base62 CRC32 of body without allocating: it is
// on every verification's path.
func checksumInto(dst *[checksumLen]byte, body string) {
	// CRC-32 (IEEE) by table over the string itself: no []byte copy.
	n := ^uint32(0)
	for i := 0; i < len(body); i++ {
		n = crc32.IEEETable[byte(n)^body[i]] ^ (n >> 8)
	}
	n = ^n
	for i := checksumLen - 1; i >= 0; i-- {
		dst[i] = base62[n%62]
		n /= 62
	}
}

// encodeBody writes n in base62, left-padded with '0' to a body's width.
func encodeBody(n *big.Int) string {
	out := make([]byte, bodyLen)
	base := big.NewInt(62)
	rem := new(big.Int)
	for i := bodyLen - 1; i >= 0; i-- {
		n.QuoRem(n, base, rem)
		out[i] = base62[rem.Int64()]
	}
	return string(out)
}

func isBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) && !isLetter(s[i]) {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) && (s[i] < 'a' || s[i] > 'f') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isLetter(c byte) bool { return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' }

// Match is a Latchkey key found in text, by its checksum.
type Match struct {
	// Offset is where the key starts in the text.
	Offset int
	// Hint is the masked key: Find never hands out a whole key.
	Hint string
}

// Find returns the Prefixed keys in text whose checksum holds, so that
// secret scanners report real keys and almost never noise (a random
// 52-character lk_ string passes with odds of 1 in 4 billion). Hex keys
// carry no checksum and cannot be told from other hex.
func Find(text []byte) []Match {
	var found []Match
	for i := 0; i+PrefixedLen <= len(text); i++ {
		if text[i] != 'l' || text[i+1] != 'k' || text[i+2] != '_' {
			continue
		}
		if i > 0 && isWordByte(text[i-1]) {
			continue
		}
		end := i + PrefixedLen
		if end < len(text) && isWordByte(text[end]) {
			continue
		}
		candidate := string(text[i:end])
		if _, err := Parse(candidate); err == nil {
			found = append(found, Match{Offset: i, Hint: Hint(candidate)})
			i = end - 1
		}
	}
	return found
}

func isWordByte(c byte) bool { return isDigit(c) || isLetter(c) || c == '_' }
