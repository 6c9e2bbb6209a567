package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// Minting commits the key's hash before the key is delivered, so that
// Latchkey records only keys it generated itself:
//
//  1. generate the raw key in memory, from Random;
//  2. create its record, pending: the hash is recorded, the key does not
//     authenticate yet;
//  3. create the Secret with the raw key (atomic, by name);
//  4. mark the record delivered: from here on the key authenticates.
//
// A pass that dies after 2 leaves a pending record; the next pass finds
// the Secret holding exactly that key (3 landed) and finishes at 4, or
// finds it without the key — absent, or someone else's — and deletes the
// pending record, whose key then exists nowhere. No Secret is ever adopted
// on the strength of its owner reference, which anyone who may create
// Secrets can write: only by holding the key whose hash Latchkey recorded
// before it wrote it.

// Rotation mints the next key into the same Secret in the same order, so
// that the same crash reasoning holds:
//
//  1. generate the raw key in memory;
//  2. create its record, pending, with the next rotation number and the
//     request it answers;
//  3. patch the Secret's api-key, only if the Secret is the ApiKey's and
//     still holds exactly the current key, with the Secret's
//     resourceVersion as precondition;
//  4. mark the record delivered: the new key authenticates;
//  5. give every older delivered record its validUntil, the new record's
//     creation plus the grace period: computed, never taken from the
//     clock, so that a pass that dies before 5 and the one after it write
//     the same instant.
//
// A pass that dies after 2 leaves a pending record: the next pass finds the
// Secret holding it (3 landed) and finishes at 4, or holding the current key
// and deletes it (its key exists nowhere) before rotating afresh. Until 5
// the previous key works with no end, so it is never lost before its grace
// period ends; after 5, it stops at validUntil (revoked then, reason
// Rotated).

// ensureKey mints a key for an ApiKey that has no delivered record, or
// finishes the mint a dead pass left pending. It returns the delivered
// record, or nil when minting cannot go on, and what it found of the Secret.
func (r *ApiKeyReconciler) ensureKey(ctx context.Context, key *authv1alpha1.ApiKey, pending []authv1alpha1.ApiKeyRecord) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	secret, err := r.getSecret(ctx, key)
	if err != nil {
		return nil, secretUnchecked, err
	}
	record, err := r.finishPending(ctx, key, secret, pending)
	switch {
	case err != nil:
		return nil, secretUnchecked, err
	case record != nil:
		return record, secretDelivered, nil
	case secret != nil:
		// The Secret holds no key the index shows recorded for this
		// ApiKey: unless the API server has a record of it (the index is
		// behind), it is not ours.
		if rec, err := r.recordOfSecret(ctx, secret); err != nil || (rec != nil && rec.Spec.KeyUID == string(key.UID)) {
			return nil, secretUnchecked, errors.Join(err, fmt.Errorf("the record of the key in secret %s is not in the key index yet", secret.Name))
		}
		return nil, secretNotOwned, nil
	}
	return r.mint(ctx, key)
}

// ensureRotated finishes a rotation a dead pass left pending, rotates the
// key when a rotation is due and its Secret still holds the current key,
// and returns the current record, the records that stopped being current
// in this pass (newest first), and what it found of the Secret.
func (r *ApiKeyReconciler) ensureRotated(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, pending []authv1alpha1.ApiKeyRecord, now time.Time) (*authv1alpha1.ApiKeyRecord, []authv1alpha1.ApiKeyRecord, secretState, error) {
	secret, err := r.getSecret(ctx, key)
	if err != nil {
		return current, nil, secretUnchecked, err
	}
	finished, err := r.finishPending(ctx, key, secret, pending)
	if err != nil {
		return current, nil, secretUnchecked, err
	}
	var replaced []authv1alpha1.ApiKeyRecord
	if finished != nil && finished.Spec.Rotation > current.Spec.Rotation {
		replaced, current = append(replaced, *current), finished
	}
	state := secretStateOf(secret, key, current)
	if state == secretChanged {
		if err := r.confirmChanged(ctx, key, current, secret); err != nil {
			return current, replaced, secretUnchecked, err
		}
	}
	requested, due := rotationDue(key, current, now)
	if !due || state != secretDelivered {
		return current, replaced, state, nil
	}
	next, state, err := r.rotate(ctx, key, current, secret, requested)
	if next != current {
		replaced = append([]authv1alpha1.ApiKeyRecord{*current}, replaced...)
	}
	return next, replaced, state, err
}

