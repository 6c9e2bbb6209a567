package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// Event reasons of an ApiKey.
const (
	EventKeyMinted      = "KeyMinted"
	EventSecretNotOwned = "SecretNotOwned"
	EventSecretMissing  = "SecretMissing"
	EventKeyRevoked     = "KeyRevoked"
	EventKeyExpired     = "KeyExpired"
	// EventSecretAccessDenied: the namespace has not let Latchkey at its Secrets.
	EventSecretAccessDenied = "SecretAccessDenied"
)

// DefaultSecretCheckInterval is how often an Active key's Secret is looked
// at. Latchkey may not watch Secrets (that would cache every Secret in the
// cluster), so a deleted Secret is noticed on this schedule.
const DefaultSecretCheckInterval = 10 * time.Minute

// Defaults of the manager's tuning flags.
const (
	DefaultMaxConcurrentReconciles = 4
	DefaultKubeAPIQPS              = 50
	DefaultKubeAPIBurst            = 100
)

// ApiKeyReconciler mints each ApiKey's key once, keeps its hashed record, and
// reports the key's state in status.
type ApiKeyReconciler struct {
	// Client reads ApiKeys and records from the cache; Secrets are never cached.
	Client client.Client
	// APIReader reads from the API server, to confirm a record is really
	// missing before minting a key for it.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Clock     clock.PassiveClock
	// Random is the source of key material: crypto/rand outside tests.
	Random io.Reader
	// SecretCheckInterval is how often an Active key's Secret is checked.
	SecretCheckInterval time.Duration
	// ServiceAccount is the manager's, namespace:name, for the command that
	// grants it a namespace's Secrets; empty means DefaultServiceAccount.
	ServiceAccount string
}

// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeyrecords,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeyrecords/status,verbs=get;patch
// Secrets in tenants' namespaces (get by name, create) come from the
// latchkey-key-delivery ClusterRole (config/rbac/key_delivery_role.yaml),
// bound per namespace: the manager holds no cluster-wide Secret access.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one ApiKey's record, Secret and status in line with its spec.
func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	key := &authv1alpha1.ApiKey{}
	if err := r.Client.Get(ctx, req.NamespacedName, key); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	if key.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(key, authv1alpha1.Finalizer) {
		base := key.DeepCopy()
		controllerutil.AddFinalizer(key, authv1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	original := key.DeepCopy()
	defer func() {
		if err := r.patchStatus(ctx, original, key); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()

	if !key.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, key)
	}
	return r.reconcileNormal(ctx, key)
}

func (r *ApiKeyReconciler) reconcileDelete(ctx context.Context, key *authv1alpha1.ApiKey) error {
	if !controllerutil.ContainsFinalizer(key, authv1alpha1.Finalizer) {
		return nil
	}
	record, err := r.getRecord(ctx, key)
	if err != nil {
		return err
	}
	if record != nil {
		if err := r.revokeRecord(ctx, record, authv1alpha1.RevocationDeleted); err != nil {
			return err
		}
	}
	base := key.DeepCopy()
	controllerutil.RemoveFinalizer(key, authv1alpha1.Finalizer)
	if err := r.Client.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(err)
	}
	log.FromContext(ctx).Info("Revoked the record of a deleted key")
	return nil
}

func (r *ApiKeyReconciler) reconcileNormal(ctx context.Context, key *authv1alpha1.ApiKey) (ctrl.Result, error) {
	record, err := r.getRecord(ctx, key)
	if err != nil {
		return ctrl.Result{}, err
	}

	if key.Spec.Revoked {
		return ctrl.Result{}, r.reconcileRevoked(ctx, key, record)
	}

	if record == nil {
		var done bool
		record, done, err = r.mint(ctx, key)
		if accessDenied(err) {
			r.setSecretAccessDenied(key, true)
			return ctrl.Result{RequeueAfter: min(authv1alpha1.KeyDeliveryRetry, r.secretCheckInterval())}, nil
		}
		if err != nil || done {
			return ctrl.Result{RequeueAfter: r.secretCheckInterval()}, err
		}
	} else if err := r.checkSecret(ctx, key); accessDenied(err) {
		r.setSecretAccessDenied(key, false)
	} else if err != nil {
		return ctrl.Result{}, err
	}

	if err := r.syncRecordExpiry(ctx, key, record); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.setLiveStatus(key, record)}, nil
}

