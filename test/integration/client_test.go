package integration

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/latchkey"
)

// TestGoClientMiddleware puts pkg/latchkey's middleware in front of a
// service and checks callers are authenticated by the real Latchkey and
// requests land in the reporting tenant's Usage with the right outcome.
func TestGoClientMiddleware(t *testing.T) {
	for _, mode := range []latchkey.Verification{latchkey.Authorize, latchkey.TokenReview} {
		t.Run(string(mode), func(t *testing.T) {
			g := NewWithT(t)
			callers, service := env.Namespace(t), env.Namespace(t)
			callerKey, callerRaw := mint(t, callers, "caller", authv1alpha1.ApiKeySpec{})
			_, serviceRaw := mint(t, service, "reporter", authv1alpha1.ApiKeySpec{})
			t.Setenv("LATCHKEY_API_KEY", serviceRaw)

			lk, err := latchkey.New(latchkey.Config{
				Endpoint: endpoint, HTTPClient: httpsClient, Verification: mode,
				FlushInterval: 100 * time.Millisecond,
			})
			g.Expect(err).NotTo(HaveOccurred())
			srv := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				caller, _ := latchkey.CallerFrom(r.Context())
				if caller.Tenant != callers || caller.Key != callers+"/caller" {
					t.Errorf("caller %+v", caller)
				}
				if r.URL.Path == "/boom" {
					w.WriteHeader(http.StatusInternalServerError)
				}
			})))
			defer srv.Close()

			call := func(path, key string) int {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := http.DefaultClient.Do(req)
				g.Expect(err).NotTo(HaveOccurred())
				_ = resp.Body.Close()
				return resp.StatusCode
			}
			g.Expect(call("/ok", callerRaw)).To(Equal(http.StatusOK))
			g.Expect(call("/ok", callerRaw)).To(Equal(http.StatusOK))
			g.Expect(call("/boom", callerRaw)).To(Equal(http.StatusInternalServerError))
			g.Expect(call("/ok", verifiertest.BadChecksum(callerRaw))).To(Equal(http.StatusUnauthorized))

			revoke(t, callerKey)
			g.Expect(call("/ok", callerRaw)).To(Equal(http.StatusUnauthorized), "no cache: revocation is immediate")

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			g.Expect(lk.Close(ctx)).To(Succeed())
			usageOf(t, service, func(g Gomega, s authv1alpha1.UsageStatus) {
				g.Expect(s.Executions).To(Equal(int64(3)))
				g.Expect(s.Succeeded).To(Equal(int64(2)))
				g.Expect(s.Failed).To(Equal(int64(1)))
			})
		})
	}
}
