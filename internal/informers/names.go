package informers

import (
	"slices"
	"sync"
)

// Names files object names under a key, for the small indexes Latchkey keeps
// beside its cache instead of cache field indexes (which keep a set and a
// string per distinct value): one map entry per key, holding the names the
// cached objects already own. Safe for concurrent use; the zero value is
// empty and ready.
type Names[K comparable] struct {
	mu sync.RWMutex
	m  map[K][]string
}

// Add files name under k; a name filed twice is filed once.
func (n *Names[K]) Add(k K, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = map[K][]string{}
	}
	if !slices.Contains(n.m[k], name) {
		n.m[k] = append(n.m[k], name)
	}
}

// Remove takes name from under k, and k with its last name.
func (n *Names[K]) Remove(k K, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	names := slices.DeleteFunc(n.m[k], func(s string) bool { return s == name })
	if len(names) == 0 {
		delete(n.m, k)
		return
	}
	n.m[k] = names
}

// Of returns the names filed under k, a copy the caller may keep.
func (n *Names[K]) Of(k K) []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return slices.Clone(n.m[k])
}

// Replace files exactly what fill files, in place of everything filed
// before, at once: readers see the old names or the new, never a mix.
func (n *Names[K]) Replace(fill func(file func(K, string))) {
	m := map[K][]string{}
	fill(func(k K, name string) {
		if !slices.Contains(m[k], name) {
			m[k] = append(m[k], name)
		}
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	n.m = m
}
