// Package v1alpha1 contains the auth.latchkey.dev/v1alpha1 API: ApiKey, the
// key a user declares; ApiKeyRecord, the hashed record the operator keeps of
// each minted key; Usage, a tenant's daily summary of executions and
// verifications; and UsageLedger, the durable record that summary is made from.
// +kubebuilder:object:generate=true
// +groupName=auth.latchkey.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "auth.latchkey.dev", Version: "v1alpha1"}

	// SchemeBuilder registers this package's kinds with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds this package's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&ApiKey{}, &ApiKeyList{},
		&ApiKeyRecord{}, &ApiKeyRecordList{},
		&Usage{}, &UsageList{},
		&UsageLedger{}, &UsageLedgerList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
