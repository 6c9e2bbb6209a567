package controller

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
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
	clk *clocktesting.FakeClock
	at  []time.Time
	of  map[string]int
}

// builderIndexer lets IndexRecords add its indexes to a fake client.
type builderIndexer struct{ b *fake.ClientBuilder }

func (i builderIndexer) IndexField(_ context.Context, obj client.Object, field string, extract client.IndexerFunc) error {
	i.b.WithIndex(obj, field, extract)
	return nil
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
	gets := &secretGets{clk: clk, of: map[string]int{}}
	b := fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&authv1alpha1.ApiKey{}, &authv1alpha1.ApiKeyRecord{}).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*corev1.Secret); ok {
					gets.at = append(gets.at, clk.Now())
					gets.of[key.Name]++
				}
				return c.Get(ctx, key, obj, opts...)
			},
		})
	if err := IndexRecords(context.Background(), builderIndexer{b}); err != nil {
		t.Fatal(err)
	}
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

// simulation reconciles ApiKeys as a controller's queue would, each when
// its last pass asked to be looked at again, on a fake clock.
type simulation struct {
	t   *testing.T
	clk *clocktesting.FakeClock
	r   *ApiKeyReconciler
	due map[string]time.Time
}

func (s *simulation) reconcile(name string) {
	s.t.Helper()
	res, err := s.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "tenant", Name: name}})
	if err != nil {
		s.t.Fatalf("reconciling %s: %v", name, err)
	}
	if res.RequeueAfter <= 0 {
		s.t.Fatalf("%s is never looked at again", name)
	}
	s.due[name] = s.clk.Now().Add(res.RequeueAfter)
}

// runUntil reconciles every key that comes due, earliest first, until end.
func (s *simulation) runUntil(end time.Time) {
	for {
		var next string
		for name, at := range s.due {
			if next == "" || at.Before(s.due[next]) {
				next = name
			}
		}
		if !s.due[next].Before(end) {
			s.clk.SetTime(end)
			return
		}
		s.clk.SetTime(s.due[next])
		s.reconcile(next)
	}
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

// TestSecretChecksStayWithinTheBudget mints many more keys than the budget
// can check in one interval, lets the controller run on its own for several
// cycles, then restarts it, which reconciles every key at once: the Secret
// GETs of those passes never exceed the budget, and reach every key in turn.
func TestSecretChecksStayWithinTheBudget(t *testing.T) {
	const (
		n         = 100
		perSecond = 2.0
		interval  = 20 * time.Second
	)
	burst := int(math.Ceil(perSecond))
	cycle := time.Duration(float64(n) / perSecond * float64(time.Second))
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	c, gets := fakeAPI(t, clk, n)
	reconciler := func() *ApiKeyReconciler {
		return &ApiKeyReconciler{Client: c, APIReader: c, Recorder: &events.FakeRecorder{}, Clock: clk, Random: rand.Reader,
			SecretCheckInterval: interval, SecretChecksPerSecond: perSecond}
	}
	sim := &simulation{t: t, clk: clk, r: reconciler(), due: map[string]time.Time{}}

	// All keys are created at once: each is minted at once.
	for i := range n {
		sim.reconcile(fmt.Sprintf("k%05d", i))
	}
	if len(gets.at) != n {
		t.Fatalf("minting %d keys read %d Secrets, want one each", n, len(gets.at))
	}
	gets.at, gets.of = nil, map[string]int{}

	start := clk.Now()
	sim.runUntil(start.Add(5 * cycle))
	running := gets.at
	checked := gets.of
	// A restart: a new reconciler, with a full budget, and every key
	// reconciled at once.
	gets.at, gets.of = nil, map[string]int{}
	restart := clk.Now()
	sim.r = reconciler()
	for name := range sim.due {
		sim.due[name] = restart
	}
	sim.runUntil(restart.Add(interval + cycle))

	for _, run := range []struct {
		name string
		at   []time.Time
		of   map[string]int
		span time.Duration
	}{
		{"running", running, checked, 5 * cycle},
		{"after a restart", gets.at, gets.of, interval + cycle},
	} {
		if most, bound := maxInWindow(run.at, time.Second), burst+int(perSecond); most > bound {
			t.Errorf("%s: %d Secret GETs in one second, over the budget's %d", run.name, most, bound)
		}
		if bound := int(perSecond*run.span.Seconds()) + burst; len(run.at) > bound {
			t.Errorf("%s: %d Secret GETs in %v, over the budget's %d", run.name, len(run.at), run.span, bound)
		}
		if run.name == "running" && float64(len(run.at)) < 0.8*perSecond*run.span.Seconds() {
			t.Errorf("%s: %d Secret GETs in %v: the checks fall behind the budget", run.name, len(run.at), run.span)
		}
		missed := 0
		for i := range n {
			if run.of[fmt.Sprintf("k%05d", i)] == 0 {
				missed++
			}
		}
		if missed > 0 {
			t.Errorf("%s: %d of %d keys were never checked in %v", run.name, missed, n, run.span)
		}
		t.Logf("%s: %d keys, %v checks/s: %d Secret GETs in %v (%.2f/s), at most %d in a second",
			run.name, n, perSecond, len(run.at), run.span, float64(len(run.at))/run.span.Seconds(), maxInWindow(run.at, time.Second))
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
		before := len(gets.at)
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "tenant", Name: name}}); err != nil {
			t.Fatal(err)
		}
		return len(gets.at) - before
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

func TestSecretCheckSlots(t *testing.T) {
	tests := []struct {
		name string
		// passes, made at the same instant, in turn
		passes []lookAgain
		want   []time.Duration
	}{
		{"a revoked key is never looked at again on a schedule",
			[]lookAgain{{}}, []time.Duration{0}},
		{"keys checked at once take slots a second apart at 1 check a second",
			[]lookAgain{{scheduled: true, checkAfter: time.Minute}, {scheduled: true, checkAfter: time.Minute}, {scheduled: true, checkAfter: time.Minute}},
			[]time.Duration{time.Minute, time.Minute + time.Second, time.Minute + 2*time.Second}},
		{"a deferred pass takes the first free slot, after those taken",
			[]lookAgain{{scheduled: true, checkAfter: time.Minute}, {scheduled: true}},
			[]time.Duration{time.Minute, time.Minute + time.Second}},
		{"a key that expires before its check is looked at at its expiry, and takes no slot",
			[]lookAgain{{scheduled: true, checkAfter: time.Minute, dueIn: 10 * time.Second}, {scheduled: true, checkAfter: time.Minute}},
			[]time.Duration{10 * time.Second, time.Minute}},
		{"a key whose slot comes after its expiry is looked at at its expiry",
			[]lookAgain{{scheduled: true, checkAfter: time.Minute}, {scheduled: true, checkAfter: time.Minute, dueIn: time.Minute + time.Second/2}},
			[]time.Duration{time.Minute, time.Minute + time.Second/2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newSecretChecks(clocktesting.NewFakeClock(statusNow), time.Minute, 1)
			for i, next := range tt.passes {
				if got := c.requeueAfter(next); got != tt.want[i] {
					t.Errorf("pass %d looked at again after %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
}