// mint delivers a key to the Secret and records its hash, in that order: a
// crash after the Secret is written leaves a Secret whose key is recorded on
// the next pass, never a working key nobody holds. done reports that minting
// cannot go on and status already says why.
func (r *ApiKeyReconciler) mint(ctx context.Context, key *authv1alpha1.ApiKey) (_ *authv1alpha1.ApiKeyRecord, done bool, _ error) {
	secret, err := r.getSecret(ctx, key)
	if err != nil {
		return nil, false, err
	}
	if secret == nil {
		secret, err = r.deliver(ctx, key)
		if err != nil {
			return nil, false, err
		}
	}
	if !metav1.IsControlledBy(secret, key) {
		r.setSecretNotOwned(key, secret)
		return nil, true, nil
	}

	raw := string(secret.Data[authv1alpha1.SecretKeyAPIKey])
	format, err := keys.Parse(raw)
	if err != nil {
		r.setFailed(key, authv1alpha1.ReasonDeliveryImpossible,
			fmt.Sprintf("Secret %q no longer holds the key Latchkey wrote (%v); delete the Secret to have a new key minted", secret.Name, err))
		return nil, true, nil
	}
	record := &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{
			Name: recordName(key),
			Labels: map[string]string{
				authv1alpha1.LabelTenant:    key.Namespace,
				authv1alpha1.LabelKeyName:   key.Name,
				authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue,
			},
		},
		Spec: authv1alpha1.ApiKeyRecordSpec{
			Hash:      keys.Hash(raw),
			Tenant:    key.Namespace,
			KeyName:   key.Name,
			KeyUID:    string(key.UID),
			Hint:      keys.Hint(raw),
			Format:    authv1alpha1.KeyFormat(format),
			ExpiresAt: key.Spec.ExpiresAt,
		},
	}
	if err := r.Client.Create(ctx, record); err != nil {
		return nil, false, fmt.Errorf("creating record %s: %w", record.Name, err)
	}
	log.FromContext(ctx).Info("Minted key", "record", klog.KObj(record), "hint", record.Spec.Hint)
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyMinted, "Mint",
		"Key %s delivered to Secret %s", record.Spec.Hint, secret.Name)
	r.setDelivered(key)
	return record, false, nil
}

// deliver writes a new key into a new Secret. Creation is atomic and the
// name fixed, so two passes can never deliver two keys.
func (r *ApiKeyReconciler) deliver(ctx context.Context, key *authv1alpha1.ApiKey) (*corev1.Secret, error) {
	format := key.Spec.Format
	if format == "" {
		format = authv1alpha1.FormatPrefixed
	}
	raw, err := keys.Generate(r.Random, keys.Format(format))
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
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
	err = r.Client.Create(ctx, secret)
	if apierrors.IsAlreadyExists(err) {
		// Someone created it since we looked: look again, and judge that one.
		secret, err = r.getSecret(ctx, key)
		if err == nil && secret == nil {
			err = fmt.Errorf("secret %s was created and deleted while delivering; retrying", key.SecretName())
		}
		return secret, err
	}
	if err != nil {
		return nil, fmt.Errorf("creating secret %s: %w", key.SecretName(), err)
	}
	return secret, nil
}

// checkSecret reports whether the raw key is still where it was delivered.
// The key keeps working either way: the record holds its hash.
func (r *ApiKeyReconciler) checkSecret(ctx context.Context, key *authv1alpha1.ApiKey) error {
	secret, err := r.getSecret(ctx, key)
	if err != nil {
		return err
	}
	switch {
	case secret == nil:
		if r.setCondition(key, authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretMissing,
			fmt.Sprintf("Secret %q was deleted; the key still works. If its holder lost it, revoke this ApiKey and create a new one", key.SecretName())) {
			r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, EventSecretMissing, "CheckSecret",
				"Secret %s was deleted; the key still works", key.SecretName())
		}
	case !metav1.IsControlledBy(secret, key):
		r.setCondition(key, authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned,
			fmt.Sprintf("Secret %q was replaced by one Latchkey did not create; the key still works", key.SecretName()))
	default:
		r.setDelivered(key)
	}
	return nil
}

