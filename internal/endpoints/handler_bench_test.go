package endpoints

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage/activity"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// BenchmarkHandlers measures the handlers alone, without a connection:
// what a request costs Latchkey beyond net/http's and TLS's own.
//
//	go test -run '^$' -bench Handlers ./internal/endpoints/
func BenchmarkHandlers(b *testing.B) {
	v, raws := verifiertest.Populated(b, 10_000)
	clk := clock.RealClock{}
	s := &Server{
		Verifier: v, Clock: clk, Audiences: []string{DefaultAudience},
		Activity: activity.New(nil, nil, clk, time.Hour, nil),
		Limiter:  NewFailureLimiter(10, 50, nil),
		Metrics:  metrics.New(prometheus.NewRegistry()),
	}
	mux := http.NewServeMux()
	s.Register(mux.Handle)
	b.Run("authorize", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r := httptest.NewRequest(http.MethodGet, protocol.PathAuthorize, nil)
			r.Header.Set("Authorization", "Bearer "+raws[i%len(raws)])
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				b.Fatal(w.Code)
			}
			i++
		}
	})
	b.Run("tokenreview", func(b *testing.B) {
		bodies := make([][]byte, 1000)
		for i := range bodies {
			bodies[i] = []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","metadata":{"creationTimestamp":null},` +
				`"spec":{"token":"` + raws[i] + `","audiences":["latchkey.dev"]},"status":{"user":{}}}`)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, protocol.PathTokenReview, bytes.NewReader(bodies[i%len(bodies)]))
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, r)
			if w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte(`"authenticated":true`)) {
				b.Fatal(w.Code, w.Body.String())
			}
			i++
		}
	})
}
