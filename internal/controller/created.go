package controller

import (
	"k8s.io/apimachinery/pkg/types"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/informers"
)

// createdRecords remembers, by ApiKey UID, the records this process created
// that the key index has not shown yet (the expectations of Kubernetes' own
// controllers). A pass that follows its own mint before the watch does
// reads those by name, instead of listing every record in the cluster to
// confirm that the index's miss is real: that list, on every new key, made
// minting N keys cost the API server O(N²).
type createdRecords struct {
	names informers.Names[types.UID]
}

func (c *createdRecords) add(uid types.UID, name string) { c.names.Add(uid, name) }

// unseen returns the records created for uid that cached does not hold,
// and forgets those it does.
func (c *createdRecords) unseen(uid types.UID, cached []authv1alpha1.ApiKeyRecord) []string {
	for i := range cached {
		c.names.Remove(uid, cached[i].Name)
	}
	return c.names.Of(uid)
}

// forget drops a record the index shows, or the API server no longer has.
func (c *createdRecords) forget(uid types.UID, name string) { c.names.Remove(uid, name) }
