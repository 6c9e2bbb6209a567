package controller

import (
	"context"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/informers"
)

// IndexRecordKeyUID is the selectable field of the CRD that finds the
// records of an ApiKey by its UID at the API server. The manager's cache
// finds them through RecordsByKey instead.
const IndexRecordKeyUID = "spec.keyUID"

// IndexRecordTenant finds the records of a tenant: both a cache index and a
// selectable field of the CRD.
const IndexRecordTenant = "spec.tenant"

// IndexRecords adds the record index the record controller looks a
// tenant's records up by.
func IndexRecords(ctx context.Context, indexer client.FieldIndexer) error {
	return indexer.IndexField(ctx, &authv1alpha1.ApiKeyRecord{}, IndexRecordTenant, func(o client.Object) []string {
		return []string{o.(*authv1alpha1.ApiKeyRecord).Spec.Tenant}
	})
}

// RecordsByKey finds the cache's records by their ApiKey's UID. A cache
// field index keeps a set and a string per distinct value, so one per
// record here (≈ 300 bytes each); this keeps one map entry whose strings
// are the cached record's own. The zero value is empty; the first
// controller to start on the leader feeds it (watch).
type RecordsByKey struct {
	names  informers.Names[string]
	once   sync.Once
	synced func() bool
	err    error
}

// watch feeds x from the cache's record informer, once for every
// controller that shares x, and returns when x holds what the informer
// held.
func (x *RecordsByKey) watch(ctx context.Context, c cache.Informers) (synced func() bool, err error) {
	x.once.Do(func() {
		var inf cache.Informer
		if inf, x.err = c.GetInformer(ctx, &authv1alpha1.ApiKeyRecord{}, cache.BlockUntilSynced(false)); x.err != nil {
			return
		}
		// An update adds nothing new: spec.keyUID is immutable.
		reg, err := inf.AddEventHandler(informers.Handle(
			func(r *authv1alpha1.ApiKeyRecord) { x.names.Add(r.Spec.KeyUID, r.Name) },
			func(r *authv1alpha1.ApiKeyRecord) { x.names.Remove(r.Spec.KeyUID, r.Name) }))
		x.synced, x.err = func() bool { return reg != nil && reg.HasSynced() }, err
	})
	return x.synced, x.err
}

// onLeader is a source that adds a controller's handlers and indexes to
// the cache's informers when the controller starts, so only on the leader:
// a replica that only serves caches no ApiKey or record (the key index
// has a watch of its own). The controller's workers wait until every
// handler has seen what its informer held.
type onLeader struct {
	start  func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) ([]toolscache.InformerSynced, error)
	synced []toolscache.InformerSynced
}

func (s *onLeader) Start(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	var err error
	s.synced, err = s.start(ctx, q)
	return err
}

func (s *onLeader) WaitForSync(ctx context.Context) error {
	if !toolscache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return fmt.Errorf("waiting for the leader's handlers to sync: %w", ctx.Err())
	}
	return nil
}

// recordsOfKey returns the records of the ApiKey with uid: read by name
// from c (the manager's cache) when there is an index, else listed through
// c by the selectable field (a client of the API server, as in tests).
func recordsOfKey(ctx context.Context, c client.Reader, x *RecordsByKey, uid types.UID) ([]authv1alpha1.ApiKeyRecord, error) {
	var list authv1alpha1.ApiKeyRecordList
	if x == nil {
		err := c.List(ctx, &list, client.MatchingFields{IndexRecordKeyUID: string(uid)})
		return list.Items, err
	}
	for _, name := range x.names.Of(string(uid)) {
		var rec authv1alpha1.ApiKeyRecord
		err := c.Get(ctx, types.NamespacedName{Name: name}, &rec)
		switch {
		case apierrors.IsNotFound(err):
			// Deleted between the index and the read.
		case err != nil:
			return nil, err
		default:
			list.Items = append(list.Items, rec)
		}
	}
	return list.Items, nil
}