// accessDenied tells RBAC's refusals from other 403s, such as an admission
// webhook's: the authorizer's message says who "cannot" do what.
func accessDenied(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), " cannot ")
}

// setSecretAccessDenied reports a namespace that has not let Latchkey at
// its Secrets, with the command that does. Before minting the key waits,
// Pending; once minted it keeps working and only the check is unknown.
func (r *ApiKeyReconciler) setSecretAccessDenied(key *authv1alpha1.ApiKey, minting bool) {
	sa := r.ServiceAccount
	if sa == "" {
		sa = authv1alpha1.DefaultServiceAccount
	}
	msg := fmt.Sprintf("Latchkey may not get or create Secrets in namespace %q. To let it deliver keys here: kubectl create rolebinding %s -n %s --clusterrole=%s --serviceaccount=%s",
		key.Namespace, authv1alpha1.KeyDeliveryClusterRole, key.Namespace, authv1alpha1.KeyDeliveryClusterRole, sa)
	status := metav1.ConditionUnknown
	if minting {
		status = metav1.ConditionFalse
		key.Status.Phase = authv1alpha1.PhasePending
		r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied, msg)
	}
	if r.setCondition(key, authv1alpha1.ConditionKeyDelivered, status, authv1alpha1.ReasonSecretAccessDenied, msg) {
		r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, EventSecretAccessDenied, "Deliver", "%s", msg)
	}
}

func (r *ApiKeyReconciler) setDelivered(key *authv1alpha1.ApiKey) {
	r.setCondition(key, authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered,
		fmt.Sprintf("Key delivered to Secret %q", key.SecretName()))
}

func (r *ApiKeyReconciler) reconcileRevoked(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) error {
	if record != nil {
		if err := r.revokeRecord(ctx, record, authv1alpha1.RevocationRevoked); err != nil {
			return err
		}
		key.Status.KeyHint = record.Spec.Hint
		key.Status.RevokedAt = record.Spec.RevokedAt
	}
	if key.Status.RevokedAt == nil {
		now := metav1.NewTime(r.Clock.Now())
		key.Status.RevokedAt = &now
	}
	if key.Status.Phase != authv1alpha1.PhaseRevoked {
		r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyRevoked, "Revoke", "Key revoked")
	}
	key.Status.Phase = authv1alpha1.PhaseRevoked
	r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonRevoked,
		"The key was revoked and never authenticates again")
	return nil
}

// revokeRecord marks a record revoked; it keeps the first reason it is given.
func (r *ApiKeyReconciler) revokeRecord(ctx context.Context, record *authv1alpha1.ApiKeyRecord, reason string) error {
	return revokeRecord(ctx, r.Client, r.Clock, record, reason)
}

func revokeRecord(ctx context.Context, c client.Client, clk clock.PassiveClock, record *authv1alpha1.ApiKeyRecord, reason string) error {
	if record.Spec.Revoked {
		return nil
	}
	base := record.DeepCopy()
	now := metav1.NewTime(clk.Now())
	record.Spec.Revoked = true
	record.Spec.RevokedAt = &now
	record.Spec.RevocationReason = reason
	if err := c.Patch(ctx, record, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("revoking record %s: %w", record.Name, err)
	}
	log.FromContext(ctx).Info("Revoked record", "record", klog.KObj(record), "reason", reason)
	return nil
}

func (r *ApiKeyReconciler) syncRecordExpiry(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) error {
	if equality.Semantic.DeepEqual(record.Spec.ExpiresAt, key.Spec.ExpiresAt) {
		return nil
	}
	base := record.DeepCopy()
	record.Spec.ExpiresAt = key.Spec.ExpiresAt
	if err := r.Client.Patch(ctx, record, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("updating expiry of record %s: %w", record.Name, err)
	}
	return nil
}

