package verifier

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

func apiKey(i int) *authv1alpha1.ApiKey {
	return &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{
		Namespace: "tenant-a", Name: fmt.Sprintf("k%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i)),
	}}
}

func TestFenceTableIsBounded(t *testing.T) {
	f := newFixture(t)
	f.v = New(f.clk, 10*time.Second, WithMaxFences(3))
	for i := range 3 {
		if err := f.v.Fence(context.Background(), apiKey(i), Stop{Revoked: true}); err != nil {
			t.Fatalf("fence %d: %v", i, err)
		}
	}
	err := f.v.Fence(context.Background(), apiKey(3), Stop{Revoked: true})
	var full ErrTooManyFences
	if !errors.As(err, &full) || full.Max != 3 {
		t.Fatalf("a fence past the bound = %v, want ErrTooManyFences{3}", err)
	}
	if err := f.v.Fence(context.Background(), apiKey(0), Stop{Revoked: true}); err != nil {
		t.Fatalf("fencing a key fenced already, at the bound: %v", err)
	}
	// Fences dropped by the watch make room at once; lapsed ones as they lapse.
	f.v.RemoveKey(apiKey(1))
	if err := f.v.Fence(context.Background(), apiKey(3), Stop{Revoked: true}); err != nil {
		t.Fatalf("after a fence was dropped: %v", err)
	}
	f.clk.Step(10 * time.Second)
	if n := f.v.Fences(); n != 0 {
		t.Fatalf("%d fences after the TTL", n)
	}
	for i := range 3 {
		if err := f.v.Fence(context.Background(), apiKey(10+i), Stop{Revoked: true}); err != nil {
			t.Fatalf("after the TTL, fence %d: %v", i, err)
		}
	}
}

func TestFenceLapsesAtItsTTL(t *testing.T) {
	f := newFixture(t)
	_ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true})
	f.clk.Step(10*time.Second - time.Nanosecond)
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrRevoked) {
		t.Fatalf("just before the TTL: %v, want ErrRevoked", err)
	}
	// Fencing again does not extend it: the TTL counts from the first.
	_ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true})
	f.clk.Step(time.Nanosecond)
	if _, err := f.v.Verify(f.raw); err != nil {
		t.Fatalf("at the TTL: %v, want the key to authenticate", err)
	}
	if n := f.v.Fences(); n != 0 {
		t.Fatalf("%d fences after the TTL", n)
	}
}

// TestFenceTableStaysBoundedUnderChurn: fences dropped by the watch leave
// places in the rings that compaction reclaims, so a steady stream of real
// revocations never grows the table past its bound.
func TestFenceTableStaysBoundedUnderChurn(t *testing.T) {
	f := newFixture(t)
	f.v = New(f.clk, 10*time.Second, WithMaxFences(100))
	for i := range 10_000 {
		k := apiKey(i)
		if err := f.v.Fence(context.Background(), k, Stop{Revoked: true}); err != nil {
			t.Fatalf("fence %d: %v", i, err)
		}
		f.v.RemoveKey(k)
	}
	if n := f.v.fences.order.len(); n > 200 {
		t.Fatalf("the order holds %d places for a bound of 100", n)
	}
}

// apiKeyReader answers Gets of ApiKeys from a map, as the API server would.
type apiKeyReader struct {
	client.Reader
	keys  map[types.NamespacedName]*authv1alpha1.ApiKey
	reads chan types.NamespacedName
}

func (r *apiKeyReader) Get(_ context.Context, nn types.NamespacedName, obj client.Object, _ ...client.GetOption) error {
	r.reads <- nn
	k, ok := r.keys[nn]
	if !ok {
		return apierrors.NewNotFound(schema.GroupResource{Group: "auth.latchkey.dev", Resource: "apikeys"}, nn.Name)
	}
	k.DeepCopyInto(obj.(*authv1alpha1.ApiKey))
	return nil
}

