package controller

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// DefaultRecordRetention is how long the record of a deleted key is kept
// for audit.
const DefaultRecordRetention = 90 * 24 * time.Hour

// ApiKeyRecordReconciler revokes records whose ApiKey vanished without being
// seen going, and deletes revoked records of deleted keys once their
// retention has passed.
type ApiKeyRecordReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Clock     clock.PassiveClock
	// Retention is how long a revoked record of a deleted key is kept.
	Retention time.Duration
}

// Reconcile handles one record.
func (r *ApiKeyRecordReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	record := &authv1alpha1.ApiKeyRecord{}
	if err := r.Client.Get(ctx, req.NamespacedName, record); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	exists, err := r.keyExists(ctx, record)
	if err != nil {
		return ctrl.Result{}, err
	}
	if exists {
		// The ApiKey is the audit trail while it exists; its controller owns the record.
		return ctrl.Result{}, nil
	}
	if !record.Spec.Revoked {
		return ctrl.Result{}, revokeRecord(ctx, r.Client, r.Clock, record, authv1alpha1.RevocationOrphaned)
	}

	expiry := record.Spec.RevokedAt.Add(r.Retention)
	if wait := expiry.Sub(r.Clock.Now()); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	if err := r.Client.Delete(ctx, record, client.Preconditions{UID: &record.UID}); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("deleting record past retention: %w", err)
	}
	log.FromContext(ctx).Info("Deleted record past its retention", "tenant", record.Spec.Tenant, "keyName", record.Spec.KeyName)
	return ctrl.Result{}, nil
}

// keyExists reports whether the record's own ApiKey (same UID) still exists.
// A miss in the cache is confirmed against the API server before a record is
// revoked or deleted on its strength.
func (r *ApiKeyRecordReconciler) keyExists(ctx context.Context, record *authv1alpha1.ApiKeyRecord) (bool, error) {
	name := types.NamespacedName{Namespace: record.Spec.Tenant, Name: record.Spec.KeyName}
	key := &authv1alpha1.ApiKey{}
	err := r.Client.Get(ctx, name, key)
	if err == nil && string(key.UID) == record.Spec.KeyUID {
		return true, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return false, err
	}
	err = r.APIReader.Get(ctx, name, key)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return string(key.UID) == record.Spec.KeyUID, nil
}

// SetupWithManager registers the controller.
func (r *ApiKeyRecordReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&authv1alpha1.ApiKeyRecord{}).
		// A deleted ApiKey's record must be looked at again once the key is gone.
		Watches(&authv1alpha1.ApiKey{}, handler.EnqueueRequestsFromMapFunc(
			func(_ context.Context, key client.Object) []reconcile.Request {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: string(key.GetUID())}}}
			}), builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
			UpdateFunc: func(event.UpdateEvent) bool { return false },
		})).
		Named("apikeyrecord").
		Complete(r)
}