// confirmChanged makes sure that the Secret holding another key than the
// current one is not a newer key of this ApiKey the index has not seen yet
// (records are named by hash): that would be reported as a changed Secret,
// and never rotated again. The pass is then retried, with the index caught
// up. An older key of this ApiKey put back into the Secret is a change.
func (r *ApiKeyReconciler) confirmChanged(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, secret *corev1.Secret) error {
	rec, err := r.recordOfSecret(ctx, secret)
	switch {
	case err != nil:
		return err
	case rec != nil && rec.Spec.KeyUID == string(key.UID) && (rec.Spec.Pending || rec.Spec.Rotation > current.Spec.Rotation):
		return fmt.Errorf("record %s of the key in secret %s is not in the key index yet", rec.Name, secret.Name)
	}
	return nil
}

// recordOfSecret reads from the API server the record of the key the
// Secret holds (records are named by hash), or nil when there is none.
func (r *ApiKeyReconciler) recordOfSecret(ctx context.Context, secret *corev1.Secret) (*authv1alpha1.ApiKeyRecord, error) {
	raw := secret.Data[authv1alpha1.SecretKeyAPIKey]
	if len(raw) == 0 {
		return nil, nil // a Secret holding no key has no record to ask for
	}
	rec := &authv1alpha1.ApiKeyRecord{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Name: keys.Hash(string(raw))}, rec)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("looking up the key in secret %s: %w", secret.Name, err)
	}
	return rec, nil
}

// finishPending marks delivered the pending record whose key the Secret
// holds, a pass having delivered it and died before saying so, and deletes
// the other pending records: their keys were delivered nowhere, so nobody
// can ever hold them. It returns the record it marked, or nil.
func (r *ApiKeyReconciler) finishPending(ctx context.Context, key *authv1alpha1.ApiKey, secret *corev1.Secret, pending []authv1alpha1.ApiKeyRecord) (*authv1alpha1.ApiKeyRecord, error) {
	if secret != nil {
		for i := range pending {
			if holdsKey(secret, key, pending[i].Spec.Hash) {
				rest := append(pending[:i:i], pending[i+1:]...)
				if err := r.deletePending(ctx, rest); err != nil {
					return nil, err
				}
				return r.markDelivered(ctx, key, &pending[i], secret)
			}
		}
	}
	return nil, r.deletePending(ctx, pending)
}

// rotationDue says whether the current key is to be replaced, and the
// instant of the request the new key answers: spec.rotation.requestedAt
// when it supersedes the current record, else the scheduled instant once
// spec.rotation.every has passed since the current key was minted. An
// expired key is not rotated: its next key would be expired as well.
func rotationDue(key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, now time.Time) (time.Time, bool) {
	if key.Expired(now) {
		return time.Time{}, false
	}
	if key.Supersedes(current) {
		return key.RotationRequested(), true
	}
	if next, ok := nextRotation(key, current); ok && !next.After(now) {
		return next, true
	}
	return time.Time{}, false
}

// nextRotation is when spec.rotation.every replaces the current key: that
// long after it was minted, or after the instant it was scheduled for if
// that is later (as Supersedes reckons), so that a schedule only ever moves
// forward, by at least every, whatever the skew between the API server's
// clock (creation) and the manager's.
func nextRotation(key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord) (time.Time, bool) {
	if key.Spec.Rotation == nil || key.Spec.Rotation.Every == nil || current == nil {
		return time.Time{}, false
	}
	return current.Minted().Add(key.Spec.Rotation.Every.Duration), true
}

