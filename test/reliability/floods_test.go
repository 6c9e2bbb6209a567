package reliability

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/latchkey-dev/latchkey/internal/keys"
)

func authorize(client *http.Client, raw string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, lk.Endpoint+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func newClient(conns int) *http.Client {
	tr := lk.HTTPClient.Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost = conns, conns
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// paced calls f at rate per second from workers goroutines until d passes.
func paced(rate int, workers int, d time.Duration, f func()) {
	interval := time.Second * time.Duration(workers) / time.Duration(rate)
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range workers {
		wg.Go(func() {
			next := time.Now().Add(interval * time.Duration(w) / time.Duration(workers))
			for next.Before(end) {
				time.Sleep(time.Until(next))
				f()
				next = next.Add(interval)
			}
		})
	}
	wg.Wait()
}

// TestOneBusyKey (case 6): 1,000 requests a second with one valid key for
// 60 seconds cause at most one last-use write per minute, and no conflicts.
func TestOneBusyKey(t *testing.T) {
	slow(t)
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "busy")
	writes := func(r string) float64 {
		return testutil.ToFloat64(lk.Operator.Metrics.LastUsedWrite.WithLabelValues(r))
	}
	before, failedBefore := writes("written"), writes("failed")
	client := newClient(16)
	var ok, other atomic.Int64
	start := time.Now()
	paced(1000, 16, 60*time.Second, func() {
		if status, err := authorize(client, raw); err == nil && status == http.StatusOK {
			ok.Add(1)
		} else {
			other.Add(1)
		}
	})
	time.Sleep(65 * time.Second) // the next flush, and the one after, write what is left
	elapsed := time.Since(start)
	written := writes("written") - before
	perMinute := written / elapsed.Minutes()
	NewWithT(t).Expect(other.Load()).To(BeZero())
	NewWithT(t).Expect(writes("failed")-failedBefore).To(BeZero(), "no failed (conflicting) writes")
	NewWithT(t).Expect(written).To(BeNumerically("<=", elapsed.Minutes()+1))
	record(t, "06 1,000 req/s on one key for 60s", fmt.Sprintf("%d requests, %.0f last-use writes in %.0fs = %.2f writes/minute, 0 conflicts",
		ok.Load(), written, elapsed.Seconds(), perMinute))
}

// TestWrongKeyFlood (case 7): a flood of well-formed wrong keys from one
// address gets 429s while a valid client calls 100 times a second; its p99
// is compared with the p99 without the flood, and memory is read.
func TestWrongKeyFlood(t *testing.T) {
	slow(t)
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "valid")
	valid := newClient(4)
	measure := func(d time.Duration) (time.Duration, int) {
		var mu sync.Mutex
		var lat []time.Duration
		failures := 0
		paced(100, 4, d, func() {
			t0 := time.Now()
			status, err := authorize(valid, raw)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || status != http.StatusOK {
				failures++
				return
			}
			lat = append(lat, time.Since(t0))
		})
		slices.Sort(lat)
		return lat[len(lat)*99/100], failures
	}
	quiet, _ := measure(10 * time.Second)

	wrong := make([]string, 1000)
	for i := range wrong {
		wrong[i], _ = keys.Generate(rand.Reader, keys.Prefixed)
	}
	flood := newClient(32)
	var sent, limited atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				status, err := authorize(flood, wrong[i%len(wrong)])
				sent.Add(1)
				if err == nil && status == http.StatusTooManyRequests {
					limited.Add(1)
				}
			}
		})
	}
	start := time.Now()
	loaded, failures := measure(10 * time.Second)
	floodRate := float64(sent.Load()) / time.Since(start).Seconds()
	close(stop)
	wg.Wait()
	rss := residentMiB(t)
	NewWithT(t).Expect(failures).To(BeZero(), "the valid client was never refused")
	ratio := float64(loaded) / float64(quiet)
	judge(t, "07 wrong-key flood from one address", fmt.Sprintf("flood %.0f req/s (%.1f%% answered 429); valid client p99 %v without, %v with (%.2f×, goal ≤1.10×); RSS %d MiB",
		floodRate, 100*float64(limited.Load())/float64(sent.Load()), quiet.Round(10*time.Microsecond), loaded.Round(10*time.Microsecond), ratio, rss), ratio <= 1.10)
}

// residentMiB is this process's resident memory: the operator runs in it.
func residentMiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb / 1024
		}
	}
	return 0
}
