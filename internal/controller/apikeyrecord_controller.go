package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
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

// DefaultMaxDeletedRecordsPerTenant bounds the records of deleted keys kept
// per namespace. They are cluster-scoped, outside any namespace's quota, and
// held in every replica's memory: without a bound, one user who may create
// and delete ApiKeys could grow them without end within the retention.
const DefaultMaxDeletedRecordsPerTenant = 1000

// ApiKeyRecordReconciler revokes records whose ApiKey vanished without being
// seen going, and deletes revoked records of deleted keys once their
// retention has passed.
type ApiKeyRecordReconciler struct {
	Client client.Client
	// Records finds the cache's records of a key; SetupWithManager makes
	// one when it is nil (the ApiKey controller's can be shared).
	Records   *RecordsByKey
	APIReader client.Reader
	Clock     clock.PassiveClock
	// Retention is how long a revoked record of a deleted key is kept.
	Retention time.Duration
	// MaxDeletedPerTenant is how many records of deleted keys a namespace
	// keeps at most; past it the longest revoked go first. 0 means
	// DefaultMaxDeletedRecordsPerTenant.
	MaxDeletedPerTenant int
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
	if record.Spec.Pending {
		// Its key never authenticated, and now never will: nothing to audit.
		return ctrl.Result{}, r.delete(ctx, record, "Deleted the pending record of a deleted key")
	}
	if !record.Spec.Revoked {
		return ctrl.Result{}, revokeRecord(ctx, r.Client, r.Clock, record, authv1alpha1.RevocationOrphaned)
	}
	if err := r.trimTenant(ctx, record.Spec.Tenant); err != nil {
		return ctrl.Result{}, err
	}

	expiry := record.Spec.RevokedAt.Add(r.Retention)
	if wait := expiry.Sub(r.Clock.Now()); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	return ctrl.Result{}, r.delete(ctx, record, "Deleted record past its retention")
}

func (r *ApiKeyRecordReconciler) delete(ctx context.Context, record *authv1alpha1.ApiKeyRecord, msg string) error {
	if err := r.Client.Delete(ctx, record, client.Preconditions{UID: &record.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting record %s: %w", record.Name, err)
	}
	log.FromContext(ctx).Info(msg, "record", klog.KObj(record), "tenant", record.Spec.Tenant, "keyName", record.Spec.KeyName)
	return nil
}

// trimTenant deletes the longest-revoked records of the tenant's deleted
// keys past MaxDeletedPerTenant. A record revoked for Deleted or Orphaned
// belongs to a key that is gone: its ApiKey cannot come back with that UID.
func (r *ApiKeyRecordReconciler) trimTenant(ctx context.Context, tenant string) error {
	limit := r.MaxDeletedPerTenant
	if limit <= 0 {
		limit = DefaultMaxDeletedRecordsPerTenant
	}
	var list authv1alpha1.ApiKeyRecordList
	if err := r.Client.List(ctx, &list, client.MatchingFields{IndexRecordTenant: tenant}); err != nil {
		return fmt.Errorf("listing the records of tenant %s: %w", tenant, err)
	}
	gone := slices.DeleteFunc(list.Items, func(rec authv1alpha1.ApiKeyRecord) bool {
		reason := rec.Spec.RevocationReason
		return !rec.Spec.Revoked || rec.Spec.RevokedAt == nil ||
			(reason != authv1alpha1.RevocationDeleted && reason != authv1alpha1.RevocationOrphaned)
	})
	if len(gone) <= limit {
		return nil
	}
	slices.SortFunc(gone, func(a, b authv1alpha1.ApiKeyRecord) int {
		if c := a.Spec.RevokedAt.Compare(b.Spec.RevokedAt.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := range gone[:len(gone)-limit] {
		if err := r.delete(ctx, &gone[i], "Deleted the record of a deleted key: its namespace keeps at most the newest"); err != nil {
			return err
		}
	}
	return nil
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
	if r.Records == nil {
		r.Records = &RecordsByKey{}
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&authv1alpha1.ApiKeyRecord{}).
		WatchesRawSource(&onLeader{start: func(ctx context.Context, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) ([]toolscache.InformerSynced, error) {
			if err := IndexRecords(ctx, mgr.GetFieldIndexer()); err != nil {
				return nil, err
			}
			synced, err := r.Records.watch(ctx, mgr.GetCache())
			return []toolscache.InformerSynced{synced}, err
		}}).
		// A deleted ApiKey's record must be looked at again once the key is gone.
		// Records are named by hash: they are found by the key's UID.
		Watches(&authv1alpha1.ApiKey{}, handler.EnqueueRequestsFromMapFunc(
			func(ctx context.Context, key client.Object) []reconcile.Request {
				list, err := recordsOfKey(ctx, r.Client, r.Records, key.GetUID())
				if err != nil {
					log.FromContext(ctx).Error(err, "Listing the records of a deleted key", "apiKey", klog.KObj(key))
					return nil
				}
				reqs := make([]reconcile.Request, 0, len(list))
				for _, rec := range list {
					reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: rec.Name}})
				}
				return reqs
			}), builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
			UpdateFunc: func(event.UpdateEvent) bool { return false },
		})).
		Named("apikeyrecord").
		Complete(r)
}
