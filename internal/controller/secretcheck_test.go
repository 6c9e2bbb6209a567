package controller

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// secretGets records the Secret GETs a fake API server answered, by the
// simulated time they were made at.
type secretGets struct {
	mu sync.Mutex
	at []time.Time
	of map[string]int
}

func (g *secretGets) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.at)
}

// reset returns the GETs counted so far and starts counting again.
func (g *secretGets) reset() ([]time.Time, map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	at, of := g.at, g.of
	g.at, g.of = nil, map[string]int{}
	return at, of
}

// fakeAPI is a fake API server holding n ApiKeys at generation 1, which
// counts the Secret GETs made of it.
func fakeAPI(t *testing.T, clk *clocktesting.FakeClock, n int) (client.Client, *secretGets) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := authv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	gets := &secretGets{of: map[string]int{}}
	b := fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&authv1alpha1.ApiKey{}, &authv1alpha1.ApiKeyRecord{}).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*corev1.Secret); ok {
					gets.mu.Lock()
					gets.at = append(gets.at, clk.Now())
					gets.of[key.Name]++
					gets.mu.Unlock()
				}
				return c.Get(ctx, key, obj, opts...)
			},
		})
	// The fake client finds records by key as the API server does.
	b.WithIndex(&authv1alpha1.ApiKeyRecord{}, IndexRecordKeyUID, func(o client.Object) []string {
		return []string{o.(*authv1alpha1.ApiKeyRecord).Spec.KeyUID}
	})
	for i := range n {
		key := newKey("tenant", fmt.Sprintf("k%05d", i), authv1alpha1.ApiKeySpec{})
		key.UID = types.UID(fmt.Sprintf("uid-%05d", i))
		key.Generation = 1
		b.WithObjects(key)
	}
	return b.Build(), gets
}

// simulation runs the walk of periodic checks on a fake clock, against a
// fake API server, reconciling each key the walk releases in the walk's
// own goroutine: the test steps the clock only while the walk sleeps.
type simulation struct {
	t     *testing.T
	clk   *clocktesting.FakeClock
	r     *ApiKeyReconciler
	names []string
	stop  context.CancelFunc
	done  chan struct{}
	// requeued counts passes that asked to be looked at again: none
	// should, the keys having no instant their status changes at.
	requeued atomic.Int32
}

func (s *simulation) reconcile(name string) {
	s.t.Helper()
	res, err := s.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "tenant", Name: name}})
	if err != nil {
		s.t.Errorf("reconciling %s: %v", name, err)
	}
	if res.RequeueAfter > 0 {
		s.requeued.Add(1)
	}
}

// start starts the walk of s.r's checks.
func (s *simulation) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		checks := s.r.secretChecks()
		checks.keys = namesInUse(s.names)
		checks.walk(ctx, func(key types.NamespacedName) { s.reconcile(key.Name) })
	}()
	s.waitForWalk()
}

// waitForWalk returns once the walk sleeps on the clock.
func (s *simulation) waitForWalk() {
	for !s.clk.HasWaiters() {
		time.Sleep(50 * time.Microsecond)
	}
}

// runUntil steps the clock to end in steps of tick, each once the walk
// sleeps, and stops the walk there.
func (s *simulation) runUntil(end time.Time, tick time.Duration) {
	for s.clk.Now().Before(end) {
		s.waitForWalk()
		s.clk.Step(min(tick, end.Sub(s.clk.Now())))
	}
	s.waitForWalk()
	s.stop()
	<-s.done
}

// maxInWindow is the most of the sorted times that fall in any window of
// the given length.
func maxInWindow(at []time.Time, window time.Duration) int {
	most, first := 0, 0
	for last := range at {
		for at[last].Sub(at[first]) >= window {
			first++
		}
		most = max(most, last-first+1)
	}
	return most
}

