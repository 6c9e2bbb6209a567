// Package v1alpha1 contains the auth.latchkey.dev/v1alpha1 API: ApiKey, the
// key a user declares, and ApiKeyRecord, the hashed record the operator keeps.
// +kubebuilder:object:generate=true
// +groupName=auth.latchkey.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "auth.latchkey.dev", Version: "v1alpha1"}

	// SchemeBuilder registers this package's kinds with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this package's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
