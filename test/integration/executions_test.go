package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/internal/usage/store"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
)

// report posts a batch to /v1/executions with the key and returns the
// status code and body.
func report(t testing.TB, raw string, b usage.Batch) (int, string) {
	t.Helper()
	body, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return post(t, raw, body)
}

func post(t testing.TB, raw string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, endpoint+"/v1/executions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+raw)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpsClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func execution(id string, s usage.State, started time.Time, d time.Duration) usage.Execution {
	e := usage.Execution{ID: id, State: s, StartedAt: started}
	if s.Terminal() {
		f := started.Add(d)
		e.FinishedAt = &f
	}
	return e
}

// usageOf waits for the tenant's Usage to satisfy check.
func usageOf(t testing.TB, ns string, check func(g Gomega, s authv1alpha1.UsageStatus)) authv1alpha1.UsageStatus {
	t.Helper()
	var u authv1alpha1.Usage
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}, &u)).To(Succeed())
		check(g, u.Status)
	}).WithTimeout(15 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
	return u.Status
}

func TestExecutionsAreSummarisedPerTenant(t *testing.T) {
	g := NewWithT(t)
	a, b := env.Namespace(t), env.Namespace(t)
	_, keyA := mint(t, a, "svc", authv1alpha1.ApiKeySpec{})
	_, keyB := mint(t, b, "svc", authv1alpha1.ApiKeySpec{})
	now := time.Now().UTC().Add(-time.Minute)

	// The Usage appears with the first ApiKey.
	usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) { g.Expect(s.Keys.Active).To(Equal(int32(1))) })

	status, body := report(t, keyA, usage.Batch{IdempotencyKey: "a-1", Executions: []usage.Execution{
		execution("r1", usage.Running, now, 0),
		execution("s1", usage.Succeeded, now, 2*time.Second),
		execution("f1", usage.Failed, now, 4*time.Second),
		execution("c1", usage.Cancelled, now, time.Second),
		execution("p1", usage.Compensating, now, time.Second),
		execution("q1", usage.Paused, now, 0),
	}})
	g.Expect(status).To(Equal(http.StatusOK), body)
	g.Expect(body).To(ContainSubstring(`"applied":true`))

	t.Run("the summary follows the seed", func(t *testing.T) {
		s := usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) { g.Expect(s.Executions).To(Equal(int64(6))) })
		g := NewWithT(t)
		g.Expect(s.Succeeded).To(Equal(int64(1)))
		g.Expect(s.Failed).To(Equal(int64(3)), "failed, cancelled and compensating")
		g.Expect(s.InFlight).To(Equal(int64(2)), "running and paused")
		g.Expect(s.SuccessRate).To(Equal("25.0"))
		g.Expect(s.AverageDurationSeconds).To(Equal("2.000"), "completed only")
		g.Expect(s.Days).To(HaveLen(30))
		g.Expect(s.Days[29].Date).To(Equal(usage.Day(now)))
	})
	t.Run("a running execution that finishes moves out of in-flight and counts once", func(t *testing.T) {
		status, body := report(t, keyA, usage.Batch{IdempotencyKey: "a-2", Executions: []usage.Execution{
			execution("r1", usage.Succeeded, now, 6*time.Second),
		}})
		NewWithT(t).Expect(status).To(Equal(http.StatusOK), body)
		s := usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) { g.Expect(s.Succeeded).To(Equal(int64(2))) })
		NewWithT(t).Expect(s.Executions).To(Equal(int64(6)))
		NewWithT(t).Expect(s.InFlight).To(Equal(int64(1)))
		NewWithT(t).Expect(s.AverageDurationSeconds).To(Equal("2.800"))
	})
	t.Run("a retried batch is acknowledged and not applied twice", func(t *testing.T) {
		status, body := report(t, keyA, usage.Batch{IdempotencyKey: "a-2", Executions: []usage.Execution{
			execution("r1", usage.Succeeded, now, 6*time.Second),
		}})
		NewWithT(t).Expect(status).To(Equal(http.StatusOK), body)
		NewWithT(t).Expect(body).To(ContainSubstring(`"applied":false`))
	})
	t.Run("a key of one tenant only ever changes its own tenant's usage", func(t *testing.T) {
		status, body := report(t, keyB, usage.Batch{IdempotencyKey: "a-3", Executions: []usage.Execution{
			execution("x", usage.Succeeded, now, time.Second),
		}})
		NewWithT(t).Expect(status).To(Equal(http.StatusOK), body)
		usageOf(t, b, func(g Gomega, s authv1alpha1.UsageStatus) { g.Expect(s.Executions).To(Equal(int64(1))) })
		s := usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) {})
		NewWithT(t).Expect(s.Executions).To(Equal(int64(6)))
		// A tenant named in the body is refused, never obeyed.
		status, body = post(t, keyB, []byte(`{"tenant":"`+a+`","idempotencyKey":"x","executions":[]}`))
		NewWithT(t).Expect(status).To(Equal(http.StatusBadRequest), body)
	})
	t.Run("bad batches are refused whole with the problem named", func(t *testing.T) {
		before := usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) {})
		tests := []struct {
			name  string
			batch usage.Batch
			want  string
		}{
			{"an unknown state", usage.Batch{IdempotencyKey: "bad-1", Executions: []usage.Execution{
				execution("ok", usage.Succeeded, now, time.Second), {ID: "x", State: "done", StartedAt: now}}}, "executions[1].state"},
			{"a missing id", usage.Batch{IdempotencyKey: "bad-2", Executions: []usage.Execution{
				execution("ok", usage.Succeeded, now, time.Second), {State: usage.Running, StartedAt: now}}}, "executions[1].id is required"},
			{"finishedAt before startedAt", usage.Batch{IdempotencyKey: "bad-3", Executions: []usage.Execution{
				execution("ok", usage.Succeeded, now, time.Second), execution("neg", usage.Failed, now, -time.Second)}}, "finishedAt is before its startedAt"},
			{"a finished execution moved back to running", usage.Batch{IdempotencyKey: "bad-4", Executions: []usage.Execution{
				execution("ok", usage.Succeeded, now, time.Second), execution("s1", usage.Running, now, 0)}}, "already finished"},
			{"a timestamp far in the future", usage.Batch{IdempotencyKey: "bad-5", Executions: []usage.Execution{
				execution("ok", usage.Succeeded, now, time.Second), execution("fut", usage.Running, now.Add(time.Hour), 0)}}, "in the future"},
		}
		for _, tt := range tests {
			status, body := report(t, keyA, tt.batch)
			NewWithT(t).Expect(status).To(Equal(http.StatusBadRequest), tt.name)
			NewWithT(t).Expect(body).To(ContainSubstring(tt.want), tt.name)
		}
		big := usage.Batch{IdempotencyKey: "bad-6"}
		for i := range usage.MaxBatchExecutions + 1 {
			big.Executions = append(big.Executions, execution(fmt.Sprint(i), usage.Succeeded, now, time.Second))
		}
		status, body := report(t, keyA, big)
		NewWithT(t).Expect(status).To(Equal(http.StatusBadRequest))
		NewWithT(t).Expect(body).To(ContainSubstring("the limit is 1000"))
		after := usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) {})
		NewWithT(t).Expect(after.Executions).To(Equal(before.Executions), "nothing of a refused batch was applied")
	})
	t.Run("revoked and unknown keys cannot report", func(t *testing.T) {
		status, _ := report(t, verifiertest.BadChecksum(keyA), usage.Batch{IdempotencyKey: "z", Executions: []usage.Execution{execution("z", usage.Running, now, 0)}})
		NewWithT(t).Expect(status).To(Equal(http.StatusUnauthorized))
	})
	t.Run("verifications are counted per day with the flush", func(t *testing.T) {
		usageOf(t, a, func(g Gomega, s authv1alpha1.UsageStatus) {
			g.Expect(s.Days[29].VerificationsAllowed).To(BeNumerically(">=", 4))
		})
	})
}

