package controller

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
// are the cached record's own.
type RecordsByKey struct {
	names informers.Names[string]
}

// WatchRecordsByKey returns the index, fed by the cache's record informer.
func WatchRecordsByKey(ctx context.Context, c cache.Informers) (*RecordsByKey, error) {
	inf, err := c.GetInformer(ctx, &authv1alpha1.ApiKeyRecord{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, err
	}
	x := &RecordsByKey{}
	// An update adds nothing new: spec.keyUID is immutable.
	_, err = inf.AddEventHandler(informers.Handle(
		func(r *authv1alpha1.ApiKeyRecord) { x.names.Add(r.Spec.KeyUID, r.Name) },
		func(r *authv1alpha1.ApiKeyRecord) { x.names.Remove(r.Spec.KeyUID, r.Name) }))
	return x, err
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