func (r *apiKeyReader) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	o := (&client.ListOptions{}).ApplyOptions(opts)
	l := list.(*authv1alpha1.ApiKeyList)
	for nn, k := range r.keys {
		if nn.Namespace == o.Namespace {
			l.Items = append(l.Items, *k.DeepCopy())
		}
	}
	return nil
}

func TestConfirmerDropsFencesTheAPIServerDoesNotConfirm(t *testing.T) {
	f := newFixture(t)
	f.v = New(f.clk, 30*time.Second, WithFenceConfirmAfter(time.Second))
	// live is neither revoked nor being deleted: its fence was forged.
	// The others' revocations are real, and the watch has not shown them.
	live, revoked, deleting, renamed, gone := apiKey(1), apiKey(2), apiKey(3), apiKey(4), apiKey(5)
	// misnamed is a live key that a forged review named by its UID under
	// a name nothing has: the UID decides.
	misnamedKey := apiKey(6)
	misnamed := misnamedKey.DeepCopy()
	misnamed.Name = "no-such-key"
	revoked.Spec.Revoked = true
	deleting.DeletionTimestamp = &metav1.Time{Time: f.clk.Now()}
	other := apiKey(4) // renamed's name now holds another key
	other.UID = "uid-other"
	reader := &apiKeyReader{reads: make(chan types.NamespacedName, 10), keys: map[types.NamespacedName]*authv1alpha1.ApiKey{}}
	for _, k := range []*authv1alpha1.ApiKey{live, revoked, deleting, other, misnamedKey} {
		reader.keys[types.NamespacedName{Namespace: k.Namespace, Name: k.Name}] = k
	}
	for _, k := range []*authv1alpha1.ApiKey{misnamed, live, revoked, deleting, renamed, gone} {
		f.v.SetKey(&authv1alpha1.ApiKey{ObjectMeta: k.ObjectMeta}) // the watch: all live
		if err := f.v.Fence(context.Background(), k, Stop{Revoked: true}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- (&FenceConfirmer{Verifier: f.v, Reader: reader, Clock: f.clk}).Start(ctx) }()

	// Nothing is read before the delay.
	for !f.clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	select {
	case nn := <-reader.reads:
		t.Fatalf("read %v before the delay", nn)
	default:
	}
	f.clk.Step(time.Second)
	for range 6 {
		select {
		case <-reader.reads:
		case <-time.After(10 * time.Second):
			t.Fatal("the confirmer did not read every fenced key")
		}
	}
	// Checks run one at a time, in the order of the fences, so misnamed's
	// and live's were acted on before the last read; the others change nothing.
	now := f.clk.Now()
	for _, tt := range []struct {
		key  *authv1alpha1.ApiKey
		held bool
	}{{live, false}, {revoked, true}, {deleting, true}, {renamed, true}, {gone, true}, {misnamed, false}} {
		if got := f.v.fences.holds(tt.key.UID, now).Revoked; got != tt.held {
			t.Errorf("%s: fenced = %v, want %v", tt.key.Name, got, tt.held)
		}
	}
	// One check per fence: fencing a held key again asks nothing more.
	_ = f.v.Fence(context.Background(), revoked, Stop{Revoked: true})
	f.clk.Step(time.Second)
	select {
	case nn := <-reader.reads:
		t.Fatalf("read %v a second time", nn)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// BenchmarkFence fences a new key against a table already holding n: the
// cost does not grow with n (it was linear: every fence scanned them all
// under the index's write lock).
func BenchmarkFence(b *testing.B) {
	for _, n := range []int{10, 100_000} {
		b.Run(fmt.Sprintf("held=%d", n), func(b *testing.B) {
			clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
			v := New(clk, time.Hour, WithMaxFences(n+b.N+1))
			for i := range n {
				_ = v.Fence(context.Background(), apiKey(i), Stop{Revoked: true})
			}
			fresh := make([]*authv1alpha1.ApiKey, b.N)
			for i := range fresh {
				fresh[i] = apiKey(n + i)
			}
			b.ResetTimer()
			for i := range b.N {
				if err := v.Fence(context.Background(), fresh[i], Stop{Revoked: true}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