// TestSecretChecksStayWithinTheBudget mints keys, lets the walk check them
// for several rounds, then restarts the controller, which reconciles every
// key at once, and walks again. The Secret GETs of passes no change caused
// never exceed the budget; the walk keeps to it, reaches every key in
// each round, and checks no key more often than the check interval; no
// pass leaves a key waiting in the queue.
func TestSecretChecksStayWithinTheBudget(t *testing.T) {
	const perSecond = 2.0
	burst := int(math.Ceil(perSecond))
	for _, tt := range []struct {
		name     string
		n        int
		interval time.Duration
	}{
		// More keys than the interval lets the budget check: rounds last
		// n/perSecond.
		{"many keys", 100, 20 * time.Second},
		// Fewer: rounds last the interval.
		{"few keys", 3, 20 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			round := max(tt.interval, time.Duration(float64(tt.n)/perSecond*float64(time.Second)))
			clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
			c, gets := fakeAPI(t, clk, tt.n)
			reconciler := func() *ApiKeyReconciler {
				return &ApiKeyReconciler{Client: c, APIReader: c, Recorder: &events.FakeRecorder{}, Clock: clk, Random: rand.Reader,
					SecretCheckInterval: tt.interval, SecretChecksPerSecond: perSecond}
			}
			sim := &simulation{t: t, clk: clk, r: reconciler()}
			for i := range tt.n {
				sim.names = append(sim.names, fmt.Sprintf("k%05d", i))
			}

			// All keys are created at once: each is minted at once.
			for i := range tt.n {
				sim.reconcile(fmt.Sprintf("k%05d", i))
			}
			if got := gets.count(); got != tt.n {
				t.Fatalf("minting %d keys read %d Secrets, want one each", tt.n, got)
			}
			gets.reset()

			sim.start()
			sim.runUntil(clk.Now().Add(5*round), time.Second/8)
			running, checked := gets.reset()
			// A restart: a new reconciler with a full budget, every key
			// reconciled at once, then the walk.
			sim.r = reconciler()
			for i := range tt.n {
				sim.reconcile(fmt.Sprintf("k%05d", i))
			}
			resync, _ := gets.reset()
			if len(resync) > burst {
				t.Errorf("a restart's pass over %d keys read %d Secrets, over the budget's burst of %d", tt.n, len(resync), burst)
			}
			sim.start()
			sim.runUntil(clk.Now().Add(2*round), time.Second/8)
			after, checkedAfter := gets.reset()

			for _, run := range []struct {
				name   string
				at     []time.Time
				of     map[string]int
				rounds int
			}{
				{"running", running, checked, 5},
				{"after a restart", after, checkedAfter, 2},
			} {
				span := time.Duration(run.rounds) * round
				if most, bound := maxInWindow(run.at, time.Second), burst+int(perSecond); most > bound {
					t.Errorf("%s: %d Secret GETs in one second, over the budget's %d", run.name, most, bound)
				}
				if bound := int(perSecond*span.Seconds()) + burst; len(run.at) > bound {
					t.Errorf("%s: %d Secret GETs in %v, over the budget's %d", run.name, len(run.at), span, bound)
				}
				for i := range tt.n {
					switch got := run.of[fmt.Sprintf("k%05d", i)]; {
					case got < run.rounds-1:
						t.Errorf("%s: k%05d checked %d times in %d rounds", run.name, i, got, run.rounds)
					case got > run.rounds:
						t.Errorf("%s: k%05d checked %d times in %d rounds of %v: more often than the interval", run.name, i, got, run.rounds, round)
					}
				}
				t.Logf("%s: %d keys, %v checks/s, interval %v: %d Secret GETs in %v (%.2f/s), at most %d in a second",
					run.name, tt.n, perSecond, tt.interval, len(run.at), span, float64(len(run.at))/span.Seconds(), maxInWindow(run.at, time.Second))
			}
			if n := sim.requeued.Load(); n > 0 {
				t.Errorf("%d passes asked to be looked at again: keys with nothing due wait in the queue", n)
			}
		})
	}
}

// TestAChangeIsCheckedAtOnce: with the budget spent, a spec edit and a new
// key still read their Secret in the pass they cause, and a pass nothing
// caused reads none.
func TestAChangeIsCheckedAtOnce(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	c, gets := fakeAPI(t, clk, 2)
	r := &ApiKeyReconciler{Client: c, APIReader: c, Recorder: &events.FakeRecorder{}, Clock: clk, Random: rand.Reader,
		SecretChecksPerSecond: 1}
	pass := func(name string) int {
		before := gets.count()
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "tenant", Name: name}}); err != nil {
			t.Fatal(err)
		}
		return gets.count() - before
	}
	if got := pass("k00000"); got != 1 {
		t.Fatalf("a new key read %d Secrets, want 1", got)
	}
	for r.secretChecks().take() {
	}
	if got := pass("k00001"); got != 1 {
		t.Errorf("a new key with the budget spent read %d Secrets, want 1", got)
	}
	if got := pass("k00000"); got != 0 {
		t.Errorf("a requeue with the budget spent read %d Secrets, want none", got)
	}
	// The walk took its token when it released the key.
	r.secretChecks().release(types.NamespacedName{Namespace: "tenant", Name: "k00000"})
	if got := pass("k00000"); got != 1 {
		t.Errorf("a pass the walk released read %d Secrets, want 1", got)
	}
	if got := pass("k00000"); got != 0 {
		t.Errorf("the pass after it read %d Secrets, want none: one release is one read", got)
	}
	key := &authv1alpha1.ApiKey{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: "k00000"}, key); err != nil {
		t.Fatal(err)
	}
	if key.Status.Phase != authv1alpha1.PhaseActive {
		t.Fatalf("a deferred check left the key %s", key.Status.Phase)
	}
	// The fake API server does not count generations: this one is an edit's.
	key.Spec.Description = "edited"
	key.Generation++
	if err := c.Update(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := pass("k00000"); got != 1 {
		t.Errorf("a spec edit with the budget spent read %d Secrets, want 1", got)
	}
}

