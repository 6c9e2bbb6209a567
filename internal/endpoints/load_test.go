package endpoints

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage/activity"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// BenchmarkLoadAuthorize is a load run on 127.0.0.1: /authorize with 10,000
// keys over keep-alive TLS connections, alternating round by round with a
// ceiling: a bare net/http handler on the same TLS setup doing the same
// hash lookup on a map. It prints req/s, p50 and p99 for both and their
// ratios, as medians of the rounds, at 8 and 32 connections; and, in the
// same rounds, /authorize as Envoy's HTTP ext_authz asks it (a sub-path,
// the key in X-API-Key), with its ratio to /authorize.
//
//	go test -run '^$' -bench LoadAuthorize -benchtime 1x ./internal/endpoints/
func BenchmarkLoadAuthorize(b *testing.B) {
	const nKeys, rounds, roundTime = 10_000, 5, 2 * time.Second
	v, raws := verifiertest.Populated(b, nKeys)
	clk := clock.RealClock{}
	s := &Server{
		Verifier: v, Clock: clk,
		Activity: activity.New(nil, nil, clk, time.Hour, nil),
		Limiter:  NewFailureLimiter(10, 50, nil),
		Metrics:  metrics.New(prometheus.NewRegistry()),
	}
	mux := http.NewServeMux()
	s.Register(mux.Handle)
	real := httptest.NewTLSServer(mux)
	defer real.Close()

	hashes := make(map[string]string, nKeys)
	for _, raw := range raws {
		sum := sha256.Sum256([]byte(raw))
		hashes[hex.EncodeToString(sum[:])] = "tenant"
	}
	ceiling := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(key))
		tenant, ok := hashes[hex.EncodeToString(sum[:])]
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set(protocol.HeaderTenant, tenant)
	}))
	defer ceiling.Close()

	for range b.N {
		for _, conns := range []int{8, 32} {
			var results [3][]loadResult
			for range rounds {
				results[0] = append(results[0], load(b, ceiling, ceiling.URL, conns, raws, roundTime, bearer))
				results[1] = append(results[1], load(b, real, real.URL+protocol.PathAuthorize, conns, raws, roundTime, bearer))
				results[2] = append(results[2], load(b, real, real.URL+protocol.PathAuthorize+"/api/v1/things?page=2", conns, raws, roundTime, apiKey))
			}
			c, l, x := median(results[0]), median(results[1]), median(results[2])
			b.Logf("FIGURE %2d connections, 10,000 keys, median of %d rounds: ceiling %6.0f req/s p50 %v p99 %v | /authorize %6.0f req/s p50 %v p99 %v | ratio req/s %.2f, p99 %.2f",
				conns, rounds, c.rps, c.p50, c.p99, l.rps, l.p50, l.p99, l.rps/c.rps, float64(l.p99)/float64(c.p99))
			b.Logf("FIGURE %2d connections: /authorize/api/v1/things with X-API-Key %6.0f req/s p50 %v p99 %v | ratio to /authorize req/s %.2f, p99 %.2f",
				conns, x.rps, x.p50, x.p99, x.rps/l.rps, float64(x.p99)/float64(l.p99))
			b.ReportMetric(l.rps/c.rps, fmt.Sprintf("rps-ratio-%dconns", conns))
			b.ReportMetric(float64(l.p99)/float64(c.p99), fmt.Sprintf("p99-ratio-%dconns", conns))
		}
	}
}

type loadResult struct {
	rps      float64
	p50, p99 time.Duration
}

// bearer and apiKey present a key as Authorization: Bearer and as X-API-Key.
func bearer(h http.Header, raw string) { h.Set("Authorization", "Bearer "+raw) }
func apiKey(h http.Header, raw string) { h.Set(protocol.HeaderAPIKey, raw) }

// load runs conns keep-alive connections against url for d, presenting
// keys with present, and measures.
func load(b *testing.B, srv *httptest.Server, url string, conns int, raws []string, d time.Duration, present func(http.Header, string)) loadResult {
	client := srv.Client()
	tr := client.Transport.(*http.Transport)
	tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost = conns, conns
	defer tr.CloseIdleConnections()
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			for time.Since(start) < d {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				present(req.Header, raws[rand.IntN(len(raws))])
				t0 := time.Now()
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
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(all)
	if len(all) == 0 {
		return loadResult{}
	}
	return loadResult{
		rps: float64(len(all)) / elapsed.Seconds(),
		p50: all[len(all)/2].Round(time.Microsecond),
		p99: all[len(all)*99/100].Round(time.Microsecond),
	}
}

func median(rs []loadResult) loadResult {
	pick := func(f func(loadResult) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		slices.Sort(vs)
		return vs[len(vs)/2]
	}
	return loadResult{
		rps: pick(func(r loadResult) float64 { return r.rps }),
		p50: time.Duration(pick(func(r loadResult) float64 { return float64(r.p50) })),
		p99: time.Duration(pick(func(r loadResult) float64 { return float64(r.p99) })),
	}
}
