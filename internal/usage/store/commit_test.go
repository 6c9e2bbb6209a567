package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/scheme"
	"github.com/latchkey-dev/latchkey/internal/usage"
)

// These tests run the store against controller-runtime's fake client, which
// keeps resource versions as the API server does, with writes intercepted.

var today = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func fakeStore(t *testing.T, funcs interceptor.Funcs) (*Store, client.Client, *metrics.Metrics) {
	t.Helper()
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithInterceptorFuncs(funcs).Build()
	m := metrics.New(prometheus.NewRegistry())
	return &Store{Client: c, Reader: c, Clock: clocktesting.NewFakeClock(today), Metrics: m}, c, m
}

// ledgerOf reads tenant-a's ledger state, the tenant these tests report for.
func ledgerOf(t *testing.T, c client.Client) *usage.Ledger {
	t.Helper()
	obj := &authv1alpha1.UsageLedger{}
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: "tenant-a", Name: authv1alpha1.UsageLedgerStateName}, obj); err != nil {
		t.Fatal(err)
	}
	l, err := usage.Decode(obj.Spec.State)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAWriteThatConflictsIsReadAndAppliedAgain(t *testing.T) {
	var s *Store
	raced := false
	s, c, m := fakeStore(t, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if !raced {
				// Another replica writes between this one's read and write.
				raced = true
				other := &Store{Client: c, Reader: c, Clock: s.Clock}
				if err := other.RecordVerifications(ctx, "tenant-a", usage.Day(today), 10, 0); err != nil {
					return err
				}
			}
			return c.Update(ctx, obj, opts...)
		},
	})
	ctx := context.Background()
	if err := s.RecordVerifications(ctx, "tenant-a", usage.Day(today), 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordVerifications(ctx, "tenant-a", usage.Day(today), 0, 1); err != nil {
		t.Fatal(err)
	}
	d := ledgerOf(t, c).Days
	if len(d) != 1 || d[0].VerificationsAllowed != 11 || d[0].VerificationsDenied != 1 {
		t.Fatalf("days %+v: want both replicas' counts, 11 allowed and 1 denied", d)
	}
	if n := testutil.ToFloat64(m.LedgerWrites.WithLabelValues("conflict")); n != 1 {
		t.Fatalf("%v conflicts counted, want 1", n)
	}
	if n := testutil.ToFloat64(m.LedgerWrites.WithLabelValues("written")); n != 2 {
		t.Fatalf("%v writes counted, want 2 (the create and the retried update)", n)
	}
}

func TestChangesQueuedDuringAWriteAreCommittedTogether(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	writes := 0
	write := func() {
		mu.Lock()
		writes++
		first := writes == 1
		mu.Unlock()
		if first {
			<-release
		}
	}
	s, c, _ := fakeStore(t, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			write()
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			write()
			return c.Update(ctx, obj, opts...)
		},
	})
	ctx := context.Background()
	const later = 10
	var wg sync.WaitGroup
	errs := make(chan error, later+1)
	wg.Go(func() { errs <- s.RecordVerifications(ctx, "tenant-a", usage.Day(today), 1, 0) })
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return writes == 1 })
	for range later {
		wg.Go(func() { errs <- s.RecordVerifications(ctx, "tenant-a", usage.Day(today), 1, 0) })
	}
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queues["tenant-a"].pending) == later
	})
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if writes != 2 {
		t.Fatalf("%d writes for %d changes, want 2: the first, then the ones queued behind it together", writes, later+1)
	}
	if d := ledgerOf(t, c).Days; len(d) != 1 || d[0].VerificationsAllowed != later+1 {
		t.Fatalf("days %+v: want every change's count", d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queues) != 0 {
		t.Fatalf("queues left behind: %v", s.queues)
	}
}

func TestARefusedBatchChangesNothingAndARetryIsRecognised(t *testing.T) {
	s, c, _ := fakeStore(t, interceptor.Funcs{})
	ctx := context.Background()
	started := today.Add(-time.Hour)
	finished := started.Add(time.Second)
	good := &usage.Batch{IdempotencyKey: "good", Executions: []usage.Execution{{ID: "a", State: usage.Succeeded, StartedAt: started, FinishedAt: &finished}}}
	if applied, err := s.Report(ctx, "tenant-a", "svc", good); err != nil || !applied {
		t.Fatalf("Report = %v, %v", applied, err)
	}
	// "a" finished: reporting it running again is refused, and nothing of
	// the batch applies; the good retry is recognised.
	bad := &usage.Batch{IdempotencyKey: "bad", Executions: []usage.Execution{{ID: "a", State: usage.Running, StartedAt: started}}}
	if _, err := s.Report(ctx, "tenant-a", "svc", bad); err == nil {
		t.Fatal("a batch reporting a finished execution running was applied")
	}
	if applied, err := s.Report(ctx, "tenant-a", "svc", good); err != nil || applied {
		t.Fatalf("the retried batch: Report = %v, %v; want it recognised", applied, err)
	}
	l := ledgerOf(t, c)
	if len(l.Days) != 1 || l.Days[0].Total != 1 || len(l.Recent) != 1 {
		t.Fatalf("ledger %+v: want one execution from one batch", l)
	}
}

// waitFor polls until cond holds: the goroutines it waits for have no
// other way to say they got there.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

// TestAFailedKeyMoveDoesNotStopReports: while batch keys cannot be moved to
// a segment, reports go on (the state has room up to MaxRecent), and the
// move happens once segments can be written again.
func TestAFailedKeyMoveDoesNotStopReports(t *testing.T) {
	segmentsFail := true
	refuse := func(obj client.Object) error {
		if segmentsFail && strings.HasPrefix(obj.GetName(), "batch-keys-") {
			return errors.New("injected: etcd refuses the segment")
		}
		return nil
	}
	s, c, _ := fakeStore(t, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if err := refuse(obj); err != nil {
				return err
			}
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if err := refuse(obj); err != nil {
				return err
			}
			return c.Update(ctx, obj, opts...)
		},
	})
	ctx := context.Background()
	started := today.Add(-time.Hour)
	report := func(i int) {
		t.Helper()
		b := &usage.Batch{IdempotencyKey: fmt.Sprint("b-", i), Executions: []usage.Execution{{ID: fmt.Sprint("e-", i), State: usage.Running, StartedAt: started}}}
		if _, err := s.Report(ctx, "tenant-a", fmt.Sprint("svc-", i%10), b); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	for i := range usage.MoveAt + 5 {
		report(i)
	}
	if n := len(ledgerOf(t, c).Recent); n != usage.MoveAt+5 {
		t.Fatalf("%d recent keys, want all %d kept while segments fail", n, usage.MoveAt+5)
	}
	segmentsFail = false
	report(usage.MoveAt + 5)
	if l := ledgerOf(t, c); len(l.Recent) != 1 || l.Moves != 1 {
		t.Fatalf("after segments work again: %d recent keys, %d moves; want the move done", len(l.Recent), l.Moves)
	}
}