// recordSet is an ApiKey's records sorted out: the current one (the
// delivered record with the highest rotation number), the older delivered
// ones, newest first, and the pending ones.
type recordSet struct {
	current  *authv1alpha1.ApiKeyRecord
	previous []authv1alpha1.ApiKeyRecord
	pending  []authv1alpha1.ApiKeyRecord
}

// splitRecords sorts records in place, delivered newest first and pending
// last, and sorts them out; the set points into records, so that a write
// to one of its records is seen through records too.
func splitRecords(records []authv1alpha1.ApiKeyRecord) recordSet {
	slices.SortFunc(records, func(a, b authv1alpha1.ApiKeyRecord) int {
		if a.Spec.Pending != b.Spec.Pending {
			if a.Spec.Pending {
				return 1
			}
			return -1
		}
		return newestFirst(a, b)
	})
	delivered := 0
	for delivered < len(records) && !records[delivered].Spec.Pending {
		delivered++
	}
	set := recordSet{pending: records[delivered:]}
	if delivered > 0 {
		set.current, set.previous = &records[0], records[1:delivered]
	}
	return set
}

// newestFirst orders records by rotation number, then creation, newest first.
func newestFirst(a, b authv1alpha1.ApiKeyRecord) int {
	if c := cmp.Compare(b.Spec.Rotation, a.Spec.Rotation); c != 0 {
		return c
	}
	if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// holdsKey reports whether secret is the key's, and holds exactly the key
// whose hash is given.
func holdsKey(secret *corev1.Secret, key *authv1alpha1.ApiKey, hash string) bool {
	return metav1.IsControlledBy(secret, key) && keys.Hash(string(secret.Data[authv1alpha1.SecretKeyAPIKey])) == hash
}

// mint generates a key, records its hash pending, delivers it and marks it
// delivered.
func (r *ApiKeyReconciler) mint(ctx context.Context, key *authv1alpha1.ApiKey) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	raw, record, err := r.recordNewKey(ctx, key, nil, time.Time{})
	if err != nil {
		return nil, secretUnchecked, err
	}
	secret, err := r.deliver(ctx, key, raw)
	switch {
	case apierrors.IsAlreadyExists(err):
		// Someone else's Secret took the name since we looked: never adopt it.
		return nil, secretNotOwned, r.deletePending(ctx, []authv1alpha1.ApiKeyRecord{*record})
	case apierrors.IsForbidden(err) || apierrors.IsInvalid(err):
		// The Secret was certainly not written: its key exists nowhere.
		return nil, secretUnchecked, errors.Join(err, r.deletePending(ctx, []authv1alpha1.ApiKeyRecord{*record}))
	case err != nil:
		// The Secret may have been written with its answer lost: the next
		// pass looks, and finishes or cleans up.
		return nil, secretUnchecked, err
	}
	if record, err = r.markDelivered(ctx, key, record, secret); err != nil {
		return nil, secretUnchecked, err
	}
	return record, secretDelivered, nil
}

// rotate mints the key that replaces current into the Secret that holds
// current's key, for the rotation request at requested.
func (r *ApiKeyReconciler) rotate(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, secret *corev1.Secret, requested time.Time) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	raw, record, err := r.recordNewKey(ctx, key, current, requested)
	if err != nil {
		return current, secretUnchecked, err
	}
	err = r.redeliver(ctx, secret, raw)
	switch {
	case apierrors.IsNotFound(err):
		// Deleted since we read it: the patch wrote nothing.
		return current, secretMissing, r.deletePending(ctx, []authv1alpha1.ApiKeyRecord{*record})
	case apierrors.IsConflict(err) || apierrors.IsForbidden(err) || apierrors.IsInvalid(err):
		// Changed since we read it, or refused: the new key was written
		// nowhere. The next pass looks at the Secret afresh.
		return current, secretUnchecked, errors.Join(err, r.deletePending(ctx, []authv1alpha1.ApiKeyRecord{*record}))
	case err != nil:
		// The patch may have landed with its answer lost: the next pass
		// finds the Secret holding the new key or the current one.
		return current, secretUnchecked, err
	}
	record, err = r.markDelivered(ctx, key, record, secret)
	if err != nil {
		return current, secretUnchecked, err
	}
	return record, secretDelivered, nil
}

