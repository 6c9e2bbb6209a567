package informers

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// sink records what a stream feeds it.
type sink struct{ set, removed, replaced []string }

func (s *sink) Set(o *corev1.ConfigMap)    { s.set = append(s.set, o.Name) }
func (s *sink) Remove(o *corev1.ConfigMap) { s.removed = append(s.removed, o.Name) }
func (s *sink) Replace(list []*corev1.ConfigMap) {
	for _, o := range list {
		s.replaced = append(s.replaced, o.Name)
	}
}

// adder is a sink that tells additions from changes.
type adder struct {
	sink
	added []string
}

func (a *adder) Add(o *corev1.ConfigMap) { a.added = append(a.added, o.Name) }

func cm(name string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// TestStreamFeedsEverySink drives a stream's store as the Reflector does:
// every sink gets each object in turn, an Adder its additions apart, what
// is not of the stream's type is skipped, and the stream is synced once a
// list is in.
func TestStreamFeedsEverySink(t *testing.T) {
	plain, adds := &sink{}, &adder{}
	s := &Stream[*corev1.ConfigMap, *corev1.ConfigMapList, *corev1.ConfigMap]{sinks: []Sink[*corev1.ConfigMap]{plain, adds},
		as: func(c *corev1.ConfigMap) *corev1.ConfigMap { return c }}
	store := (*streamStore[*corev1.ConfigMap, *corev1.ConfigMapList, *corev1.ConfigMap])(s)
	if s.Synced() {
		t.Fatal("synced before any list")
	}
	_ = store.Replace([]any{cm("a"), "not a ConfigMap", cm("b")}, "1")
	if !s.Synced() {
		t.Fatal("not synced after a list")
	}
	_ = store.Add(cm("c"))
	_ = store.Update(cm("a"))
	_ = store.Delete(cm("b"))
	_ = store.Delete(cm("d"))
	for _, tc := range []struct {
		name      string
		got, want []string
	}{
		{"plain: replaced", plain.replaced, []string{"a", "b"}},
		{"plain: set (added and changed)", plain.set, []string{"c", "a"}},
		{"plain: removed", plain.removed, []string{"b", "d"}},
		{"adder: added", adds.added, []string{"c"}},
		{"adder: set (changed only)", adds.set, []string{"a"}},
		{"adder: removed", adds.removed, []string{"b", "d"}},
		{"adder: replaced", adds.replaced, []string{"a", "b"}},
	} {
		if !slices.Equal(tc.got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

// TestStreamSaysWhenTheListItHoldsBegan: the count read as a list or a
// watch-list begins is the one the stream reports once that list is in
// its sinks; a list's later pages and a plain watch read none.
func TestStreamSaysWhenTheListItHoldsBegan(t *testing.T) {
	c := fake.NewClientBuilder().Build()
	s := NewStream(c, client.ListOptions{}, func() *corev1.ConfigMapList { return &corev1.ConfigMapList{} },
		func() *corev1.ConfigMap { return &corev1.ConfigMap{} }, func(c *corev1.ConfigMap) *corev1.ConfigMap { return c }, &sink{})
	count := int64(5)
	s.CountLists(func() int64 { return count })
	store := (*streamStore[*corev1.ConfigMap, *corev1.ConfigMapList, *corev1.ConfigMap])(s)
	ctx := context.Background()
	if _, ok := s.ListedAt(); ok {
		t.Fatal("a list is held before any")
	}
	if _, err := s.lw.ListWithContextFunc(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	count = 6
	if _, err := s.lw.ListWithContextFunc(ctx, metav1.ListOptions{Continue: "next page"}); err != nil {
		t.Fatal(err)
	}
	_ = store.Replace(nil, "1")
	if at, ok := s.ListedAt(); !ok || at != 5 {
		t.Fatalf("after a list begun at 5: ListedAt = %d, %v", at, ok)
	}
	count = 7
	w, err := s.lw.WatchFuncWithContext(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
	count = 8
	w, err = s.lw.WatchFuncWithContext(ctx, metav1.ListOptions{SendInitialEvents: ptr.To(true)})
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
	if at, _ := s.ListedAt(); at != 5 {
		t.Fatalf("before the watch-list's events are in: ListedAt = %d, want 5", at)
	}
	_ = store.Replace(nil, "2")
	if at, _ := s.ListedAt(); at != 8 {
		t.Fatalf("after a watch-list begun at 8: ListedAt = %d", at)
	}
}
