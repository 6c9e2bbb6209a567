package controller

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// expiringKeys are the keys whose ExpiringSoon condition the reconciler
// last wrote True, by namespace, for latchkey_keys_expiring_soon. Counting
// the reconciler's own writes costs nothing per scrape and needs no list of
// every key; a namespace leaves the set with its last expiring key, so the
// gauge's series are bounded by the namespaces that hold one. A restart's
// resync, which reconciles every key, fills it again.
type expiringKeys struct {
	mu sync.Mutex
	ns map[string]map[string]struct{}
}

func (e *expiringKeys) set(key types.NamespacedName, soon bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := e.ns[key.Namespace]
	if !soon {
		delete(names, key.Name)
		if len(names) == 0 {
			delete(e.ns, key.Namespace)
		}
		return
	}
	if names == nil {
		if e.ns == nil {
			e.ns = map[string]map[string]struct{}{}
		}
		names = map[string]struct{}{}
		e.ns[key.Namespace] = names
	}
	names[key.Name] = struct{}{}
}

func (e *expiringKeys) byNamespace() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	counts := make(map[string]int, len(e.ns))
	for ns, names := range e.ns {
		counts[ns] = len(names)
	}
	return counts
}