// recordNewKey generates a key and records its hash, pending: rotation 0
// when there is no current key, else the one after current's, for the
// request at requested.
func (r *ApiKeyReconciler) recordNewKey(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, requested time.Time) (string, *authv1alpha1.ApiKeyRecord, error) {
	format := key.Spec.Format
	if format == "" {
		format = authv1alpha1.FormatPrefixed
	}
	raw, err := keys.Generate(r.Random, keys.Format(format))
	if err != nil {
		return "", nil, fmt.Errorf("generating key: %w", err)
	}
	record := newRecord(key, raw, format)
	if current != nil {
		at := metav1.NewTime(requested)
		record.Spec.Rotation, record.Spec.RequestedAt = current.Spec.Rotation+1, &at
	}
	if err := r.Client.Create(ctx, record); err != nil {
		return "", nil, fmt.Errorf("recording the hash of a new key: %w", err)
	}
	r.created.add(key.UID, record.Name)
	return raw, record, nil
}

func newRecord(key *authv1alpha1.ApiKey, raw string, format authv1alpha1.KeyFormat) *authv1alpha1.ApiKeyRecord {
	hash := keys.Hash(raw)
	return &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{
			Name: hash,
			Labels: map[string]string{
				authv1alpha1.LabelTenant:    key.Namespace,
				authv1alpha1.LabelKeyName:   key.Name,
				authv1alpha1.LabelKeyUID:    string(key.UID),
				authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue,
			},
		},
		Spec: authv1alpha1.ApiKeyRecordSpec{
			Hash:      hash,
			Tenant:    key.Namespace,
			KeyName:   key.Name,
			KeyUID:    string(key.UID),
			Hint:      keys.Hint(raw),
			Format:    format,
			ExpiresAt: key.Spec.ExpiresAt,
			Pending:   true,
		},
	}
}

// deliver writes the raw key into a new Secret. Creation is atomic and the
// name fixed, so two passes can never deliver two keys.
func (r *ApiKeyReconciler) deliver(ctx context.Context, key *authv1alpha1.ApiKey, raw string) (*corev1.Secret, error) {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      key.SecretName(),
			Namespace: key.Namespace,
			Labels: map[string]string{
				authv1alpha1.LabelKeyName:   key.Name,
				authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue,
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			authv1alpha1.SecretKeyAPIKey: []byte(raw),
			authv1alpha1.SecretKeyTenant: []byte(key.Namespace),
			authv1alpha1.SecretKeyName:   []byte(key.Name),
		},
	}
	if err := controllerutil.SetControllerReference(key, secret, r.Client.Scheme()); err != nil {
		return nil, err
	}
	if err := r.Client.Create(ctx, secret); err != nil {
		return nil, fmt.Errorf("creating secret %s: %w", key.SecretName(), err)
	}
	return secret, nil
}

// redeliver writes the raw key into the key's Secret in place of the
// current one. The Secret was read from the API server and found to hold
// the current key; its resourceVersion is the precondition, so that a
// Secret changed since (replaced, edited) is never written.
func (r *ApiKeyReconciler) redeliver(ctx context.Context, secret *corev1.Secret, raw string) error {
	base := secret.DeepCopy()
	secret.Data[authv1alpha1.SecretKeyAPIKey] = []byte(raw)
	if err := r.Client.Patch(ctx, secret, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing the new key into secret %s: %w", secret.Name, err)
	}
	return nil
}

