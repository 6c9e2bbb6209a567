package controller

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
// at, at most. Latchkey may not watch Secrets (that would cache every Secret
// in the cluster), so a deleted Secret is noticed on this schedule; with
// more keys than the budget of checks covers in it (interval × checks per
// second: 3,000 at the defaults), about every keys / checks per second.
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
	// SecretCheckInterval is how often an Active key's Secret is checked at
	// most; 0 means DefaultSecretCheckInterval.
	SecretCheckInterval time.Duration
	// SecretChecksPerSecond bounds the Secret reads of all periodic checks
	// together (see secretChecks); 0 means DefaultSecretChecksPerSecond.
	SecretChecksPerSecond float64
	// ServiceAccount is the manager's, namespace:name, for the command that
	// grants it a namespace's Secrets; empty means DefaultServiceAccount.
	ServiceAccount string

	checksOnce sync.Once
	checks     *secretChecks
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

// Reconcile brings one ApiKey's record, Secret and status in line with its
// spec: its phases act and gather an observation, computeStatus decides the
// status from it, and one write records it.
func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := &authv1alpha1.ApiKey{}
	if err := r.Client.Get(ctx, req.NamespacedName, key); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !key.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, key)
	}
	if !controllerutil.ContainsFinalizer(key, authv1alpha1.Finalizer) {
		base := key.DeepCopy()
		controllerutil.AddFinalizer(key, authv1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	o, err := r.reconcileNormal(ctx, key)
	if err != nil {
		// Status stays what the last pass that succeeded wrote, with the
		// generation it saw: what this pass half-saw is no status.
		return ctrl.Result{}, err
	}
	status, next := computeStatus(o)
	status.ObservedGeneration = key.Generation
	return ctrl.Result{RequeueAfter: r.secretChecks().requeueAfter(next)}, r.patchStatus(ctx, key, status)
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

// reconcileNormal revokes, mints or checks delivery, and keeps the record's
// expiry, and returns what it observed.
func (r *ApiKeyReconciler) reconcileNormal(ctx context.Context, key *authv1alpha1.ApiKey) (observation, error) {
	checks := r.secretChecks()
	o := observation{key: key, now: r.Clock.Now(), secretCheckInterval: checks.interval, serviceAccount: r.ServiceAccount}
	records, err := r.keyRecords(ctx, key)
	if err != nil {
		return o, err
	}
	record, pending := splitPending(records)
	o.record = record
	if key.Spec.Revoked {
		return o, r.revokeRecords(ctx, records, authv1alpha1.RevocationRevoked)
	}

	// A pass no change caused (its status is of this generation: a requeue,
	// a resync) reads the Secret only within the shared budget; a create or
	// a spec edit reads it at once.
	if key.Status.ObservedGeneration == key.Generation && !checks.take() {
		o.secret = secretDeferred
		if record == nil {
			return o, nil
		}
		return o, r.syncRecordExpiry(ctx, key, record)
	}
	if record == nil {
		o.record, o.secret, err = r.ensureKey(ctx, key, pending)
	} else if err = r.deletePending(ctx, pending); err == nil {
		// Leftovers of a pass that died are deleted: their keys never
		// authenticated. Then: is the key still where it was delivered?
		o.secret, err = r.checkSecret(ctx, key, record)
	}
	if accessDenied(err) {
		o.secret, err = secretAccessDenied, nil
	}
	if err != nil || o.record == nil {
		return o, err
	}
	return o, r.syncRecordExpiry(ctx, key, o.record)
}

// accessDenied tells RBAC's refusals from other 403s, such as an admission
// webhook's: the authorizer's message says who "cannot" do what.
func accessDenied(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), " cannot ")
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

// patchStatus writes the computed status and the Events its changes call for.
func (r *ApiKeyReconciler) patchStatus(ctx context.Context, key *authv1alpha1.ApiKey, status authv1alpha1.ApiKeyStatus) error {
	if equality.Semantic.DeepEqual(key.Status, status) {
		return nil
	}
	for _, e := range statusEvents(&key.Status, &status) {
		r.Recorder.Eventf(key, nil, e.eventType, e.reason, e.action, "%s", e.note)
	}
	base := key.DeepCopy()
	key.Status = status
	return client.IgnoreNotFound(r.Client.Status().Patch(ctx, key, client.MergeFrom(base)))
}

// secretChecks is the budget of this reconciler's periodic Secret checks,
// made on first use: tests reconcile without SetupWithManager.
func (r *ApiKeyReconciler) secretChecks() *secretChecks {
	r.checksOnce.Do(func() {
		r.checks = newSecretChecks(r.Clock, r.SecretCheckInterval, r.SecretChecksPerSecond)
	})
	return r.checks
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
