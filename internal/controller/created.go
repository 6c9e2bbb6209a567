package controller

import (
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// createdRecords remembers, by ApiKey UID, the records this process created
// that its cache has not shown yet (the expectations of Kubernetes' own
// controllers). A pass that follows its own mint before the watch does
// reads those by name, instead of listing every record in the cluster to
// confirm that the cache's miss is real: that list, on every new key, made
// minting N keys cost the API server O(N²).
type createdRecords struct {
	mu    sync.Mutex
	byKey map[types.UID][]string
}

func (c *createdRecords) add(uid types.UID, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[types.UID][]string{}
	}
	c.byKey[uid] = append(c.byKey[uid], name)
}

// unseen returns the records created for uid that cached does not hold,
// and forgets those it does.
func (c *createdRecords) unseen(uid types.UID, cached []authv1alpha1.ApiKeyRecord) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := slices.DeleteFunc(c.byKey[uid], func(name string) bool {
		return slices.ContainsFunc(cached, func(r authv1alpha1.ApiKeyRecord) bool { return r.Name == name })
	})
	if len(names) == 0 {
		delete(c.byKey, uid)
		return nil
	}
	c.byKey[uid] = names
	return slices.Clone(names)
}

// forget drops a record the cache shows, or the API server no longer has.
func (c *createdRecords) forget(uid types.UID, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := slices.DeleteFunc(c.byKey[uid], func(n string) bool { return n == name })
	if len(names) == 0 {
		delete(c.byKey, uid)
		return
	}
	c.byKey[uid] = names
}