// markDelivered lets the key authenticate: its Secret holds it.
func (r *ApiKeyReconciler) markDelivered(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord, secret *corev1.Secret) (*authv1alpha1.ApiKeyRecord, error) {
	base := record.DeepCopy()
	record.Spec.Pending = false
	if err := r.Client.Patch(ctx, record, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, fmt.Errorf("marking record %s delivered: %w", record.Name, err)
	}
	if record.Spec.Rotation > 0 {
		log.FromContext(ctx).Info("Rotated key", "record", klog.KObj(record), "hint", record.Spec.Hint, "rotation", record.Spec.Rotation)
		r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyRotated, "Rotate",
			"Key %s (rotation %d) delivered to Secret %s", record.Spec.Hint, record.Spec.Rotation, secret.Name)
		return record, nil
	}
	log.FromContext(ctx).Info("Minted key", "record", klog.KObj(record), "hint", record.Spec.Hint)
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyMinted, "Mint",
		"Key %s delivered to Secret %s", record.Spec.Hint, secret.Name)
	return record, nil
}

// deletePending deletes records whose keys never authenticated. The UID
// precondition keeps a record that was replaced meanwhile.
func (r *ApiKeyReconciler) deletePending(ctx context.Context, records []authv1alpha1.ApiKeyRecord) error {
	for i := range records {
		rec := &records[i]
		if !rec.Spec.Pending {
			continue
		}
		if err := r.Client.Delete(ctx, rec, client.Preconditions{UID: &rec.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting pending record %s: %w", rec.Name, err)
		}
	}
	return nil
}

// keyRecords returns the records of the ApiKey (by its UID), pending ones
// among them, as the index names them, with those this process created
// that the index does not show yet, each read by name from the API server.
// Minting on a stale miss would deliver a second key: a miss for a key its
// status shows delivered is confirmed against the API server (a list
// across all records, so only then); for a key never delivered, the
// Secret's atomic creation is the guard (deliver), and ensureKey looks up
// a key its Secret already holds.
func (r *ApiKeyReconciler) keyRecords(ctx context.Context, key *authv1alpha1.ApiKey) ([]authv1alpha1.ApiKeyRecord, error) {
	cached, err := recordsOfKey(ctx, r.APIReader, r.Index, key.UID)
	if err != nil {
		return nil, fmt.Errorf("listing the records of %s: %w", key.Name, err)
	}
	list := authv1alpha1.ApiKeyRecordList{Items: cached}
	for _, name := range r.created.unseen(key.UID, list.Items) {
		rec := &authv1alpha1.ApiKeyRecord{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Name: name}, rec)
		switch {
		case apierrors.IsNotFound(err):
			r.created.forget(key.UID, name)
		case err != nil:
			return nil, fmt.Errorf("reading record %s of %s: %w", name, key.Name, err)
		default:
			list.Items = append(list.Items, *rec)
		}
	}
	if len(list.Items) > 0 || key.Status.KeyHint == "" || key.Spec.Revoked {
		return list.Items, nil
	}
	if err := r.APIReader.List(ctx, &list, client.MatchingFields{IndexRecordKeyUID: string(key.UID)}); err != nil {
		return nil, fmt.Errorf("listing the records of %s: %w", key.Name, err)
	}
	return list.Items, nil
}

// getSecret reads the key's Secret by name (never from a cache), or nil.
func (r *ApiKeyReconciler) getSecret(ctx context.Context, key *authv1alpha1.ApiKey) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.SecretName()}, secret)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading secret %s: %w", key.SecretName(), err)
	}
	return secret, nil
}

// secretStateOf says whether the raw key is still where it was delivered.
// The key keeps working either way: the record holds its hash.
func secretStateOf(secret *corev1.Secret, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) secretState {
	switch {
	case secret == nil:
		return secretMissing
	case !metav1.IsControlledBy(secret, key):
		return secretNotOwned
	case !holdsKey(secret, key, record.Spec.Hash):
		return secretChanged
	}
	return secretDelivered
}
