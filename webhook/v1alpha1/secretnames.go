package v1alpha1

import (
	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/informers"
)

// secretNames finds the ApiKeys that deliver to a Secret, fed by the key
// index's watch, so that admitting an ApiKey reads only those sharing its
// Secret's name, with no ApiKey cached whole on a replica that only serves.
// It replaces a cache field index, which keeps a set and two strings per
// ApiKey for each of its namespace and all-namespaces forms (≈ 450 bytes
// per key): this keeps one map entry per ApiKey.
type secretNames struct {
	holders informers.Names[secretRef]
}

// secretRef is a Secret by namespace and name.
type secretRef struct{ namespace, name string }

func refOf(k *authv1alpha1.ApiKey) secretRef { return secretRef{k.Namespace, k.SecretName()} }

// Set, Remove and Replace keep the index as the watch's ApiKeys come and
// go (informers.Sink). spec.secretName is immutable, so an ApiKey filed
// once stays where it is; one that moved (a delete the watch missed and a
// create under the same name) is filed anew by the relist that follows.
func (s *secretNames) Set(k *authv1alpha1.ApiKey)    { s.holders.Add(refOf(k), k.Name) }
func (s *secretNames) Remove(k *authv1alpha1.ApiKey) { s.holders.Remove(refOf(k), k.Name) }

func (s *secretNames) Replace(list []*authv1alpha1.ApiKey) {
	s.holders.Replace(func(file func(secretRef, string)) {
		for _, k := range list {
			file(refOf(k), k.Name)
		}
	})
}

// otherHolder names an ApiKey other than k that delivers to k's Secret, or "".
func (s *secretNames) otherHolder(k *authv1alpha1.ApiKey) string {
	for _, n := range s.holders.Of(refOf(k)) {
		if n != k.Name {
			return n
		}
	}
	return ""
}
