package endpoints

import "strings"

// maxKeyLen bounds what is read of a presented key: longer is never a key.
const maxKeyLen = 256

// BearerToken reads an Authorization header of the form "Bearer <key>": the
// scheme in any case, one space, and a non-empty key with no spaces. Any
// other scheme or shape is not a bearer key.
func BearerToken(header string) (string, bool) {
	const scheme = "bearer "
	if len(header) <= len(scheme) || len(header) > len(scheme)+maxKeyLen {
		return "", false
	}
	if !strings.EqualFold(header[:len(scheme)], scheme) {
		return "", false
	}
	token := header[len(scheme):]
	if strings.ContainsAny(token, " \t\r\n") {
		return "", false
	}
	return token, true
}
