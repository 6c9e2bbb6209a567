package activity

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/scheme"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var day = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// counter is a VerificationCounter that fails while failing is set.
// reported is what the counter was told: a tenant's counts for a date.
type reported struct{ tenant, date string }

type counter struct {
	mu      sync.Mutex
	failing bool
	got     map[reported]verifications
}

func (c *counter) RecordVerifications(_ context.Context, tenant, date string, allowed, denied int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing {
		return errors.New("the ledger is unavailable")
	}
	v := c.got[reported{tenant, date}]
	v.allowed, v.denied = v.allowed+allowed, v.denied+denied
	c.got[reported{tenant, date}] = v
	return nil
}

type fixture struct {
	r       *Recorder
	c       client.Client
	counter *counter
	clk     *clocktesting.FakeClock
	m       *metrics.Metrics
	id      verifier.Identity
}

// newFixture is a recorder writing to a fake API server holding one key of
// tenant-a and its record; patch, when set, intercepts status patches.
func newFixture(t *testing.T, patch func(ctx context.Context, c client.Client, obj client.Object, p client.Patch) error) *fixture {
	t.Helper()
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "ci", UID: "uid-1"}}
	id := verifier.Identity{Tenant: "tenant-a", KeyName: "ci", KeyUID: "uid-1", RecordHash: [32]byte{0xab, 0xc1, 0x23}}
	rec := &authv1alpha1.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Name: id.RecordName()}}
	b := fake.NewClientBuilder().WithScheme(scheme.New()).
		WithObjects(key, rec).WithStatusSubresource(key, rec)
	if patch != nil {
		b = b.WithInterceptorFuncs(interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, c client.Client, _ string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				return patch(ctx, c, obj, p)
			},
		})
	}
	f := &fixture{
		c:       b.Build(),
		counter: &counter{got: map[reported]verifications{}},
		clk:     clocktesting.NewFakeClock(day),
		m:       metrics.New(prometheus.NewRegistry()),
		id:      id,
	}
	f.r = New(f.c, f.counter, f.clk, time.Minute, f.m)
	return f
}

func (f *fixture) lastUsed(t *testing.T) (key, rec *metav1.Time) {
	t.Helper()
	k := &authv1alpha1.ApiKey{}
	if err := f.c.Get(context.Background(), types.NamespacedName{Namespace: "tenant-a", Name: "ci"}, k); err != nil {
		t.Fatal(err)
	}
	r := &authv1alpha1.ApiKeyRecord{}
	if err := f.c.Get(context.Background(), types.NamespacedName{Name: f.id.RecordName()}, r); err != nil {
		t.Fatal(err)
	}
	return k.Status.LastUsedAt, r.Status.LastUsedAt
}

func (f *fixture) writes(result string) float64 {
	return testutil.ToFloat64(f.m.LastUsedWrites.WithLabelValues(result))
}

func TestManyUsesOfAKeyCostOneWriteOfTheLatest(t *testing.T) {
	f := newFixture(t, nil)
	for range 3 {
		f.r.Allowed(f.id)
		f.clk.Step(10 * time.Second)
	}
	f.r.Denied("tenant-a")
	if n := f.r.Flush(context.Background()); n != 1 {
		t.Fatalf("Flush wrote %d keys' last use, want 1", n)
	}
	key, rec := f.lastUsed(t)
	want := day.Add(20 * time.Second)
	if key == nil || !key.Time.Equal(want) || rec == nil || !rec.Time.Equal(want) {
		t.Fatalf("lastUsedAt: key %v, record %v; want %v on both", key, rec, want)
	}
	if got := f.counter.got[reported{"tenant-a", "2026-11-22"}]; got != (verifications{allowed: 3, denied: 1}) {
		t.Fatalf("counted %+v, want 3 allowed and 1 denied", got)
	}
	if n := f.r.Flush(context.Background()); n != 0 || f.writes("written") != 1 {
		t.Fatalf("a flush with nothing pending wrote %d (%v in all)", n, f.writes("written"))
	}
}

func TestAFailedLastUseWriteIsKeptForTheNextFlush(t *testing.T) {
	failing := true
	f := newFixture(t, func(ctx context.Context, c client.Client, obj client.Object, p client.Patch) error {
		if failing {
			return apierrors.NewServiceUnavailable("the API server is away")
		}
		return c.Status().Patch(ctx, obj, p)
	})
	f.r.Allowed(f.id)
	if n := f.r.Flush(context.Background()); n != 0 || f.writes("failed") != 1 {
		t.Fatalf("Flush wrote %d with the API server away (%v failed)", n, f.writes("failed"))
	}
	// A use noted after the failure is newer: it is the one written.
	f.clk.Step(time.Second)
	f.r.Allowed(f.id)
	failing = false
	if n := f.r.Flush(context.Background()); n != 1 {
		t.Fatalf("the retried flush wrote %d keys' last use, want 1", n)
	}
	if key, _ := f.lastUsed(t); key == nil || !key.Time.Equal(day.Add(time.Second)) {
		t.Fatalf("lastUsedAt %v, want the newest use", key)
	}
}

