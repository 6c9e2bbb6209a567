package controller

import (
	"context"
	"errors"
	"fmt"

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

// ensureKey mints a key for an ApiKey that has no delivered record, or
// finishes the mint a dead pass left pending. It returns the delivered
// record, or nil when minting cannot go on, and what it found of the Secret.
func (r *ApiKeyReconciler) ensureKey(ctx context.Context, key *authv1alpha1.ApiKey, pending []authv1alpha1.ApiKeyRecord) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	secret, err := r.getSecret(ctx, key)
	if err != nil {
		return nil, secretUnchecked, err
	}
	if secret != nil {
		for i := range pending {
			if holdsKey(secret, key, pending[i].Spec.Hash) {
				// A pass delivered this key and died before saying so.
				rest := append(pending[:i:i], pending[i+1:]...)
				if err := r.deletePending(ctx, rest); err != nil {
					return nil, secretUnchecked, err
				}
				return r.markDelivered(ctx, key, &pending[i], secret)
			}
		}
		// The Secret holds no key Latchkey recorded: it is not ours.
		return nil, secretNotOwned, r.deletePending(ctx, pending)
	}
	// Keys recorded but delivered nowhere: nobody can ever hold them.
	if err := r.deletePending(ctx, pending); err != nil {
		return nil, secretUnchecked, err
	}
	return r.mint(ctx, key)
}

// splitPending tells the delivered record (a key has at most one) from the
// pending ones.
func splitPending(records []authv1alpha1.ApiKeyRecord) (delivered *authv1alpha1.ApiKeyRecord, pending []authv1alpha1.ApiKeyRecord) {
	for i := range records {
		if records[i].Spec.Pending {
			pending = append(pending, records[i])
		} else if delivered == nil {
			delivered = &records[i]
		}
	}
	return delivered, pending
}

// holdsKey reports whether secret is the key's, and holds exactly the key
// whose hash is given.
func holdsKey(secret *corev1.Secret, key *authv1alpha1.ApiKey, hash string) bool {
	return metav1.IsControlledBy(secret, key) && keys.Hash(string(secret.Data[authv1alpha1.SecretKeyAPIKey])) == hash
}

// mint generates a key, records its hash pending, delivers it and marks it
// delivered.
func (r *ApiKeyReconciler) mint(ctx context.Context, key *authv1alpha1.ApiKey) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	format := key.Spec.Format
	if format == "" {
		format = authv1alpha1.FormatPrefixed
	}
	raw, err := keys.Generate(r.Random, keys.Format(format))
	if err != nil {
		return nil, secretUnchecked, fmt.Errorf("generating key: %w", err)
	}
	record := newRecord(key, raw, format)
	if err := r.Client.Create(ctx, record); err != nil {
		return nil, secretUnchecked, fmt.Errorf("recording the hash of a new key: %w", err)
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
	return r.markDelivered(ctx, key, record, secret)
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

// markDelivered lets the key authenticate: its Secret holds it.
func (r *ApiKeyReconciler) markDelivered(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord, secret *corev1.Secret) (*authv1alpha1.ApiKeyRecord, secretState, error) {
	base := record.DeepCopy()
	record.Spec.Pending = false
	if err := r.Client.Patch(ctx, record, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, secretUnchecked, fmt.Errorf("marking record %s delivered: %w", record.Name, err)
	}
	log.FromContext(ctx).Info("Minted key", "record", klog.KObj(record), "hint", record.Spec.Hint)
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyMinted, "Mint",
		"Key %s delivered to Secret %s", record.Spec.Hint, secret.Name)
	return record, secretDelivered, nil
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
// among them. A miss in the cache is confirmed against the API server,
// because minting on a stale miss would deliver a second key.
func (r *ApiKeyReconciler) keyRecords(ctx context.Context, key *authv1alpha1.ApiKey) ([]authv1alpha1.ApiKeyRecord, error) {
	var list authv1alpha1.ApiKeyRecordList
	if err := r.Client.List(ctx, &list, client.MatchingFields{IndexRecordKeyUID: string(key.UID)}); err != nil {
		return nil, fmt.Errorf("listing the records of %s: %w", key.Name, err)
	}
	if len(list.Items) > 0 {
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

// checkSecret reports whether the raw key is still where it was delivered.
// The key keeps working either way: the record holds its hash.
func (r *ApiKeyReconciler) checkSecret(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) (secretState, error) {
	secret, err := r.getSecret(ctx, key)
	switch {
	case err != nil:
		return secretUnchecked, err
	case secret == nil:
		return secretMissing, nil
	case !metav1.IsControlledBy(secret, key):
		return secretNotOwned, nil
	case !holdsKey(secret, key, record.Spec.Hash):
		return secretChanged, nil
	}
	return secretDelivered, nil
}
