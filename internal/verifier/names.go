package verifier

import (
	"slices"

	"k8s.io/apimachinery/pkg/types"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// The index answers two questions by an ApiKey's name that others asked
// of maps of their own, fed by its watch: which ApiKey delivers to a
// Secret (the admission webhook, which refuses a second), and which keys
// the walk of Secret checks visits (the controller). Those two maps held
// ≈ 160 bytes a key at 100,000 keys (a heap profile after minting,
// docs/sizing.md), where the index holds each key's namespace and name
// already: one map by name serves both, and one by Secret for the keys
// that name theirs.

// fileLocked files the slot's ApiKey, k, by its name and, when it names
// one, its Secret.
func (v *Verifier) fileLocked(s *slot, k *key) {
	v.byName[types.NamespacedName{Namespace: k.namespace, Name: k.name}] = s
	if k.secret != "" {
		ref := types.NamespacedName{Namespace: k.namespace, Name: k.secret}
		if !slices.Contains(v.bySecret[ref], s) {
			v.bySecret[ref] = append(v.bySecret[ref], s)
		}
	}
}

// unfileLocked undoes fileLocked: a name filed since for another UID (an
// ApiKey deleted and made again, the deletion not seen) stays.
func (v *Verifier) unfileLocked(s *slot, k *key) {
	name := types.NamespacedName{Namespace: k.namespace, Name: k.name}
	if v.byName[name] == s {
		delete(v.byName, name)
	}
	if k.secret != "" {
		ref := types.NamespacedName{Namespace: k.namespace, Name: k.secret}
		if held := slices.DeleteFunc(v.bySecret[ref], func(o *slot) bool { return o == s }); len(held) > 0 {
			v.bySecret[ref] = held
		} else {
			delete(v.bySecret, ref)
		}
	}
}

// OtherHolder names an ApiKey other than k, in k's namespace, that
// delivers its key to k's Secret, or "".
func (v *Verifier) OtherHolder(k *authv1alpha1.ApiKey) string {
	ref := types.NamespacedName{Namespace: k.Namespace, Name: k.SecretName()}
	v.mu.RLock()
	defer v.mu.RUnlock()
	// An ApiKey that names no Secret delivers to its own name.
	if s, ok := v.byName[ref]; ok && s.key.secret == "" && s.key.name != k.Name {
		return s.key.name
	}
	for _, s := range v.bySecret[ref] {
		if s.key.name != k.Name {
			return s.key.name
		}
	}
	return ""
}

// InUse says whether the index holds the ApiKey named name, neither
// revoked nor being deleted: one the walk of Secret checks visits.
func (v *Verifier) InUse(name types.NamespacedName) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	s, ok := v.byName[name]
	return ok && s.key.inUse()
}

// KeysInUse names every ApiKey InUse, in no order.
func (v *Verifier) KeysInUse() []types.NamespacedName {
	v.mu.RLock()
	defer v.mu.RUnlock()
	names := make([]types.NamespacedName, 0, len(v.byName))
	for name, s := range v.byName {
		if s.key.inUse() {
			names = append(names, name)
		}
	}
	return names
}

func (k *key) inUse() bool { return !k.revoked && !k.deleting }
