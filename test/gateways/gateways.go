// Package gateways checks Latchkey behind gateways nobody here wrote, as
// their users configure them: Traefik's forwardAuth and Caddy's
// forward_auth in this package's tests, nginx's auth_request in
// test/integration. One set of checks says who gets through and what
// reaches the service behind: the tenant and key Latchkey named, never
// what a client sent under those names, and never the key itself.
package gateways

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// The paths asked for: open to any tenant's key, and pinned to one tenant's.
const (
	apiPath    = "/api/x"
	pinnedPath = "/pinned/x"
)

// Start starts a gateway in front of upstream and returns its base URL:
// /api/ lets any tenant's key through, /pinned/ only pinnedTenant's.
type Start func(t *testing.T, upstream, pinnedTenant string) string

// Options say where the checks' callers come from.
type Options struct {
	// Caller is the source address of the callers whose answers are
	// checked: 127.0.0.1 unless set.
	Caller string
	// Flooder, when set, is the source address that floods the gateway
	// with wrong keys, which must then be answered 429 while Caller's
	// requests are answered as before: Latchkey must be told to take the
	// client's address from the gateway.
	Flooder string
}

// credentialHeaders are the headers a key travels in; the service behind
// must see none of them.
var credentialHeaders = []string{"Authorization", protocol.HeaderAPIKey}

// present stands for a credential header's value in what the service
// reports, so that a key that leaks is never printed.
const present = "(present)"

// NewUpstream starts the service behind a gateway: it answers each request
// with the X-Latchkey-* headers that reached it and the credential headers
// that did, their values hidden.
func NewUpstream(t *testing.T) string {
	t.Helper()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen := map[string][]string{}
		for name, values := range r.Header {
			if strings.HasPrefix(name, "X-Latchkey-") {
				seen[name] = values
			}
		}
		for _, name := range credentialHeaders {
			if _, ok := r.Header[http.CanonicalHeaderKey(name)]; ok {
				seen[name] = []string{present}
			}
		}
		_ = json.NewEncoder(w).Encode(seen)
	}))
	t.Cleanup(upstream.Close)
	return upstream.URL
}

// Client calls from a source address of the loopback network (any of
// 127.0.0.0/8 on Linux), so that one test can be several clients.
func Client(t *testing.T, source string) *http.Client {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	transport := &http.Transport{DialContext: dialer.DialContext}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: transport}
}

// presented is how a request carries a key.
type presented struct {
	bearer, apiKey string
}

type answer struct {
	status     int
	retryAfter string
	// seen is what reached the service, on a 200.
	seen map[string][]string
}

// call sends a GET through the gateway with the key and the headers sent.
func call(t *testing.T, c *http.Client, url string, key presented, sent http.Header) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range sent {
		for _, v := range values {
			req.Header.Add(name, v)
		}
	}
	if key.bearer != "" {
		req.Header.Set("Authorization", protocol.Bearer(key.bearer))
	}
	if key.apiKey != "" {
		req.Header.Set(protocol.HeaderAPIKey, key.apiKey)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &a.seen); err != nil {
			t.Fatalf("the service's answer: %v", err)
		}
	}
	return a
}

