package verifier

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// A HeldFence is one fence as another replica is told of it: the key (by
// the object the change was made to) and what is held off.
type HeldFence struct {
	Key        types.NamespacedName
	UID        types.UID
	Generation int64
	Stop       Stop
}

// HeldFences are the fences that hold now, for a replica catching up.
func (v *Verifier) HeldFences() []HeldFence {
	t := v.fences
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	out := make([]HeldFence, 0, len(t.byUID))
	for _, f := range t.byUID {
		out = append(out, HeldFence{Key: f.key, UID: f.uid, Generation: f.gen, Stop: f.stop})
	}
	return out
}

// FenceHeld fences what another replica holds off, as Fence does for an
// admitted change.
func (v *Verifier) FenceHeld(f HeldFence) error {
	key := &authv1alpha1.ApiKey{}
	key.Namespace, key.Name, key.UID, key.Generation = f.Key.Namespace, f.Key.Name, f.UID, f.Generation
	return v.fences.add(key, f.Stop)
}

// catchUpPage is how many ApiKeys one list call of CatchUp reads.
const catchUpPage = 1000

// CatchUp reads every ApiKey from reader (the API server, not the cache)
// and fences whatever the API server shows taken away that the index does
// not show yet, so that a replica which may have missed fences answers as
// if it had them once CatchUp returns: changes persisted before the list
// began are in it. It lists metadata only — a spec change moves the
// generation — and reads in full just the ApiKeys whose spec is newer
// than the index's, so that catching up costs little more than one list
// of names however many keys there are. The index is looked at before the
// list, so that a key made since is never taken for one deleted, and only
// a newer spec counts, so that a watch ahead of the list never reads as a
// change taken back. The fences are lifted as any other, by the watch
// showing the change.
func (v *Verifier) CatchUp(ctx context.Context, reader client.Reader) error {
	// What the index held of each key before the list: no copy of its
	// texts (the UID is the arena's), and the rest read again if needed.
	type held struct {
		generation int64
		deleting   bool
	}
	v.mu.RLock()
	before := make(map[types.UID]held, v.byUID.len())
	for si := int32(1); si < v.slots.next; si++ {
		if s := v.slots.at(si); s.hasKey {
			before[v.uidOf(si)] = held{generation: s.key.generation, deleting: s.key.deleting}
		}
	}
	v.mu.RUnlock()

	listed := make(map[types.UID]bool, len(before))
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(authv1alpha1.GroupVersion.WithKind("ApiKeyList"))
	for cont := ""; ; {
		list.Items = nil
		if err := reader.List(ctx, list, client.Limit(catchUpPage), client.Continue(cont)); err != nil {
			return fmt.Errorf("listing ApiKeys: %w", err)
		}
		for i := range list.Items {
			m := &list.Items[i]
			listed[m.UID] = true
			indexed, ok := before[m.UID]
			if !ok {
				// Not in the index yet, but a lagging watch may still bring
				// it in before the change that takes it away.
				if err := v.fenceUnindexed(ctx, reader, m); err != nil {
					return err
				}
				continue
			}
			stop := Stop{Revoked: !m.DeletionTimestamp.IsZero() && !indexed.deleting}
			if m.Generation <= indexed.generation && stop.IsZero() {
				continue
			}
			// The index's ApiKey now: newer than before if the watch
			// brought a change meanwhile, gone if it brought the deletion.
			now, ok := v.indexedKey(m.UID)
			if !ok {
				continue
			}
			if m.Generation > indexed.generation {
				changed, err := v.changedSince(ctx, reader, now)
				if err != nil {
					return err
				}
				stop = stop.merge(changed)
			}
			if !stop.IsZero() {
				if err := v.fences.add(now, stop); err != nil {
					return err
				}
			}
		}
		if cont = list.Continue; cont == "" {
			break
		}
	}
	for uid := range before {
		if listed[uid] {
			continue
		}
		if k, ok := v.indexedKey(uid); ok {
			if err := v.fences.add(k, Stop{Revoked: true}); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexedKey is the ApiKey with uid as the index holds it, if it does.
func (v *Verifier) indexedKey(uid types.UID) (*authv1alpha1.ApiKey, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	si, ok := v.slotOfLocked(uid)
	if !ok || !v.slots.at(si).hasKey {
		return nil, false
	}
	return v.apiKeyLocked(si), true
}

// fenceUnindexed fences what an ApiKey the index does not hold yet shows
// taken away for good or for now (revocation, deletion, suspension, a
// rotation with no grace), as of a generation before the listed one, so
// that the watch bringing the listed ApiKey lifts it. Scopes removed
// before the watch brings it in are not known here.
func (v *Verifier) fenceUnindexed(ctx context.Context, reader client.Reader, m *metav1.PartialObjectMetadata) error {
	if m.Generation <= 1 && m.DeletionTimestamp.IsZero() {
		return nil // never changed since its creation, which the watch brings as it is
	}
	k := &authv1alpha1.ApiKey{}
	if err := reader.Get(ctx, client.ObjectKeyFromObject(m), k); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("reading ApiKey %s/%s: %w", m.Namespace, m.Name, err)
	}
	if k.UID != m.UID {
		return nil
	}
	stop := Stop{Revoked: k.Spec.Revoked || !k.DeletionTimestamp.IsZero(), Suspended: k.Spec.Suspended}
	if r := k.RotationRequested(); !r.IsZero() && k.GracePeriod() == 0 {
		stop.RotationRequested = r
	}
	if stop.IsZero() {
		return nil
	}
	older := &authv1alpha1.ApiKey{}
	older.Namespace, older.Name, older.UID, older.Generation = k.Namespace, k.Name, k.UID, k.Generation-1
	return v.fences.add(older, stop)
}

// changedSince is what the API server's ApiKey takes away from indexed.
func (v *Verifier) changedSince(ctx context.Context, reader client.Reader, indexed *authv1alpha1.ApiKey) (Stop, error) {
	k := &authv1alpha1.ApiKey{}
	err := reader.Get(ctx, client.ObjectKeyFromObject(indexed), k)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && k.UID != indexed.UID):
		return Stop{Revoked: true}, nil
	case err != nil:
		return Stop{}, fmt.Errorf("reading ApiKey %s/%s: %w", indexed.Namespace, indexed.Name, err)
	}
	stop := TakenAway(indexed, k)
	stop.Revoked = stop.Revoked || !k.DeletionTimestamp.IsZero()
	return stop, nil
}
