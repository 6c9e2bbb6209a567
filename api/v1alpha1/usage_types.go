package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// UsageName is the name of the one Usage Latchkey keeps in each tenant namespace.
const UsageName = "default"

// Condition types and reasons of a Usage.
const (
	// ConditionUpToDate is True when status reflects every acknowledged report.
	ConditionUpToDate = "UpToDate"
	ReasonSummarised  = "Summarised"
)

// UsageSpec is how the tenant wants its usage summarised.
type UsageSpec struct {
	// windowDays is how many UTC days, today included, the summary covers.
	// +optional
	// +default=30
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=90
	WindowDays int32 `json:"windowDays,omitempty"`
}

// UsageDay is one UTC day of the window.
type UsageDay struct {
	// date is the UTC day, as YYYY-MM-DD.
	// +required
	// +kubebuilder:validation:Pattern=`^\d{4}-\d{2}-\d{2}$`
	// +kubebuilder:validation:MaxLength=10
	Date string `json:"date"`
	// total is the executions started this day, in flight or not.
	// +required
	Total int64 `json:"total"`
	// succeeded is the executions started this day that succeeded.
	// +required
	Succeeded int64 `json:"succeeded"`
	// failed is the executions started this day that ended failed,
	// cancelled or compensating.
	// +required
	Failed int64 `json:"failed"`
	// verificationsAllowed is the tenant's keys' successful verifications this day.
	// +required
	VerificationsAllowed int64 `json:"verificationsAllowed"`
	// verificationsDenied is the tenant's keys' refused verifications this
	// day (revoked or expired keys; unknown keys belong to no tenant).
	// +required
	VerificationsDenied int64 `json:"verificationsDenied"`
}

// UsageKeys counts the tenant's ApiKeys by state.
type UsageKeys struct {
	// active is the keys that authenticate requests.
	// +required
	Active int32 `json:"active"`
	// revoked is the revoked keys still kept.
	// +required
	Revoked int32 `json:"revoked"`
	// expired is the keys past their expiry.
	// +required
	Expired int32 `json:"expired"`
}

// UsageStatus summarises the window. Its size depends on windowDays only.
type UsageStatus struct {
	// executions is the executions started in the window.
	// +optional
	Executions int64 `json:"executions"`
	// succeeded is the executions in the window that succeeded.
	// +optional
	Succeeded int64 `json:"succeeded"`
	// failed is the executions in the window that ended failed, cancelled or compensating.
	// +optional
	Failed int64 `json:"failed"`
	// inFlight is the executions in the window still running or paused.
	// +optional
	InFlight int64 `json:"inFlight"`
	// successRate is the percent of completed executions that succeeded, to
	// one decimal; unset when none completed.
	// +optional
	// +kubebuilder:validation:MaxLength=8
	SuccessRate string `json:"successRate,omitempty"`
	// averageDurationSeconds is the mean duration of completed executions,
	// in seconds to three decimals; in-flight executions never count.
	// +optional
	// +kubebuilder:validation:MaxLength=24
	AverageDurationSeconds string `json:"averageDurationSeconds,omitempty"`
	// days has one entry per UTC day of the window, oldest first.
	// +optional
	// +listType=map
	// +listMapKey=date
	// +kubebuilder:validation:MaxItems=90
	Days []UsageDay `json:"days,omitempty"`
	// keys counts the tenant's ApiKeys.
	// +optional
	Keys UsageKeys `json:"keys,omitzero"`
	// windowStart is the start of the window's first day.
	// +optional
	WindowStart *metav1.Time `json:"windowStart,omitempty"`
	// updatedAt is when the summary was last computed.
	// +optional
	UpdatedAt *metav1.Time `json:"updatedAt,omitempty"`
	// conditions are UpToDate.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Usage summarises the executions services reported for the tenant (its
// namespace) and its keys' verifications, per UTC day. Latchkey keeps one,
// named default, in every namespace with an ApiKey.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=latchkey
// +kubebuilder:printcolumn:name="Executions",type=integer,JSONPath=`.status.executions`
// +kubebuilder:printcolumn:name="Success Rate",type=string,JSONPath=`.status.successRate`
// +kubebuilder:printcolumn:name="Avg Duration",type=string,JSONPath=`.status.averageDurationSeconds`
// +kubebuilder:printcolumn:name="Active Keys",type=integer,JSONPath=`.status.keys.active`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Usage struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the tenant's settings.
	// +optional
	Spec UsageSpec `json:"spec,omitempty"`
	// status is the summary.
	// +optional
	Status UsageStatus `json:"status,omitempty"`
}

// UsageList is a list of Usages.
// +kubebuilder:object:root=true
type UsageList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the Usages.
	Items []Usage `json:"items"`
}