// Check starts a gateway with start and checks it in front of Latchkey:
// valid keys, in Authorization or X-API-Key, reach the service with their
// tenant and name and without the key; missing, wrong, revoked and
// expired keys get 401; another tenant's key gets 403 where a tenant is
// pinned; and, with o.Flooder, a flood of wrong keys gets 429 while the
// other caller is served.
func Check(t *testing.T, lk *inprocess.Latchkey, start Start, o Options) {
	t.Helper()
	if o.Caller == "" {
		o.Caller = "127.0.0.1"
	}
	ns, other := lk.Namespace(t), lk.Namespace(t)
	base := start(t, NewUpstream(t), ns)
	caller := Client(t, o.Caller)

	const scopes = "read,write"
	_, valid := lk.Mint(t, ns, "valid", authv1alpha1.ApiKeySpec{Scopes: strings.Split(scopes, ",")})
	revoked, revokedRaw := lk.Mint(t, ns, "revoked", authv1alpha1.ApiKeySpec{})
	patched := revoked.DeepCopy()
	patched.Spec.Revoked = true
	if err := lk.Client.Patch(context.Background(), patched, client.MergeFrom(revoked)); err != nil {
		t.Fatal(err)
	}
	soon := metav1.NewTime(time.Now().Add(3 * time.Second))
	_, expiring := lk.Mint(t, ns, "expiring", authv1alpha1.ApiKeySpec{ExpiresAt: &soon})
	_, theirs := lk.Mint(t, other, "theirs", authv1alpha1.ApiKeySpec{Format: authv1alpha1.FormatHex})
	wrong := valid[:len(valid)-2] + "zz"

	// What a client sends to choose who it is, or to unpin a tenant.
	forged := http.Header{
		protocol.HeaderTenant:         {other},
		protocol.HeaderKey:            {other + "/theirs"},
		protocol.HeaderTenantRequired: {other},
		protocol.HeaderScopes:         {"admin"},
	}
	tests := []struct {
		name   string
		path   string
		with   presented
		sent   http.Header
		status int
		tenant string
		key    string
		scopes string
	}{
		{"a valid key reaches the service with its tenant and name", apiPath, presented{bearer: valid}, nil, 200, ns, ns + "/valid", scopes},
		{"a valid key in X-API-Key reaches the service without it", apiPath, presented{apiKey: valid}, nil, 200, ns, ns + "/valid", scopes},
		{"a client's own X-Latchkey-* headers never reach the service", apiPath, presented{bearer: valid}, forged, 200, ns, ns + "/valid", scopes},
		{"no key is refused", apiPath, presented{}, nil, 401, "", "", ""},
		{"no key with forged headers is refused", apiPath, presented{}, forged, 401, "", "", ""},
		{"a wrong key is refused", apiPath, presented{bearer: wrong}, nil, 401, "", "", ""},
		{"a wrong key in X-API-Key is refused", apiPath, presented{apiKey: wrong}, nil, 401, "", "", ""},
		{"a revoked key is refused", apiPath, presented{bearer: revokedRaw}, nil, 401, "", "", ""},
		{"another tenant's key passes where no tenant is pinned", apiPath, presented{bearer: theirs}, forged, 200, other, other + "/theirs", ""},
		{"another tenant's key is forbidden where the tenant is pinned", pinnedPath, presented{bearer: theirs}, nil, 403, "", "", ""},
		{"another tenant's key in X-API-Key is forbidden where the tenant is pinned", pinnedPath, presented{apiKey: theirs}, nil, 403, "", "", ""},
		{"a client cannot repin a pinned route to its own tenant", pinnedPath, presented{bearer: theirs}, forged, 403, "", "", ""},
		{"the pinned tenant's own key passes", pinnedPath, presented{bearer: valid}, forged, 200, ns, ns + "/valid", scopes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := gomega.NewWithT(t)
			a := call(t, caller, base+tt.path, tt.with, tt.sent)
			g.Expect(a.status).To(gomega.Equal(tt.status))
			if a.status != http.StatusOK {
				return
			}
			want := map[string][]string{protocol.HeaderTenant: {tt.tenant}, protocol.HeaderKey: {tt.key}}
			// A key without scopes: the header is Latchkey's empty one, or
			// none (nginx sends no header for an empty value) — never the
			// client's.
			switch _, sent := a.seen[protocol.HeaderScopes]; {
			case tt.scopes != "":
				want[protocol.HeaderScopes] = []string{tt.scopes}
			case sent:
				want[protocol.HeaderScopes] = []string{""}
			}
			g.Expect(a.seen).To(gomega.Equal(want),
				"the service sees only the tenant, key and scopes Latchkey named, and not the key itself")
		})
	}
	t.Run("a key is refused from the instant it expires", func(t *testing.T) {
		g := gomega.NewWithT(t)
		g.Expect(call(t, caller, base+apiPath, presented{bearer: expiring}, nil).status).To(gomega.Equal(200))
		time.Sleep(time.Until(soon.Time))
		g.Expect(call(t, caller, base+apiPath, presented{bearer: expiring}, nil).status).To(gomega.Equal(401))
	})
	if o.Flooder != "" {
		t.Run("a flood of wrong keys gets 429 and the other callers are served", func(t *testing.T) {
			flood(t, base, caller, Client(t, o.Flooder), o.Caller, valid, wrong)
		})
	}
}

// flood sends wrong keys from flooder until the gateway answers 429,
// naming caller's address in the headers a client could forge it in, then
// checks that caller is still answered on its own merits.
func flood(t *testing.T, base string, caller, flooder *http.Client, callerAddress, valid, wrong string) {
	g := gomega.NewWithT(t)
	posing := http.Header{"X-Forwarded-For": {callerAddress}, protocol.HeaderClientAddress: {callerAddress}}
	var limited answer
	for i := 0; i < 500 && limited.status != http.StatusTooManyRequests; i++ {
		limited = call(t, flooder, base+apiPath, presented{bearer: wrong}, posing)
		g.Expect(limited.status).To(gomega.BeElementOf(http.StatusUnauthorized, http.StatusTooManyRequests))
	}
	g.Expect(limited.status).To(gomega.Equal(http.StatusTooManyRequests), "500 wrong keys from one address")
	g.Expect(limited.retryAfter).NotTo(gomega.BeEmpty(), "a 429 says when to come back")
	g.Expect(call(t, flooder, base+apiPath, presented{bearer: valid}, nil).status).To(gomega.Equal(http.StatusOK),
		"a valid key is served whoever floods")
	g.Expect(call(t, caller, base+apiPath, presented{bearer: valid}, nil).status).To(gomega.Equal(http.StatusOK))
	g.Expect(call(t, caller, base+apiPath, presented{bearer: wrong}, nil).status).To(gomega.Equal(http.StatusUnauthorized),
		"another address is within its own budget")
}
