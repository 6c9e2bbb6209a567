package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/plugin"
	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/pkg/latchkey"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// TestProtocolAgreement drives the running server with both of its
// clients, pkg/latchkey and the plugin's whoami, and checks that every
// header and JSON shape of pkg/protocol means the same to all three: what
// the server sends decodes strictly into the published shapes, and what
// the clients send the server accepts.
func TestProtocolAgreement(t *testing.T) {
	// Only the last case reports: the others' clients have no key to.
	t.Setenv("LATCHKEY_API_KEY", "")
	ns, service := env.Namespace(t), env.Namespace(t)
	expires := metav1.NewTime(time.Now().Add(24 * time.Hour).Truncate(time.Second))
	key, raw := mint(t, ns, "caller", authv1alpha1.ApiKeySpec{ExpiresAt: &expires})
	_, serviceRaw := mint(t, service, "reporter", authv1alpha1.ApiKeySpec{})
	wantKey := ns + "/" + key.Name

	call := func(t *testing.T, method, path string, header http.Header, body []byte) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, endpoint+path, bytes.NewReader(body))
		req.Header = header
		resp, err := httpsClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	strict := func(g Gomega, body []byte, v any) {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		g.Expect(dec.Decode(v)).To(Succeed(), "%s", body)
	}

	t.Run("authorize answers in the published headers, and pkg/latchkey reads them", func(t *testing.T) {
		g := NewWithT(t)
		resp, _ := call(t, http.MethodGet, protocol.PathAuthorize, http.Header{"Authorization": {protocol.Bearer(raw)}}, nil)
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		g.Expect(resp.Header.Get(protocol.HeaderTenant)).To(Equal(ns))
		g.Expect(resp.Header.Get(protocol.HeaderKey)).To(Equal(wantKey))

		resp, _ = call(t, http.MethodGet, protocol.PathAuthorize, http.Header{
			"Authorization": {protocol.Bearer(raw)}, protocol.HeaderTenantRequired: {service},
		}, nil)
		g.Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "a pin on another tenant")

		resp, _ = call(t, http.MethodGet, protocol.PathAuthorize, http.Header{"Authorization": {protocol.Bearer("lk_wrong")}}, nil)
		g.Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized))
		g.Expect(resp.Header.Get("WWW-Authenticate")).To(HavePrefix(protocol.Challenge("")))

		for _, mode := range []latchkey.Verification{latchkey.Authorize, latchkey.TokenReview} {
			lk, err := latchkey.New(latchkey.Config{Endpoint: endpoint, HTTPClient: httpsClient, Verification: mode})
			g.Expect(err).NotTo(HaveOccurred())
			caller, err := lk.Verify(context.Background(), raw)
			g.Expect(err).NotTo(HaveOccurred(), string(mode))
			g.Expect(caller).To(Equal(latchkey.Caller{Tenant: ns, Key: wantKey}), string(mode))
			g.Expect(lk.Close(context.Background())).To(Succeed())
		}
	})

	t.Run("a TokenReview names the key as the protocol does", func(t *testing.T) {
		g := NewWithT(t)
		body, _ := json.Marshal(authnv1.TokenReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
			Spec:     authnv1.TokenReviewSpec{Token: raw, Audiences: []string{protocol.Audience}},
		})
		resp, out := call(t, http.MethodPost, protocol.PathTokenReview, http.Header{"Content-Type": {"application/json"}}, body)
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		review := authnv1.TokenReview{}
		g.Expect(json.Unmarshal(out, &review)).To(Succeed())
		g.Expect(review.Status.Authenticated).To(BeTrue(), review.Status.Error)
		u := review.Status.User
		g.Expect(u.Username).To(Equal(protocol.Username(ns, key.Name)))
		tenant, name, ok := protocol.ParseUsername(u.Username)
		g.Expect([]any{tenant, name, ok}).To(Equal([]any{ns, key.Name, true}))
		g.Expect(u.Groups).To(ConsistOf(protocol.GroupAuthenticated, protocol.TenantGroup(ns)))
		g.Expect(u.Extra).To(HaveKeyWithValue(protocol.ExtraKeyHint, authnv1.ExtraValue{key.Status.KeyHint}))
		g.Expect(review.Status.Audiences).To(Equal([]string{protocol.Audience}))
	})

	t.Run("whoami answers the published shape, and the plugin prints it", func(t *testing.T) {
		g := NewWithT(t)
		resp, body := call(t, http.MethodGet, protocol.PathWhoAmI, http.Header{"Authorization": {protocol.Bearer(raw)}}, nil)
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		var who protocol.WhoAmI
		strict(g, body, &who)
		g.Expect(who.Tenant).To(Equal(ns))
		g.Expect(who.KeyName).To(Equal(key.Name))
		g.Expect(who.KeyHint).To(Equal(key.Status.KeyHint))
		g.Expect(who.CreatedAt).NotTo(BeZero())
		g.Expect(who.ExpiresAt).NotTo(BeNil())
		g.Expect(who.ExpiresAt.Equal(expires.Time)).To(BeTrue(), "expiresAt %v, want %v", who.ExpiresAt, expires.Time)

		caFile := filepath.Join(t.TempDir(), "ca.crt")
		g.Expect(os.WriteFile(caFile, lk.WebhookCA, 0o600)).To(Succeed())
		t.Setenv("LATCHKEY_API_KEY", raw)
		var out, errOut bytes.Buffer
		cmd := plugin.NewCommand(&plugin.Options{
			Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
			Flags:   genericclioptions.NewConfigFlags(false),
		})
		cmd.SetArgs([]string{"whoami", "--endpoint", endpoint, "--ca-file", caFile})
		g.Expect(cmd.Execute()).To(Succeed(), errOut.String())
		g.Expect(out.String()).To(Equal("Tenant:   " + ns + "\n" +
			"Key:      " + key.Name + " (" + key.Status.KeyHint + ")\n" +
			"Created:  " + who.CreatedAt.UTC().Format(time.RFC3339) + "\n" +
			"Expires:  " + expires.UTC().Format(time.RFC3339) + "\n" +
			"Scopes:   none\n"))
	})

	t.Run("the server and the middleware read the same bearer headers", func(t *testing.T) {
		lk, err := latchkey.New(latchkey.Config{Endpoint: endpoint, HTTPClient: httpsClient})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lk.Close(context.Background()) }()
		svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
		defer svc.Close()
		for _, tt := range []struct{ name, header string }{
			{"the published form", protocol.Bearer(raw)},
			{"the scheme in another case", "bEARER " + raw},
			{"two spaces", "Bearer  " + raw},
			{"a tab", "Bearer\t" + raw},
			{"a space inside the key", protocol.Bearer(raw[:10] + " " + raw[10:])},
			{"a quoted key", `Bearer "` + raw + `"`},
			{"a second credential", protocol.Bearer(raw) + ",x"},
			{"another scheme", "Basic " + raw},
			{"the scheme alone", "Bearer "},
		} {
			t.Run(tt.name, func(t *testing.T) {
				g := NewWithT(t)
				want := http.StatusUnauthorized
				if token, ok := protocol.BearerToken(tt.header); ok && token == raw {
					want = http.StatusOK
				}
				resp, _ := call(t, http.MethodGet, protocol.PathAuthorize, http.Header{"Authorization": {tt.header}}, nil)
				g.Expect(resp.StatusCode).To(Equal(want), "the server")
				req, _ := http.NewRequest(http.MethodGet, svc.URL, nil)
				req.Header.Set("Authorization", tt.header)
				mresp, err := http.DefaultClient.Do(req)
				g.Expect(err).NotTo(HaveOccurred())
				_ = mresp.Body.Close()
				g.Expect(mresp.StatusCode).To(Equal(want), "the middleware")
				if want == http.StatusUnauthorized {
					g.Expect(mresp.Header.Get("WWW-Authenticate")).To(HavePrefix(protocol.Challenge("")))
				}
			})
		}
	})

	t.Run("the reporter's batch is the one the server decodes, and its answer the published one", func(t *testing.T) {
		g := NewWithT(t)
		tap := &reportTap{next: httpsClient.Transport}
		lk, err := latchkey.New(latchkey.Config{
			Endpoint: endpoint, HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: tap},
			APIKey: serviceRaw, FlushInterval: time.Hour,
		})
		g.Expect(err).NotTo(HaveOccurred())
		svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/boom" {
				w.WriteHeader(http.StatusInternalServerError)
			}
		})))
		defer svc.Close()
		for _, path := range []string{"/ok", "/boom"} {
			req, _ := http.NewRequest(http.MethodGet, svc.URL+path, nil)
			req.Header.Set("Authorization", protocol.Bearer(raw))
			resp, err := http.DefaultClient.Do(req)
			g.Expect(err).NotTo(HaveOccurred())
			_ = resp.Body.Close()
		}
		g.Expect(lk.Close(context.Background())).To(Succeed())

		tap.mu.Lock()
		defer tap.mu.Unlock()
		g.Expect(tap.requests).To(HaveLen(1), "one batch, sent on Close")
		g.Expect(tap.statuses).To(Equal([]int{http.StatusOK}))
		batch, err := usage.DecodeBatch(tap.requests[0], time.Now())
		g.Expect(err).NotTo(HaveOccurred(), "the server's own decoder refuses what the client sent")
		states := make([]protocol.State, 0, len(batch.Executions))
		for _, e := range batch.Executions {
			states = append(states, e.State)
		}
		g.Expect(states).To(Equal([]protocol.State{protocol.Succeeded, protocol.Failed}))
		var ack protocol.ExecutionsResponse
		strict(g, tap.responses[0], &ack)
		g.Expect(ack).To(Equal(protocol.ExecutionsResponse{Applied: true, Executions: 2}))
	})
}

// reportTap records the bodies of execution reports and of their answers.
type reportTap struct {
	next      http.RoundTripper
	mu        sync.Mutex
	requests  [][]byte
	responses [][]byte
	statuses  []int
}

func (t *reportTap) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path != protocol.PathExecutions {
		return t.next.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	answer, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(answer))
	t.mu.Lock()
	t.requests, t.responses, t.statuses = append(t.requests, body), append(t.responses, answer), append(t.statuses, resp.StatusCode)
	t.mu.Unlock()
	return resp, nil
}
