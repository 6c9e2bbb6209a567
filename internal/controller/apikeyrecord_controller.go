package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
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
	// Client writes; APIReader reads the record a pass is for, and its
	// ApiKey when the index does not hold it.
	Client client.Client
	// Index is the key index: its watches bring the passes
	// (SetupWithManager), and it tells which keys exist and which records
	// a tenant keeps of deleted keys.
	Index     *verifier.Verifier
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
	if err := r.APIReader.Get(ctx, req.NamespacedName, record); err != nil {
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
// keys past MaxDeletedPerTenant, as the index holds them. A record revoked
// for Deleted or Orphaned belongs to a key that is gone: its ApiKey cannot
// come back with that UID.
func (r *ApiKeyRecordReconciler) trimTenant(ctx context.Context, tenant string) error {
	limit := r.MaxDeletedPerTenant
	if limit <= 0 {
		limit = DefaultMaxDeletedRecordsPerTenant
	}
	gone := r.Index.GoneRecords(tenant)
	if len(gone) <= limit {
		return nil
	}
	slices.SortFunc(gone, func(a, b verifier.GoneRecord) int {
		if c := a.RevokedAt.Compare(b.RevokedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, g := range gone[:len(gone)-limit] {
		rec := &authv1alpha1.ApiKeyRecord{}
		if err := r.APIReader.Get(ctx, types.NamespacedName{Name: g.Name}, rec); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return err
		}
		if err := r.delete(ctx, rec, "Deleted the record of a deleted key: its namespace keeps at most the newest"); err != nil {
			return err
		}
	}
	return nil
}

// keyExists reports whether the record's own ApiKey (same UID) still exists.
// A miss in the index is confirmed against the API server before a record
// is revoked or deleted on its strength.
func (r *ApiKeyRecordReconciler) keyExists(ctx context.Context, record *authv1alpha1.ApiKeyRecord) (bool, error) {
	if r.Index.HasKey(types.UID(record.Spec.KeyUID)) {
		return true, nil
	}
	key := &authv1alpha1.ApiKey{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: record.Spec.Tenant, Name: record.Spec.KeyName}, key)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return string(key.UID) == record.Spec.KeyUID, nil
}

// SetupWithManager registers the controller, fed by the key index's
// watches: a record whose ApiKey the index does not hold, the records of
// an ApiKey deleted, and, when it starts, every record of a key gone.
func (r *ApiKeyRecordReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Index == nil {
		return errors.New("the record controller needs the key index (Index)")
	}
	events := orphanEvents{newIndexSource(r.Index, func(_ context.Context, s *indexSource) error {
		orphanEvents{s}.addOrphans()
		return nil
	})}
	r.Index.FeedRecordsTo(events)
	r.Index.FeedKeysTo(deletedKeyEvents{events})
	return ctrl.NewControllerManagedBy(mgr).
		Named("apikeyrecord").
		WithOptions(controller.Options{CacheSyncTimeout: SyncTimeout, NewQueue: newCompactingQueue(mgr.GetLogger())}).
		WatchesRawSource(events.indexSource).
		Complete(r)
}
