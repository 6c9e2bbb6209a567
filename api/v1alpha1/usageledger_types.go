package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A tenant's ledger is several UsageLedgers, each bounded by construction
// so that none grows towards the API server's 1.5 MiB request limit: one
// state object that every report is applied to in a single
// optimistic-concurrency write (so a batch applies whole or not at all), and
// segments of idempotency keys the state object no longer holds, kept two
// UTC days. Sets are fixed-width binary fields rather than lists: one field
// each in managedFields however many entries, and a third of the bytes.
const (
	// UsageLedgerStateName is the state object's name in a tenant namespace.
	UsageLedgerStateName = "default"
	// LabelLedger says which part of a ledger an object is.
	LabelLedger = "auth.latchkey.dev/ledger"
	// LabelLedgerDate is the UTC day a batch-key segment remembers.
	LabelLedgerDate = "auth.latchkey.dev/ledger-date"
	// LedgerPartState and LedgerPartBatchKeys are the values of LabelLedger.
	LedgerPartState     = "state"
	LedgerPartBatchKeys = "batch-keys"
)

// UsageLedger is part of the exact, durable record behind a tenant's Usage.
// A report is acknowledged only after it is written here; the Usage
// controller summarises the state object. Written only by the operator.
// +kubebuilder:object:root=true
// +kubebuilder:resource:categories=latchkey-internal
type UsageLedger struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the ledger's content: state in the object named default,
	// batchKeys in the others.
	// +optional
	Spec UsageLedgerSpec `json:"spec,omitempty"`
}

// UsageLedgerSpec is one part of a ledger.
// +kubebuilder:validation:XValidation:rule="!(has(self.state) && has(self.batchKeys))",message="a ledger object holds state or batchKeys, not both"
type UsageLedgerSpec struct {
	// state is the tenant's counters and the memory that makes reports
	// apply exactly once.
	// +optional
	State *LedgerState `json:"state,omitempty"`
	// batchKeys is a segment of idempotency keys moved out of state.
	// +optional
	BatchKeys *LedgerBatchKeys `json:"batchKeys,omitempty"`
}

// LedgerState is what a report changes. Its largest possible encoding is
// about 300 kB: 91 days, 5,000 executions in flight, 5,000 finished and
// 2,000 recent batch keys.
type LedgerState struct {
	// days are the counters of the last 90 UTC days, oldest first. Atomic:
	// managedFields names the list once, not each day.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=91
	Days []LedgerDay `json:"days,omitempty"`
	// inFlight are the executions reported running or paused and not yet
	// finished, 25 bytes each: hashed id (12), hashed name of the reporting
	// key (4), start in Unix milliseconds (8, big-endian), state (1: 1
	// running, 2 paused). At most 5,000.
	// +optional
	// +kubebuilder:validation:MaxLength=166668
	InFlight []byte `json:"inFlight,omitempty"`
	// finished are the hashed ids (12 bytes each) of the 5,000 executions
	// most recently seen finishing, oldest first: a repeated terminal report
	// of one is ignored, and one reported running again is refused.
	// +optional
	// +kubebuilder:validation:MaxLength=80000
	Finished []byte `json:"finished,omitempty"`
	// recentBatches are the hashed idempotency keys (12 bytes each) of the
	// batches applied since keys were last moved to a segment, at most 2,000.
	// +optional
	// +kubebuilder:validation:MaxLength=32000
	RecentBatches []byte `json:"recentBatches,omitempty"`
	// moves counts the times recentBatches were moved to segments. A reader
	// that has read the segments after seeing a count knows every key moved
	// up to it; keys move only after they are in a segment.
	// +optional
	Moves int64 `json:"moves,omitempty"`
	// batchDate is the UTC day batches counts, as YYYY-MM-DD.
	// +optional
	// +kubebuilder:validation:MaxLength=10
	BatchDate string `json:"batchDate,omitempty"`
	// batches is how many batches were applied on batchDate; a day holds
	// at most 100,000.
	// +optional
	Batches int32 `json:"batches,omitempty"`
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

// LedgerBatchKeys is a segment of the idempotency keys of batches applied,
// moved out of the state object on date. Segments are named
// batch-keys-<slot>-<n>, slot being the day's number modulo 3: a slot is
// reused, overwritten, once its keys are older than the two days any
// lookup reads, so a tenant has at most 3 days' segments and none to delete.
type LedgerBatchKeys struct {
	// date is the UTC day the keys were moved here, as YYYY-MM-DD.
	// +required
	// +kubebuilder:validation:MaxLength=10
	Date string `json:"date"`
	// keys are hashed idempotency keys, 12 bytes each, sorted; at most 10,000.
	// +optional
	// +kubebuilder:validation:MaxLength=160000
	Keys []byte `json:"keys,omitempty"`
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
