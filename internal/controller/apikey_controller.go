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
)

// Event reasons of an ApiKey.
const (
	EventKeyMinted      = "KeyMinted"
	EventSecretNotOwned = "SecretNotOwned"
	EventSecretMissing  = "SecretMissing"
	EventSecretChanged  = "SecretChanged"
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
	records, err := r.keyRecords(ctx, key)
	if err != nil {
		return err
	}
	if err := r.revokeRecords(ctx, records, authv1alpha1.RevocationDeleted); err != nil {
		return err
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
	records, err := r.keyRecords(ctx, key)
	if err != nil {
		return ctrl.Result{}, err
	}

	if key.Spec.Revoked {
		return ctrl.Result{}, r.reconcileRevoked(ctx, key, records)
	}

	record, pending := splitPending(records)
	if record == nil {
		record, err = r.ensureKey(ctx, key, pending)
		if accessDenied(err) {
			r.setSecretAccessDenied(key, true)
			return ctrl.Result{RequeueAfter: min(authv1alpha1.KeyDeliveryRetry, r.secretCheckInterval())}, nil
		}
		if err != nil || record == nil {
			return ctrl.Result{RequeueAfter: r.secretCheckInterval()}, err
		}
	} else {
		// Leftovers of a pass that died: their keys never authenticated.
		if err := r.deletePending(ctx, pending); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.checkSecret(ctx, key, record); accessDenied(err) {
			r.setSecretAccessDenied(key, false)
		} else if err != nil {
			return ctrl.Result{}, err
		}
	}

	if err := r.syncRecordExpiry(ctx, key, record); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.setLiveStatus(key, record)}, nil
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

func (r *ApiKeyReconciler) reconcileRevoked(ctx context.Context, key *authv1alpha1.ApiKey, records []authv1alpha1.ApiKeyRecord) error {
	if err := r.revokeRecords(ctx, records, authv1alpha1.RevocationRevoked); err != nil {
		return err
	}
	if record, _ := splitPending(records); record != nil {
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

// revokeRecords revokes every delivered record of a key and deletes the
// pending ones, whose keys never authenticated.
func (r *ApiKeyReconciler) revokeRecords(ctx context.Context, records []authv1alpha1.ApiKeyRecord, reason string) error {
	for i := range records {
		if records[i].Spec.Pending {
			continue
		}
		if err := revokeRecord(ctx, r.Client, r.Clock, &records[i], reason); err != nil {
			return err
		}
	}
	return r.deletePending(ctx, records)
}

// revokeRecord marks a record revoked; it keeps the first reason it is given.
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

// setSecretNotOwned fails a key whose Secret name is taken. The message
// says no more than the phase already does: that the name is not available
// to this ApiKey. Its author may not be allowed to read Secrets, and learns
// nothing of the one in the way.
func (r *ApiKeyReconciler) setSecretNotOwned(key *authv1alpha1.ApiKey) {
	msg := fmt.Sprintf("Latchkey cannot deliver the key to Secret %q: that name is not available to this ApiKey, and Latchkey only ever writes a Secret it creates itself. Choose another spec.secretName (in a new ApiKey)", key.SecretName())
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

func (r *ApiKeyReconciler) secretCheckInterval() time.Duration {
	if r.SecretCheckInterval > 0 {
		return r.SecretCheckInterval
	}
	return DefaultSecretCheckInterval
}

// SetupWithManager registers the controller. Only spec changes and deletion
// trigger a pass, so the controller's own status writes and label edits by
// others never make it loop.
func (r *ApiKeyReconciler) SetupWithManager(mgr ctrl.Manager, maxConcurrent int) error {
	if err := IndexRecords(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
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
