package informers

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
