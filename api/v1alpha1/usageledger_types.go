package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// UsageLedger is the exact, durable record behind a tenant's Usage: counters
// per UTC day and the bounded state that makes reports apply exactly once.
// A report is acknowledged only after it is written here, in one
// optimistic-concurrency update; the Usage controller summarises it.
// Written only by the operator; named default, one per tenant namespace.
// +kubebuilder:object:root=true
// +kubebuilder:resource:categories=latchkey-internal
type UsageLedger struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the ledger's content.
	// +optional
	Spec UsageLedgerSpec `json:"spec,omitempty"`
}

// UsageLedgerSpec is the ledger's content. Every list is bounded, so the
// object stays far below the API server's size limit at any volume.
type UsageLedgerSpec struct {
	// days are the counters of the last 90 UTC days, oldest first.
	// +optional
	// +listType=map
	// +listMapKey=date
	// +kubebuilder:validation:MaxItems=91
	Days []LedgerDay `json:"days,omitempty"`
	// inFlight are the executions reported running or paused and not yet finished.
	// +optional
	// +listType=map
	// +listMapKey=id
	// +kubebuilder:validation:MaxItems=5000
	InFlight []LedgerExecution `json:"inFlight,omitempty"`
	// finished are the hashed ids of the executions most recently seen
	// finishing, newest last: a repeated terminal report of one of them is
	// ignored, and a report moving one back to running is refused.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=5000
	Finished []string `json:"finished,omitempty"`
	// batches are the idempotency keys (hashed) of the batches applied in
	// the last 24 hours, newest last: a retried batch is not applied twice.
	// +optional
	// +listType=map
	// +listMapKey=key
	// +kubebuilder:validation:MaxItems=2000
	Batches []LedgerBatch `json:"batches,omitempty"`
}

// LedgerDay is the counters of one UTC day, by the day executions started.
type LedgerDay struct {
	// date is the UTC day, as YYYY-MM-DD.
	// +required
	// +kubebuilder:validation:MaxLength=10
	Date string `json:"date"`
	// total is the executions started this day.
	// +optional
	Total int64 `json:"total,omitempty"`
	// succeeded is the executions started this day that succeeded.
	// +optional
	Succeeded int64 `json:"succeeded,omitempty"`
	// failed is the executions started this day that failed, were cancelled
	// or ended compensating.
	// +optional
	Failed int64 `json:"failed,omitempty"`
	// durationMillis is the summed duration of those completed executions.
	// +optional
	DurationMillis int64 `json:"durationMillis,omitempty"`
	// verificationsAllowed is the tenant's successful verifications this day.
	// +optional
	VerificationsAllowed int64 `json:"verificationsAllowed,omitempty"`
	// verificationsDenied is the tenant's refused verifications this day.
	// +optional
	VerificationsDenied int64 `json:"verificationsDenied,omitempty"`
}

// LedgerExecution is an execution in flight.
type LedgerExecution struct {
	// id is the hashed execution id.
	// +required
	// +kubebuilder:validation:MaxLength=32
	ID string `json:"id"`
	// state is running or paused.
	// +required
	// +kubebuilder:validation:MaxLength=16
	State string `json:"state"`
	// startedAtMillis is when it started, in Unix milliseconds.
	// +required
	StartedAtMillis int64 `json:"startedAtMillis"`
}

// LedgerBatch is an applied batch.
type LedgerBatch struct {
	// key is the hashed idempotency key.
	// +required
	// +kubebuilder:validation:MaxLength=32
	Key string `json:"key"`
	// appliedAt is when it was applied, in Unix seconds.
	// +required
	AppliedAt int64 `json:"appliedAt"`
}

// UsageLedgerList is a list of UsageLedgers.
// +kubebuilder:object:root=true
type UsageLedgerList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the UsageLedgers.
	Items []UsageLedger `json:"items"`
}
