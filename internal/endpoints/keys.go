package endpoints

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// DefaultKeyHeaders are where a key is read from when Authorization holds
// no bearer key: where gateways commonly carry one.
var DefaultKeyHeaders = []string{protocol.HeaderAPIKey}

// KeyPlaces say where a request's key may be: "Authorization: Bearer"
// always, then key headers in order, then a query parameter when one is
// named. One reading for every transport, so that a key a proxy accepts
// over HTTP is the key Envoy's ext_authz accepts over gRPC. The zero value
// reads Authorization and DefaultKeyHeaders.
type KeyPlaces struct {
	set bool
	// canonical are the key headers as net/http keys them, lower as Envoy
	// sends them: computed once, since canonicalising a name such as
	// X-API-Key allocates.
	canonical, lower []string
	query            string
}

// NewKeyPlaces reads keys from headers after Authorization (nil:
// DefaultKeyHeaders; empty: none) and, when query is not empty, from that
// query parameter last: off by default, since a key in a URL ends up in
// access logs and browser histories that Latchkey cannot reach.
func NewKeyPlaces(headers []string, query string) (KeyPlaces, error) {
	if headers == nil {
		headers = DefaultKeyHeaders
	}
	if len(headers) > MaxKeyHeaders {
		return KeyPlaces{}, fmt.Errorf("at most %d key headers", MaxKeyHeaders)
	}
	p := KeyPlaces{set: true, query: query}
	for _, h := range headers {
		if h == "" || strings.ContainsAny(h, " \t\r\n:") {
			return KeyPlaces{}, fmt.Errorf("key header %q is not a header name", h)
		}
		if strings.EqualFold(h, "Authorization") {
			return KeyPlaces{}, errors.New("a bearer key is always read from Authorization: it is not a key header")
		}
		p.canonical = append(p.canonical, http.CanonicalHeaderKey(h))
		p.lower = append(p.lower, strings.ToLower(h))
	}
	if strings.ContainsAny(query, "&=#?+% ") {
		return KeyPlaces{}, fmt.Errorf("key query parameter %q is not a parameter name", query)
	}
	return p, nil
}

var defaultKeyPlaces, _ = NewKeyPlaces(nil, "")

func (p KeyPlaces) orDefault() KeyPlaces {
	if !p.set {
		return defaultKeyPlaces
	}
	return p
}

// Headers are the key headers in Envoy's lower case, in the order they
// are read.
func (p KeyPlaces) Headers() []string { return p.orDefault().lower }

// QueryParam is the query parameter a key is read from; empty: none.
func (p KeyPlaces) QueryParam() string { return p.query }

// Found is the set of places a key was read from: bit 0 is Authorization,
// bit 1+i is key header i, and bit 1+len(Headers) the query parameter.
type Found uint32

// Has says whether the key was read from place i (0: Authorization).
func (f Found) Has(i int) bool { return f&(1<<i) != 0 }

// MaxKeyHeaders bounds the key headers, so that Found has a bit for each.
const MaxKeyHeaders = 16

// ErrTwoKeys refuses a request that carries two different keys: which one
// a proxy or its upstream would read is not for Latchkey to guess.
var ErrTwoKeys = errors.New("two different keys in one request")

// Key reads the presented key from a request's headers (header gives the
// value of the i-th place's header: 0 is Authorization, 1+i is Headers[i])
// and its query string. An empty token means none was presented. It
// allocates nothing unless the query's value is escaped.
func (p KeyPlaces) Key(header func(i int) string, query string) (token string, found Found, err error) {
	if bearer, ok := protocol.BearerToken(header(0)); ok {
		token, found = bearer, 1
	}
	p = p.orDefault()
	n := len(p.lower)
	for i := range n {
		v := header(1 + i)
		if v == "" {
			continue
		}
		if token != "" && v != token {
			return "", 0, ErrTwoKeys
		}
		token, found = v, found|1<<(1+i)
	}
	if p.query == "" {
		return token, found, nil
	}
	v, err := queryValue(query, p.query)
	switch {
	case err != nil:
		return "", 0, err
	case v == "":
	case token != "" && v != token:
		return "", 0, ErrTwoKeys
	default:
		token, found = v, found|1<<(1+n)
	}
	return token, found, nil
}

// FromRequest reads r's key: its headers, and the query of r's own URL
// (Envoy's HTTP ext_authz asks for the original path under /authorize/)
// or else, when r comes from a trusted proxy, of the URI it names
// (X-Forwarded-Uri, which Traefik and Caddy set, or nginx's customary
// X-Original-URI): from anyone else, that header is only what the client
// wrote. A header sent twice is a 400, as Authorization is: proxies differ
// in which of two they pass on.
func (p KeyPlaces) FromRequest(r *http.Request, proxied bool) (string, Found, error) {
	p = p.orDefault()
	var twice string
	token, found, err := p.Key(func(i int) string {
		name := "Authorization"
		if i > 0 {
			name = p.canonical[i-1]
		}
		v := r.Header[name] // canonical: computed once
		if len(v) > 1 && twice == "" {
			twice = name
		}
		if len(v) == 0 {
			return ""
		}
		return v[0]
	}, requestQuery(r, p.query, proxied))
	if twice != "" {
		return "", 0, errors.New("more than one " + twice + " header")
	}
	return token, found, err
}

// requestQuery is the query the key parameter is read from, when one is
// read at all.
func requestQuery(r *http.Request, param string, proxied bool) string {
	if param == "" {
		return ""
	}
	if r.URL.RawQuery != "" || !proxied {
		return r.URL.RawQuery
	}
	for _, h := range []string{"X-Forwarded-Uri", "X-Original-Uri"} {
		if uri := r.Header.Get(h); uri != "" {
			_, q, _ := strings.Cut(uri, "?")
			return q
		}
	}
	return ""
}

// QueryOf is the query string of a request path, as Envoy's ext_authz
// names it (attributes.request.http.path).
func QueryOf(path string) string {
	_, q, _ := strings.Cut(path, "?")
	q, _, _ = strings.Cut(q, "#")
	return q
}

// queryValue is param's value in query; a parameter given twice with
// different values is two keys.
func queryValue(query, param string) (string, error) {
	var value string
	for query != "" {
		var kv string
		kv, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			// An escaped name is the parameter to whoever decodes it, the
			// upstream among them, though Envoy removes only the plain one.
			if u, err := url.QueryUnescape(k); err == nil {
				k = u
			}
		}
		if k != param {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return "", errors.New("the key query parameter is not URL-encoded")
			}
			v = u
		}
		if value != "" && v != value {
			return "", ErrTwoKeys
		}
		value = v
	}
	return value, nil
}