// setLiveStatus sets the status of a minted, unrevoked key and returns when
// to look again: at its expiry, or at the next Secret check.
func (r *ApiKeyReconciler) setLiveStatus(key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) time.Duration {
	key.Status.KeyHint = record.Spec.Hint
	if record.Status.LastUsedAt != nil && (key.Status.LastUsedAt == nil || key.Status.LastUsedAt.Before(record.Status.LastUsedAt)) {
		key.Status.LastUsedAt = record.Status.LastUsedAt
	}

	now := r.Clock.Now()
	if exp := key.Spec.ExpiresAt; exp != nil && !now.Before(exp.Time) {
		if key.Status.Phase != authv1alpha1.PhaseExpired {
			r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, EventKeyExpired, "Expire", "Key expired at %s", exp.UTC().Format(time.RFC3339))
		}
		key.Status.Phase = authv1alpha1.PhaseExpired
		r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired,
			fmt.Sprintf("The key expired at %s", exp.UTC().Format(time.RFC3339)))
		return r.secretCheckInterval()
	}
	key.Status.Phase = authv1alpha1.PhaseActive
	r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive, "The key authenticates requests")
	next := r.secretCheckInterval()
	if exp := key.Spec.ExpiresAt; exp != nil && exp.Sub(now) < next {
		next = exp.Sub(now)
	}
	return next
}

func (r *ApiKeyReconciler) setSecretNotOwned(key *authv1alpha1.ApiKey, secret *corev1.Secret) {
	msg := fmt.Sprintf("Secret %q exists and was not created by Latchkey for this ApiKey; Latchkey never overwrites it. Delete or rename that Secret, or create an ApiKey with another spec.secretName", secret.Name)
	if key.Status.Phase != authv1alpha1.PhaseFailed {
		r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, EventSecretNotOwned, "Deliver", "%s", msg)
	}
	r.setFailed(key, authv1alpha1.ReasonSecretNotOwned, msg)
}

func (r *ApiKeyReconciler) setFailed(key *authv1alpha1.ApiKey, reason, msg string) {
	key.Status.Phase = authv1alpha1.PhaseFailed
	r.setCondition(key, authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, reason, msg)
	r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered, msg)
}

// setCondition sets a condition and reports whether its status changed.
func (r *ApiKeyReconciler) setCondition(key *authv1alpha1.ApiKey, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	changed := !meta.IsStatusConditionPresentAndEqual(key.Status.Conditions, typ, status)
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            msg,
		ObservedGeneration: key.Generation,
	})
	return changed
}

func (r *ApiKeyReconciler) patchStatus(ctx context.Context, original, key *authv1alpha1.ApiKey) error {
	if key.Status.Phase == "" {
		key.Status.Phase = authv1alpha1.PhasePending
		r.setCondition(key, authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting, "The key is being minted")
	}
	key.Status.ObservedGeneration = key.Generation
	if equality.Semantic.DeepEqual(original.Status, key.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, key, client.MergeFrom(original)); err != nil {
		return client.IgnoreNotFound(err)
	}
	return nil
}

// getRecord returns the key's record, or nil when it has none. A miss in the
// cache is confirmed against the API server, because minting on a stale miss
// would deliver a second key.
func (r *ApiKeyReconciler) getRecord(ctx context.Context, key *authv1alpha1.ApiKey) (*authv1alpha1.ApiKeyRecord, error) {
	record := &authv1alpha1.ApiKeyRecord{}
	name := types.NamespacedName{Name: recordName(key)}
	err := r.Client.Get(ctx, name, record)
	if apierrors.IsNotFound(err) {
		err = r.APIReader.Get(ctx, name, record)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading record %s: %w", name.Name, err)
	}
	return record, nil
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

func (r *ApiKeyReconciler) secretCheckInterval() time.Duration {
	if r.SecretCheckInterval > 0 {
		return r.SecretCheckInterval
	}
	return DefaultSecretCheckInterval
}

// recordName is the name of an ApiKey's record: its UID, so that the API
// server itself refuses a second record for one ApiKey.
func recordName(key *authv1alpha1.ApiKey) string {
	return string(key.UID)
}

// SetupWithManager registers the controller. Only spec changes and deletion
// trigger a pass, so the controller's own status writes and label edits by
// others never make it loop.
func (r *ApiKeyReconciler) SetupWithManager(mgr ctrl.Manager, maxConcurrent int) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&authv1alpha1.ApiKey{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{},
			deletionPredicate(),
		))).
		WithOptions(controller.Options{MaxConcurrentReconciles: maxConcurrent}).
		Named("apikey").
		Complete(r)
}

// deletionPredicate passes updates that start an object's deletion.
func deletionPredicate() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectOld.GetDeletionTimestamp().IsZero() && !e.ObjectNew.GetDeletionTimestamp().IsZero()
		},
	}
}
