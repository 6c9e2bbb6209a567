package endpoints

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkAuthorizeOverTLS measures /authorize with a valid key over a real
// TLS listener, against a baseline handler that answers 200 at once on an
// identical listener: the ratio is the verifier's own cost.
//
//	go test -run '^$' -bench OverTLS ./internal/endpoints/
func BenchmarkAuthorizeOverTLS(b *testing.B) {
	t := &testing.T{}
	r := newRig(t, &Server{Limiter: NewFailureLimiter(10, 50, nil)})
	baseline := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer baseline.Close()
	header := "Bearer " + r.active

	run := func(b *testing.B, url string, client *http.Client) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Authorization", header)
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	tune := func(c *http.Client) *http.Client {
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		return c
	}
	b.Run("baseline-empty-handler", func(b *testing.B) { run(b, baseline.URL, tune(baseline.Client())) })
	b.Run("authorize-valid-key", func(b *testing.B) { run(b, r.srv.URL+PathAuthorize, tune(r.client)) })
}
