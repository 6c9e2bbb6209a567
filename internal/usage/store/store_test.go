package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/usage"
)

// etcdLimit is the largest request etcd accepts by default, and so the
// largest object the API server can store.
const etcdLimit = 1536 * 1024

// singleObjectAtTheCaps is the ledger of d44cd84 (one object per tenant,
// lists of ids) filled the same way, measured the same way: 1,512,369
// bytes, 834,599 of them managedFields, which every report rewrote.
const singleObjectAtTheCaps = 1_512_369

// writeCounter counts the objects a store writes and their bytes as the API
// server answered them, managedFields included.
type writeCounter struct {
	client.Client
	bytes, writes atomic.Int64
}

func (w *writeCounter) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	err := w.Client.Create(ctx, obj, opts...)
	w.add(obj, err)
	return err
}

func (w *writeCounter) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	err := w.Client.Update(ctx, obj, opts...)
	w.add(obj, err)
	return err
}

func (w *writeCounter) add(obj client.Object, err error) {
	if err != nil {
		return
	}
	b, _ := json.Marshal(obj)
	w.bytes.Add(int64(len(b)))
	w.writes.Add(1)
}

func newStore(clk *clocktesting.FakeClock) (*Store, *writeCounter) {
	w := &writeCounter{Client: env.Client}
	return &Store{Client: w, Reader: env.Client, Clock: clk}, w
}

func succeeded(id string, started time.Time) usage.Execution {
	f := started.Add(time.Second)
	return usage.Execution{ID: id, State: usage.Succeeded, StartedAt: started, FinishedAt: &f}
}

func runningSince(id string, started time.Time) usage.Execution {
	return usage.Execution{ID: id, State: usage.Running, StartedAt: started}
}

// applyAll applies batches 16 at a time, as concurrent reporters would.
func applyAll(tb testing.TB, s *Store, ns string, batches []usage.Batch) {
	tb.Helper()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(batches)); i = next.Add(1) - 1 {
				if applied, err := s.Report(context.Background(), ns, fmt.Sprint("reporter-", i%5), &batches[i]); err != nil || !applied {
					tb.Errorf("batch %s: applied %v, %v", batches[i].IdempotencyKey, applied, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
}

// fillToTheCaps reports what brings a tenant's state to its caps: 5,000
// executions in flight (five keys at their 1,000 each), 5,000 finished over
// the 90 days, and batch keys up to the point of moving.
func fillToTheCaps(tb testing.TB, s *Store, ns string, now time.Time) {
	tb.Helper()
	batches := make([]usage.Batch, 0, usage.MaxInFlight/usage.MaxInFlightPerKey)
	for r := range usage.MaxInFlight / usage.MaxInFlightPerKey {
		b := usage.Batch{IdempotencyKey: fmt.Sprint("running-", r)}
		for i := range usage.MaxInFlightPerKey {
			b.Executions = append(b.Executions, runningSince(fmt.Sprintf("run-%d-%d", r, i), now.Add(-time.Hour)))
		}
		batches = append(batches, b)
	}
	applyAll(tb, s, ns, batches) // one batch per reporter: reporter-i is batch i
	batches = nil
	for r := range usage.MaxFinished / usage.MaxBatchExecutions {
		b := usage.Batch{IdempotencyKey: fmt.Sprint("finished-", r)}
		for i := range usage.MaxBatchExecutions {
			b.Executions = append(b.Executions, succeeded(fmt.Sprintf("done-%d-%d", r, i), now.AddDate(0, 0, -(i%usage.LedgerDays))))
		}
		batches = append(batches, b)
	}
	for n := len(batches) + usage.MaxInFlight/usage.MaxInFlightPerKey; n < usage.MoveAt-1; n++ {
		batches = append(batches, usage.Batch{IdempotencyKey: fmt.Sprint("small-", n), Executions: []usage.Execution{succeeded(fmt.Sprint("small-", n), now)}})
	}
	// Finished executions take no slot, whichever key reports them.
	applyAll(tb, s, ns, batches)
}

func state(tb testing.TB, ns string) (*authv1alpha1.UsageLedger, *usage.Ledger) {
	tb.Helper()
	obj := &authv1alpha1.UsageLedger{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageLedgerStateName}, obj); err != nil {
		tb.Fatal(err)
	}
	l, err := usage.Decode(obj.Spec.State)
	if err != nil {
		tb.Fatal(err)
	}
	return obj, l
}

// stored is an object's size as the API server serves it, and its managedFields'.
func stored(tb testing.TB, ns, name string) (total, managed int) {
	tb.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(authv1alpha1.GroupVersion.WithKind("UsageLedger"))
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, u); err != nil {
		tb.Fatal(err)
	}
	b, _ := json.Marshal(u.Object)
	m, _ := json.Marshal(u.GetManagedFields())
	return len(b), len(m)
}

