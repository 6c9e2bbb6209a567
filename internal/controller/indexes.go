package controller

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// IndexRecordKeyUID finds the records of an ApiKey by its UID. It is both
// a cache index and a selectable field of the CRD, so the same selector
// works against the cache and, to confirm a miss, the API server.
const IndexRecordKeyUID = "spec.keyUID"

// IndexRecordTenant finds the records of a tenant, the same way.
const IndexRecordTenant = "spec.tenant"

// IndexRecords adds the record indexes the controllers look records up by.
// The ApiKey controller's setup calls it; the record controller, set up in
// the same manager, relies on it.
func IndexRecords(ctx context.Context, indexer client.FieldIndexer) error {
	if err := indexer.IndexField(ctx, &authv1alpha1.ApiKeyRecord{}, IndexRecordKeyUID, func(o client.Object) []string {
		return []string{o.(*authv1alpha1.ApiKeyRecord).Spec.KeyUID}
	}); err != nil {
		return err
	}
	return indexer.IndexField(ctx, &authv1alpha1.ApiKeyRecord{}, IndexRecordTenant, func(o client.Object) []string {
		return []string{o.(*authv1alpha1.ApiKeyRecord).Spec.Tenant}
	})
}