// TestConcurrentReportersLoseNothing has reporters race on one tenant
// through two replicas: the operator's endpoint and a second ledger store
// standing for another manager replica. Their writes conflict, are retried
// from a fresh read, and every count lands.
func TestConcurrentReportersLoseNothing(t *testing.T) {
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "svc", authv1alpha1.ApiKeySpec{})
	now := time.Now().UTC().Add(-time.Minute)
	otherMetrics := metrics.New(prometheus.NewRegistry())
	otherReplica := &store.Store{Client: env.Client, Reader: env.Client, Clock: clock.RealClock{}, Metrics: otherMetrics}
	conflictsBefore := ledgerWrites("conflict")
	const reporters, batches, per = 4, 20, 20
	var wg sync.WaitGroup
	for r := range reporters {
		wg.Go(func() {
			for b := range batches {
				es := make([]usage.Execution, 0, per)
				for i := range per {
					es = append(es, execution(fmt.Sprintf("%d-%d-%d", r, b, i), usage.Succeeded, now, time.Second))
				}
				batch := usage.Batch{IdempotencyKey: fmt.Sprintf("%d-%d", r, b), Executions: es}
				if r%2 == 0 {
					if status, body := report(t, raw, batch); status != http.StatusOK {
						t.Errorf("status %d: %s", status, body)
					}
				} else if _, err := otherReplica.Report(context.Background(), ns, "svc", &batch); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	usageOf(t, ns, func(g Gomega, s authv1alpha1.UsageStatus) {
		g.Expect(s.Executions).To(Equal(int64(reporters * batches * per)))
		g.Expect(s.Succeeded).To(Equal(int64(reporters * batches * per)))
	})
	conflicts := ledgerWrites("conflict") - conflictsBefore + testutil.ToFloat64(otherMetrics.LedgerWrites.WithLabelValues("conflict"))
	t.Logf("FIGURE %d batches from two replicas at once: %v ledger write conflicts, each retried; no count lost", reporters*batches, conflicts)
}

// TestOneKeyCannotTakeItsTenantsInFlightSlots has one key of a tenant fill
// its share of executions in flight: it is refused with a reason, and
// another key of the tenant still reports.
func TestOneKeyCannotTakeItsTenantsInFlightSlots(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	_, busy := mint(t, ns, "busy", authv1alpha1.ApiKeySpec{})
	_, quiet := mint(t, ns, "quiet", authv1alpha1.ApiKeySpec{})
	now := time.Now().UTC().Add(-time.Minute)
	runningBatch := func(key string, n int) usage.Batch {
		b := usage.Batch{IdempotencyKey: key}
		for i := range n {
			b.Executions = append(b.Executions, execution(fmt.Sprint(key, "-", i), usage.Running, now, 0))
		}
		return b
	}
	status, body := report(t, busy, runningBatch("busy-all", usage.MaxInFlightPerKey))
	g.Expect(status).To(Equal(http.StatusOK), body)
	status, body = report(t, busy, runningBatch("busy-more", 1))
	g.Expect(status).To(Equal(http.StatusTooManyRequests))
	g.Expect(body).To(ContainSubstring("this key has 1000"))
	status, body = report(t, quiet, runningBatch("quiet", 1))
	g.Expect(status).To(Equal(http.StatusOK), body)
	usageOf(t, ns, func(g Gomega, s authv1alpha1.UsageStatus) {
		g.Expect(s.InFlight).To(Equal(int64(usage.MaxInFlightPerKey + 1)))
	})
}

// TestAcknowledgedReportsSurviveARestart restarts the operator between a
// report and reading the summary.
func TestAcknowledgedReportsSurviveARestart(t *testing.T) {
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "svc", authv1alpha1.ApiKeySpec{})
	now := time.Now().UTC().Add(-time.Minute)
	status, body := report(t, raw, usage.Batch{IdempotencyKey: "before-restart", Executions: []usage.Execution{
		execution("a", usage.Succeeded, now, time.Second), execution("b", usage.Running, now, 0),
	}})
	NewWithT(t).Expect(status).To(Equal(http.StatusOK), body)

	restartOperator(t)

	// The retry after the restart is recognised, and the summary is whole.
	status, body = report(t, raw, usage.Batch{IdempotencyKey: "before-restart", Executions: []usage.Execution{
		execution("a", usage.Succeeded, now, time.Second), execution("b", usage.Running, now, 0),
	}})
	NewWithT(t).Expect(status).To(Equal(http.StatusOK), body)
	NewWithT(t).Expect(body).To(ContainSubstring(`"applied":false`))
	usageOf(t, ns, func(g Gomega, s authv1alpha1.UsageStatus) {
		g.Expect(s.Executions).To(Equal(int64(2)))
		g.Expect(s.InFlight).To(Equal(int64(1)))
	})
}

func ledgerWrites(result string) float64 {
	return testutil.ToFloat64(op.Metrics.LedgerWrites.WithLabelValues(result))
}