// TestTheLedgerAtItsMaximumSize fills every bound of a tenant's ledger
// against the real API server and measures each object as stored: none may
// come near the 1.5 MiB etcd accepts.
func TestTheLedgerAtItsMaximumSize(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	s, _ := newStore(clk)
	fillToTheCaps(t, s, ns, clk.Now())
	if err := s.RecordVerifications(ctx, ns, usage.Day(clk.Now()), 1, 1); err != nil {
		t.Fatal(err)
	}

	obj, l := state(t, ns)
	if len(l.InFlight) != usage.MaxInFlight || len(l.Finished) != usage.MaxFinished || len(l.Days) != usage.LedgerDays || len(l.Recent) != usage.MoveAt-1 {
		t.Fatalf("filled to %d in flight, %d finished, %d days, %d recent", len(l.InFlight), len(l.Finished), len(l.Days), len(l.Recent))
	}
	reported, reportedManaged := stored(t, ns, authv1alpha1.UsageLedgerStateName)

	// Beyond what reports reach: the recent keys at their bound (moving
	// failed throughout), a 91st day, every counter at its widest.
	for i := len(l.Recent); i < usage.MaxRecent; i++ {
		l.Recent = append(l.Recent, usage.Hash(fmt.Sprint("stuck-", i)))
	}
	l.Days = append(l.Days, authv1alpha1.LedgerDay{Date: usage.Day(clk.Now().AddDate(0, 0, 1))})
	for i := range l.Days {
		d := &l.Days[i]
		d.Total, d.Succeeded, d.Failed, d.DurationMillis, d.VerificationsAllowed, d.VerificationsDenied = 1<<63-1, 1<<63-1, 1<<63-1, 1<<63-1, 1<<63-1, 1<<63-1
	}
	l.Moves, l.Batches = 1<<63-1, usage.MaxBatchesPerDay
	obj.Spec.State = l.Encode()
	if err := s.Client.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	full, fullManaged := stored(t, ns, authv1alpha1.UsageLedgerStateName)
	if n := len(obj.ManagedFields); n != 1 {
		t.Errorf("the state has %d managedFields entries after every write by one manager; want 1", n)
	}

	// A day's segment at its bound, and one spilling into the next.
	keys := make([]usage.ID, 0, usage.SegmentKeys+1)
	for i := range usage.SegmentKeys + 1 {
		keys = append(keys, usage.Hash(fmt.Sprint("moved-", i)))
	}
	if err := s.moveKeys(ctx, ns, usage.Day(clk.Now()), merge(nil, keys)); err != nil {
		t.Fatal(err)
	}
	slot, _ := slotOf(usage.Day(clk.Now()))
	segment, segmentManaged := stored(t, ns, fmt.Sprintf("batch-keys-%d-00", slot))

	t.Logf("FIGURE state filled by reports to every cap: %d bytes (%d of them managedFields)", reported, reportedManaged)
	t.Logf("FIGURE state with every bound reached: %d bytes (%d managedFields), %.1f%% of etcd's 1.5 MiB; the single-object ledger was %d", full, fullManaged, float64(full)*100/etcdLimit, singleObjectAtTheCaps)
	t.Logf("FIGURE full batch-key segment (%d keys): %d bytes (%d managedFields), %.1f%% of 1.5 MiB", usage.SegmentKeys, segment, segmentManaged, float64(segment)*100/etcdLimit)
	for name, size := range map[string]int{"state": full, "segment": segment} {
		if size > etcdLimit/4 {
			t.Errorf("the largest %s is %d bytes, over a quarter of etcd's limit", name, size)
		}
	}
}

