package endpoints

import (
	"net/http"
	"slices"
	"sync"
	"unicode/utf8"

	authnv1 "k8s.io/api/authentication/v1"
)

// The answer to a TokenReview is written by hand, byte for byte what
// encoding/json writes for it (TestReviewAnswersAreWhatEncodingJSONWrites):
// reflection over authnv1.TokenReview was a quarter of the handler's time
// (BenchmarkHandlers' CPU profile). Only the fields an answer sets are
// written: its kind, apiVersion and status.

var jsonContentType = []string{"application/json"}

var reviewBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeReview answers with review, whose metadata and spec are empty.
func writeReview(w http.ResponseWriter, review *authnv1.TokenReview) {
	bp := reviewBuffers.Get().(*[]byte)
	b := appendReview((*bp)[:0], review)
	w.Header()["Content-Type"] = jsonContentType[:1:1]
	_, _ = w.Write(b)
	*bp = b
	reviewBuffers.Put(bp)
}

// appendReview is json.NewEncoder's Encode of review, metadata and spec
// empty: the object and a newline.
func appendReview(b []byte, r *authnv1.TokenReview) []byte {
	b = append(b, '{')
	comma := false
	field := func(name string) {
		if comma {
			b = append(b, ',')
		}
		comma = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	if r.Kind != "" {
		field("kind")
		b = appendString(b, r.Kind)
	}
	if r.APIVersion != "" {
		field("apiVersion")
		b = appendString(b, r.APIVersion)
	}
	field("metadata")
	b = append(b, `{}`...)
	field("spec")
	b = append(b, `{}`...)
	field("status")
	st := &r.Status
	b = append(b, '{')
	comma = false
	if st.Authenticated {
		field("authenticated")
		b = append(b, "true"...)
	}
	field("user")
	b = appendUser(b, &st.User)
	comma = true
	if len(st.Audiences) > 0 {
		field("audiences")
		b = appendStrings(b, st.Audiences)
	}
	if st.Error != "" {
		field("error")
		b = appendString(b, st.Error)
	}
	return append(b, '}', '}', '\n')
}

func appendUser(b []byte, u *authnv1.UserInfo) []byte {
	b = append(b, '{')
	comma := false
	field := func(name string) {
		if comma {
			b = append(b, ',')
		}
		comma = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	if u.Username != "" {
		field("username")
		b = appendString(b, u.Username)
	}
	if u.UID != "" {
		field("uid")
		b = appendString(b, u.UID)
	}
	if len(u.Groups) > 0 {
		field("groups")
		b = appendStrings(b, u.Groups)
	}
	if len(u.Extra) > 0 {
		field("extra")
		b = append(b, '{')
		keys := make([]string, 0, len(u.Extra))
		for k := range u.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys) // as encoding/json orders a map's keys
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			if v := u.Extra[k]; v == nil {
				b = append(b, "null"...)
			} else {
				b = appendStrings(b, v)
			}
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

func appendStrings(b []byte, list []string) []byte {
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString is s as encoding/json writes a string with HTML escaping
// on (its default): quotes, backslashes and control characters escaped,
// <, > and & as \u003c, \u003e and \u0026, U+2028 and U+2029 escaped, and
// each byte of invalid UTF-8 as \ufffd.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
