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
// written: its kind, apiVersion and status (a request's metadata, which
// kube-apiserver does not read back, is not echoed).

var jsonContentType = []string{"application/json"}

var reviewBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeReview answers with review's kind, apiVersion and status.
func writeReview(w http.ResponseWriter, review *authnv1.TokenReview) {
	bp := reviewBuffers.Get().(*[]byte)
	b := appendReview((*bp)[:0], review)
	w.Header()["Content-Type"] = jsonContentType[:1:1]
	_, _ = w.Write(b)
	*bp = b
	reviewBuffers.Put(bp)
}

// appendReview is json.NewEncoder's Encode of review as if its metadata
// and spec were empty: the object and a newline.
func appendReview(b []byte, r *authnv1.TokenReview) []byte {
	o := object{b: append(b, '{')}
	o.str("kind", r.Kind)
	o.str("apiVersion", r.APIVersion)
	o.field("metadata")
	o.b = append(o.b, `{}`...)
	o.field("spec")
	o.b = append(o.b, `{}`...)
	o.field("status")
	st := &r.Status
	s := object{b: append(o.b, '{')}
	if st.Authenticated {
		s.field("authenticated")
		s.b = append(s.b, "true"...)
	}
	s.field("user")
	s.b = appendUser(s.b, &st.User)
	if len(st.Audiences) > 0 {
		s.field("audiences")
		s.b = appendStrings(s.b, st.Audiences)
	}
	s.str("error", st.Error)
	return append(s.b, '}', '}', '\n')
}

// An object appends a JSON object's fields, with commas between them.
type object struct {
	b     []byte
	comma bool
}

// field appends a field's name; its value comes next.
func (o *object) field(name string) {
	if o.comma {
		o.b = append(o.b, ',')
	}
	o.comma = true
	o.b = append(o.b, '"')
	o.b = append(o.b, name...)
	o.b = append(o.b, '"', ':')
}

// str appends a string field that is omitted when empty.
func (o *object) str(name, v string) {
	if v != "" {
		o.field(name)
		o.b = appendString(o.b, v)
	}
}

func appendUser(b []byte, u *authnv1.UserInfo) []byte {
	o := object{b: append(b, '{')}
	o.str("username", u.Username)
	o.str("uid", u.UID)
	if len(u.Groups) > 0 {
		o.field("groups")
		o.b = appendStrings(o.b, u.Groups)
	}
	if len(u.Extra) > 0 {
		o.field("extra")
		keys := make([]string, 0, len(u.Extra))
		for k := range u.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys) // as encoding/json orders a map's keys
		e := object{b: append(o.b, '{')}
		for _, k := range keys {
			if e.comma {
				e.b = append(e.b, ',')
			}
			e.comma = true
			e.b = append(appendString(e.b, k), ':')
			if v := u.Extra[k]; v == nil {
				e.b = append(e.b, "null"...)
			} else {
				e.b = appendStrings(e.b, v)
			}
		}
		o.b = append(e.b, '}')
	}
	return append(o.b, '}')
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
