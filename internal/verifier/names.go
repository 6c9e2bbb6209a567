package verifier

import (
	"slices"
	"strings"

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

// nameLocked is the name of the key k of a slot.
func (v *Verifier) nameLocked(k *key) types.NamespacedName {
	return types.NamespacedName{Namespace: v.syms.name(k.namespace), Name: v.texts.get(k.name)}
}

// hasName says whether the slot at si holds the ApiKey named name.
func (v *Verifier) hasName(name types.NamespacedName) func(int32) bool {
	return func(si int32) bool {
		s := v.slots.at(si)
		return s.hasKey && v.nameLocked(&s.key) == name
	}
}

// fileLocked files the slot's ApiKey, k, by its name and, when it names
// one, its Secret.
func (v *Verifier) fileLocked(si int32, k *key) {
	name := v.nameLocked(k)
	v.byName.set(name, si, v.hasName(name))
	if k.secret.n != 0 {
		// Its own copy of the name: an arena's string as a map key would
		// keep the arena's chunk after a compaction, for as long as the
		// key names that Secret.
		ref := types.NamespacedName{Namespace: name.Namespace, Name: strings.Clone(v.texts.get(k.secret))}
		if !slices.Contains(v.bySecret[ref], si) {
			v.bySecret[ref] = append(v.bySecret[ref], si)
		}
	}
}

// unfileLocked undoes fileLocked: a name filed since for another UID (an
// ApiKey deleted and made again, the deletion not seen) stays.
func (v *Verifier) unfileLocked(si int32, k *key) {
	v.byName.del(v.nameLocked(k), si)
	if k.secret.n != 0 {
		ref := types.NamespacedName{Namespace: v.syms.name(k.namespace), Name: v.texts.get(k.secret)}
		if held := slices.DeleteFunc(v.bySecret[ref], func(o int32) bool { return o == si }); len(held) > 0 {
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
	if si, ok := v.byName.get(ref, v.hasName(ref)); ok {
		if h := &v.slots.at(si).key; h.secret.n == 0 && v.texts.get(h.name) != k.Name {
			return v.texts.get(h.name)
		}
	}
	for _, si := range v.bySecret[ref] {
		if name := v.texts.get(v.slots.at(si).key.name); name != k.Name {
			return name
		}
	}
	return ""
}

// CountInUse is how many ApiKeys NextInUse names: those the walk of
// Secret checks visits.
func (v *Verifier) CountInUse() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	n := 0
	for si := int32(1); si < v.slots.next; si++ {
		if _, ok := v.inUseLocked(si); ok {
			n++
		}
	}
	return n
}

// NextInUse names the first ApiKey in use (neither revoked nor being
// deleted) at or after a slot, and the slot after it; ok is false when
// there is none. A walk over the keys holds its slot, not a list of them.
func (v *Verifier) NextInUse(from int32) (name types.NamespacedName, next int32, ok bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for si := max(from, 1); si < v.slots.next; si++ {
		if name, ok := v.inUseLocked(si); ok {
			return name, si + 1, true
		}
	}
	return types.NamespacedName{}, 0, false
}

// inUseLocked is the name of the slot's ApiKey if it is in use: of two
// slots with one name (an ApiKey made again, the deletion not seen yet),
// the one filed.
func (v *Verifier) inUseLocked(si int32) (types.NamespacedName, bool) {
	s := v.slots.at(si)
	if !s.hasKey || !s.key.inUse() {
		return types.NamespacedName{}, false
	}
	name := v.nameLocked(&s.key)
	filed, ok := v.byName.get(name, v.hasName(name))
	return name, ok && filed == si
}

func (k *key) inUse() bool { return !k.revoked && !k.deleting }