// TestTheWalkWaitsForAQueueThatHoldsItsPassesBack: while the controller's
// queue is busy with other passes (a mint), the walk's releases are not
// reconciled; it holds at most the budget's burst of them (one more an
// interval, when a release is forgotten), so that the queue draining does
// not read a Secret for every key the walk went past meanwhile, and it
// goes on within the budget once the passes come.
func TestTheWalkWaitsForAQueueThatHoldsItsPassesBack(t *testing.T) {
	const perSecond, n, interval = 2.0, 1000, 20 * time.Second
	burst := int(math.Ceil(perSecond))
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	c, gets := fakeAPI(t, clk, n)
	r := &ApiKeyReconciler{Client: c, APIReader: c, Recorder: &events.FakeRecorder{}, Clock: clk, Random: rand.Reader,
		SecretCheckInterval: interval, SecretChecksPerSecond: perSecond}
	sim := &simulation{t: t, clk: clk, r: r}
	for i := range n {
		sim.names = append(sim.names, fmt.Sprintf("k%05d", i))
		sim.reconcile(sim.names[i])
	}
	gets.reset()

	// The queue holds every release back for 100 s, as a mint's passes would.
	var mu sync.Mutex
	var queued []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		checks := r.secretChecks()
		checks.keys = namesInUse(sim.names)
		checks.walk(ctx, func(key types.NamespacedName) {
			mu.Lock()
			defer mu.Unlock()
			queued = append(queued, key.Name)
		})
	}()
	sim.waitForWalk()
	const heldBack = 100 * time.Second
	for end := clk.Now().Add(heldBack); clk.Now().Before(end); {
		sim.waitForWalk()
		clk.Step(time.Second / 8)
	}
	sim.waitForWalk()
	mu.Lock()
	backlog := queued
	queued = nil
	mu.Unlock()
	// Unheld, the walk would have released perSecond × 100 s = 200.
	if bound := burst * (int(heldBack/interval) + 1); len(backlog) > bound {
		t.Errorf("the walk released %d keys while the queue held its passes back for %v, want at most %d", len(backlog), heldBack, bound)
	}
	// The queue drains: the releases still held read their Secret, and
	// the other passes what the bucket, full again, holds.
	for _, name := range backlog {
		sim.reconcile(name)
	}
	if drained, _ := gets.reset(); len(drained) > 2*burst {
		t.Errorf("the queue draining read %d Secrets, over the %d held releases and the budget's burst of %d", len(drained), burst, burst)
	}
	cancel()
	<-done
	t.Logf("held back %v: %d releases queued", heldBack, len(backlog))

	// Passes come again: the walk goes on within the budget.
	sim.start()
	sim.runUntil(clk.Now().Add(30*time.Second), time.Second/8)
	after, _ := gets.reset()
	if most, bound := maxInWindow(after, time.Second), burst+int(perSecond); most > bound {
		t.Errorf("after the queue drained: %d Secret GETs in one second, over the budget's %d", most, bound)
	}
	if len(after) < int(perSecond*30)-burst {
		t.Errorf("after the queue drained the walk checked %d keys in 30 s, want about %v", len(after), perSecond*30)
	}
}

func TestRequeueAfter(t *testing.T) {
	for _, tt := range []struct {
		name string
		next lookAgain
		want time.Duration
	}{
		{"a key with nothing due is left to the walk and to changes", lookAgain{}, 0},
		{"a key is looked at when its status changes by the clock", lookAgain{dueIn: time.Hour}, time.Hour},
		{"a delivery is retried", lookAgain{retryIn: 30 * time.Second}, 30 * time.Second},
		{"the sooner of the two", lookAgain{retryIn: 30 * time.Second, dueIn: 10 * time.Second}, 10 * time.Second},
		{"the sooner of the two, the other way", lookAgain{retryIn: 30 * time.Second, dueIn: time.Hour}, 30 * time.Second},
	} {
		if got := requeueAfter(tt.next); got != tt.want {
			t.Errorf("%s: looked at again after %v, want %v", tt.name, got, tt.want)
		}
	}
}

// namesInUse are the tenant's keys the simulation's walk visits, as the
// key index would name them.
type namesInUse []string

func (n namesInUse) CountInUse() int { return len(n) }

func (n namesInUse) NextInUse(from int32) (types.NamespacedName, int32, bool) {
	if int(from) > len(n) {
		return types.NamespacedName{}, 0, false
	}
	return types.NamespacedName{Namespace: "tenant", Name: n[from-1]}, from + 1, true
}