// TestABatchIsAppliedOnceForADay resends a batch after more batches than the
// old ledger remembered and more finished executions than the state keeps:
// 10 minutes later and 23 hours later (the next UTC day), through this store
// and through one standing for another replica, it is not applied again.
func TestABatchIsAppliedOnceForADay(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	sent := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(sent)
	s, _ := newStore(clk)
	x := usage.Batch{IdempotencyKey: "x", Executions: []usage.Execution{
		succeeded("x-0", sent.Add(-time.Minute)), succeeded("x-1", sent.Add(-time.Minute)), runningSince("x-2", sent.Add(-time.Minute)),
	}}
	if applied, err := s.Report(ctx, ns, "reporter-0", &x); err != nil || !applied {
		t.Fatalf("applied %v, %v", applied, err)
	}
	const others, per = 2100, 3
	batches := make([]usage.Batch, 0, others)
	for b := range others {
		batch := usage.Batch{IdempotencyKey: fmt.Sprint("other-", b)}
		for i := range per {
			batch.Executions = append(batch.Executions, succeeded(fmt.Sprintf("other-%d-%d", b, i), sent))
		}
		batches = append(batches, batch)
	}
	applyAll(t, s, ns, batches)
	_, l := state(t, ns)
	if l.Moves == 0 || len(l.Recent) >= usage.MoveAt {
		t.Fatalf("no keys moved: %d moves, %d recent", l.Moves, len(l.Recent))
	}

	for _, later := range []time.Duration{10 * time.Minute, 23 * time.Hour} {
		clk.SetTime(sent.Add(later))
		other, _ := newStore(clk)
		for name, store := range map[string]*Store{"this replica": s, "another replica": other} {
			x := x // a retry resends the same batch
			if applied, err := store.Report(ctx, ns, "reporter-0", &x); err != nil || applied {
				t.Errorf("%v later through %s: applied %v, %v", later, name, applied, err)
			}
		}
	}
	_, l = state(t, ns)
	st := usage.Summarise(l, 30, clk.Now())
	if want := int64(len(x.Executions) + others*per); st.Executions != want || st.InFlight != 1 {
		t.Fatalf("%d executions, %d in flight; want %d and 1", st.Executions, st.InFlight, want)
	}
}

// TestOneKeyCannotBlockTheOthers fills one key's in-flight slots: that key
// is refused, another key of the tenant is not.
func TestOneKeyCannotBlockTheOthers(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	s, _ := newStore(clk)
	fill := func(key, reporter string, n int) (bool, error) {
		b := usage.Batch{IdempotencyKey: key}
		for i := range n {
			b.Executions = append(b.Executions, runningSince(fmt.Sprint(key, i), clk.Now().Add(-time.Minute)))
		}
		return s.Report(ctx, ns, reporter, &b)
	}
	if _, err := fill("a-all", "a", usage.MaxInFlightPerKey); err != nil {
		t.Fatal(err)
	}
	if _, err := fill("a-more", "a", 1); !errors.Is(err, usage.ErrTooManyInFlight) {
		t.Fatalf("key a past its cap: %v", err)
	}
	if applied, err := fill("b-all", "b", usage.MaxInFlightPerKey); err != nil || !applied {
		t.Fatalf("key b: applied %v, %v", applied, err)
	}
}

// BenchmarkReportsAtTheCaps measures what one report costs the API server
// once a tenant's ledger is at its caps: the bytes of the objects written
// per report, as stored (managedFields included), moves of batch keys to
// segments amortised.
//
//	go test -run '^$' -bench ReportsAtTheCaps -benchtime 1x ./internal/usage/store/
func BenchmarkReportsAtTheCaps(b *testing.B) {
	for range b.N {
		ns := env.Namespace(b)
		clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
		s, w := newStore(clk)
		fillToTheCaps(b, s, ns, clk.Now())
		const reports = usage.MoveAt // one move of batch keys per MoveAt reports
		bytes, writes := w.bytes.Load(), w.writes.Load()
		start := time.Now()
		for i := range reports {
			batch := usage.Batch{IdempotencyKey: fmt.Sprint("report-", i), Executions: []usage.Execution{succeeded(fmt.Sprint("report-", i), clk.Now())}}
			if _, err := s.Report(context.Background(), ns, "reporter-9", &batch); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		perReport := float64(w.bytes.Load()-bytes) / reports
		b.Logf("FIGURE one report at the caps writes %.0f bytes in %.3f objects (the single-object ledger rewrote all %d: %.1fx less); %.0f reports/s one at a time",
			perReport, float64(w.writes.Load()-writes)/reports, singleObjectAtTheCaps, singleObjectAtTheCaps/perReport, reports/elapsed.Seconds())
	}
}
