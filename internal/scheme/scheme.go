// Package scheme builds the runtime scheme of the kinds Latchkey uses:
// Kubernetes' built-in kinds and auth.latchkey.dev/v1alpha1's ApiKey,
// ApiKeyRecord, Usage and UsageLedger.
package scheme

import (
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// New returns a scheme with Kubernetes' built-in kinds and Latchkey's.
func New() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(authv1alpha1.AddToScheme(s))
	return s
}
