package protocol

import (
	"fmt"
	"strings"
)

// MaxTokenLength bounds what is read of a presented key: longer is never a
// key (Latchkey's are 52 or 64 characters).
const MaxTokenLength = 256

const scheme = "Bearer "

// BearerToken reads an Authorization header of the form "Bearer <key>", the
// one rule for the server and its clients: the scheme in any case (RFC 7235
// §2.1), exactly one space, and a key of RFC 6750's b64token characters, at
// least one and at most MaxTokenLength. RFC 6750 allows more spaces; no
// client sends them, and the README tells users "exactly", so one is the
// rule. Any other scheme or shape is not a bearer key.
func BearerToken(header string) (string, bool) {
	if len(header) <= len(scheme) || len(header) > len(scheme)+MaxTokenLength {
		return "", false
	}
	if !strings.EqualFold(header[:len(scheme)], scheme) {
		return "", false
	}
	token := header[len(scheme):]
	if !b64token(token) {
		return "", false
	}
	return token, true
}

// Bearer is the Authorization header that presents token.
func Bearer(token string) string { return scheme + token }

// Challenge is the WWW-Authenticate header of a 401 for a missing or
// refused key (RFC 6750 §3), with the reason when there is one.
func Challenge(description string) string {
	if description == "" {
		return `Bearer error="invalid_token"`
	}
	return fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, description)
}

// b64token is RFC 6750 §2.1's 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
// "+" / "/" ) *"=".
func b64token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := range len(body) {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}
