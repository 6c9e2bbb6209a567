package controller

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// IndexRecordKeyUID is the selectable field of the CRD that finds the
// records of an ApiKey by its UID at the API server. The manager finds
// them through the key index instead.
const IndexRecordKeyUID = "spec.keyUID"

// recordsOfKey returns the records of the ApiKey with uid, read by name
// through c (the API server) when there is an index, else listed through
// c by the selectable field.
func recordsOfKey(ctx context.Context, c client.Reader, index *verifier.Verifier, uid types.UID) ([]authv1alpha1.ApiKeyRecord, error) {
	var list authv1alpha1.ApiKeyRecordList
	if index == nil {
		err := c.List(ctx, &list, client.MatchingFields{IndexRecordKeyUID: string(uid)})
		return list.Items, err
	}
	for _, name := range index.RecordNames(uid) {
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