func TestTheLastUseOfAKeyGoneOrReplacedIsDropped(t *testing.T) {
	for name, refusal := range map[string]error{
		"deleted": apierrors.NewNotFound(schema.GroupResource{Resource: "apikeys"}, "ci"),
		// A newer ApiKey of the same name fails the UID precondition.
		"replaced": apierrors.NewConflict(schema.GroupResource{Resource: "apikeys"}, "ci", errors.New("uid differs")),
	} {
		t.Run(name, func(t *testing.T) {
			patches := 0
			f := newFixture(t, func(context.Context, client.Client, client.Object, client.Patch) error {
				patches++
				return refusal
			})
			f.r.Allowed(f.id)
			f.r.Flush(context.Background())
			f.r.Flush(context.Background())
			if patches != 1 || f.writes("gone") != 1 {
				t.Fatalf("%d patches, %v counted gone: want the use dropped after one", patches, f.writes("gone"))
			}
		})
	}
}

func TestCountsThatFailToBeRecordedAreMergedIntoTheNext(t *testing.T) {
	f := newFixture(t, nil)
	f.counter.failing = true
	f.r.Allowed(f.id)
	f.r.Denied("tenant-a")
	f.r.Denied("") // an unknown key's refusal belongs to no tenant
	f.r.Flush(context.Background())
	if len(f.counter.got) != 0 {
		t.Fatalf("counted %v while the ledger failed", f.counter.got)
	}

	f.counter.failing = false
	f.r.Allowed(f.id)
	f.r.Denied("tenant-a")
	f.clk.Step(24 * time.Hour) // the next day's count is its own
	f.r.Denied("tenant-a")
	f.r.Flush(context.Background())
	want := map[reported]verifications{
		{"tenant-a", "2026-11-22"}: {allowed: 2, denied: 2},
		{"tenant-a", "2026-11-23"}: {denied: 1},
	}
	if len(f.counter.got) != len(want) {
		t.Fatalf("counted %v, want %v", f.counter.got, want)
	}
	for td, v := range want {
		if f.counter.got[td] != v {
			t.Fatalf("counted %v, want %v", f.counter.got, want)
		}
	}
}

// Noting a verification is on the request path: once a key and its
// tenant's day are known, it allocates nothing.
func TestNotingAVerificationNeverAllocates(t *testing.T) {
	f := newFixture(t, nil)
	f.r.Allowed(f.id)
	f.r.Denied("tenant-a")
	if n := testing.AllocsPerRun(1000, func() {
		f.r.Allowed(f.id)
		f.r.Denied("tenant-a")
	}); n != 0 {
		t.Fatalf("%v allocations per verification noted", n)
	}
}

// However many keys are in use, a flush writes at most its budget of them;
// the others are written by the next flushes, none lost.
func TestLastUseWritesStayWithinTheirBudget(t *testing.T) {
	written := map[string]int{}
	f := newFixture(t, func(ctx context.Context, c client.Client, obj client.Object, p client.Patch) error {
		if _, ok := obj.(*authv1alpha1.ApiKey); ok {
			written[obj.GetName()]++
		}
		return c.Status().Patch(ctx, obj, p)
	})
	r := New(f.c, nil, f.clk, time.Minute, nil, WithWritesPerSecond(2.0/60))
	for i := range 5 {
		id := f.id
		id.KeyName, id.KeyUID = fmt.Sprintf("k%d", i), types.UID(fmt.Sprintf("uid-k%d", i))
		r.Allowed(id)
	}
	for flush, want := range []int{2, 4, 5, 5} {
		r.Flush(context.Background())
		if len(written) != want {
			t.Fatalf("after flush %d: %d keys written, want %d (at most 2 a flush)", flush+1, len(written), want)
		}
	}
	for name, n := range written {
		if n != 1 {
			t.Errorf("%s written %d times, want once", name, n)
		}
	}
}

// Start's flushes spread a minute's writes over the minute, one every
// interval/perFlush, rather than writing them back to back; a flush cut
// short keeps what it did not write.
func TestStartSpreadsLastUseWritesOverTheInterval(t *testing.T) {
	var mu sync.Mutex
	var events []string
	f := newFixture(t, func(ctx context.Context, c client.Client, obj client.Object, p client.Patch) error {
		if _, ok := obj.(*authv1alpha1.ApiKey); ok {
			mu.Lock()
			events = append(events, "write")
			mu.Unlock()
		}
		return c.Status().Patch(ctx, obj, p)
	})
	r := New(f.c, nil, f.clk, 40*time.Millisecond, nil, WithWritesPerSecond(100))
	ctx, cancel := context.WithCancel(context.Background())
	waits := 0
	r.sleep = func(_ context.Context, d time.Duration) bool {
		mu.Lock()
		defer mu.Unlock()
		if d != 10*time.Millisecond {
			t.Errorf("waited %s between writes, want interval/perFlush = 10ms", d)
		}
		events = append(events, "wait")
		if waits++; waits == 2 {
			cancel() // the flush is cut short after its third write
			return false
		}
		return true
	}
	for i := range 6 {
		id := f.id
		id.KeyName, id.KeyUID = fmt.Sprintf("k%d", i), types.UID(fmt.Sprintf("uid-k%d", i))
		r.Allowed(id)
	}
	done := make(chan struct{})
	go func() { _ = r.Start(ctx); close(done) }()
	<-done
	mu.Lock()
	defer mu.Unlock()
	// The flush cut short wrote two, each after the wait before it; the
	// flush on the way out wrote the four it kept, back to back.
	want := []string{"write", "wait", "write", "wait", "write", "write", "write", "write"}
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Errorf("writes and waits: %v, want %v", events, want)
	}
}
