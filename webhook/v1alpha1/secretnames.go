package v1alpha1

import (
	toolscache "k8s.io/client-go/tools/cache"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/informers"
)

// secretNames finds the ApiKeys that deliver to a Secret, fed by the
// cache's ApiKey informer, so that admitting an ApiKey reads only those
// sharing its Secret's name (minting N keys in one namespace would
// otherwise copy O(N²) ApiKeys out of the cache). It replaces a cache field
// index, which keeps a set and two strings per ApiKey for each of its
// namespace and all-namespaces forms (≈ 450 bytes per key): this keeps one
// map entry, whose strings are the cached object's own.
type secretNames struct {
	holders informers.Names[secretRef]
}

// secretRef is a Secret by namespace and name.
type secretRef struct{ namespace, name string }

func refOf(k *authv1alpha1.ApiKey) secretRef { return secretRef{k.Namespace, k.SecretName()} }

// handler keeps the index as the informer's ApiKeys come and go.
func (s *secretNames) handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { withKey(obj, s.add) },
		UpdateFunc: func(old, obj any) {
			// spec.secretName is immutable, so an update almost never moves
			// an ApiKey (a relist's update may follow a missed delete and
			// create under the same name): moving it anyway would delete
			// and re-insert its entry, under the lock admission reads
			// through, on every status write.
			o, ok1 := informers.As[*authv1alpha1.ApiKey](old)
			n, ok2 := informers.As[*authv1alpha1.ApiKey](obj)
			if ok1 && ok2 && refOf(o) == refOf(n) {
				return
			}
			withKey(old, s.remove)
			withKey(obj, s.add)
		},
		DeleteFunc: func(obj any) { withKey(obj, s.remove) },
	}
}

func withKey(obj any, f func(*authv1alpha1.ApiKey)) {
	if k, ok := informers.As[*authv1alpha1.ApiKey](obj); ok {
		f(k)
	}
}

func (s *secretNames) add(k *authv1alpha1.ApiKey)    { s.holders.Add(refOf(k), k.Name) }
func (s *secretNames) remove(k *authv1alpha1.ApiKey) { s.holders.Remove(refOf(k), k.Name) }

// otherHolder names an ApiKey other than k that delivers to k's Secret, or "".
func (s *secretNames) otherHolder(k *authv1alpha1.ApiKey) string {
	for _, n := range s.holders.Of(refOf(k)) {
		if n != k.Name {
			return n
		}
	}
	return ""
}
