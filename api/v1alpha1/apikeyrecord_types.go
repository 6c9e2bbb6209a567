package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Revocation reasons of an ApiKeyRecord.
const (
	// RevocationRevoked means the user set spec.revoked on the ApiKey.
	RevocationRevoked = "Revoked"
	// RevocationDeleted means the ApiKey was deleted.
	RevocationDeleted = "Deleted"
	// RevocationRotated means a rotation replaced the key and its grace
	// period has ended.
	RevocationRotated = "Rotated"
	// RevocationOrphaned means the ApiKey disappeared without Latchkey seeing
	// its deletion (for example its finalizer was removed by hand).
	RevocationOrphaned = "Orphaned"
)

// ApiKeyRecordSpec is the hashed record of one minted key. It is written
// only by the operator; the API server keeps the hash and tenant immutable,
// revocation one way, and delivery one way: a record that has authenticated
// can never be pending again.
// +kubebuilder:validation:XValidation:rule="!oldSelf.revoked || self.revoked",message="revoked cannot be changed from true to false: a revoked record can never become active again",fieldPath=".revoked",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!self.revoked || has(self.revokedAt)",message="revokedAt is required when revoked is true",fieldPath=".revokedAt",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="!(has(self.pending) && self.pending) || (has(oldSelf.pending) && oldSelf.pending)",message="pending cannot be set again: a delivered key's record stays delivered",fieldPath=".pending",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.validUntil) || (has(self.validUntil) && self.validUntil <= oldSelf.validUntil)",message="validUntil can only move earlier: a replaced key's grace period is never extended",fieldPath=".validUntil",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="has(self.rotation) == has(oldSelf.rotation)",message="rotation is immutable",fieldPath=".rotation",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="has(self.requestedAt) == has(oldSelf.requestedAt)",message="requestedAt is immutable",fieldPath=".requestedAt",reason=FieldValueForbidden
type ApiKeyRecordSpec struct {
	// hash is the lowercase hex SHA-256 of the raw key.
	// +required
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	// +kubebuilder:validation:MinLength=64
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="hash is immutable: a record always describes the key it was minted for",reason=FieldValueForbidden
	Hash string `json:"hash"`

	// tenant is the namespace of the ApiKey; the key authenticates for it only.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="tenant is immutable: a key never moves to another namespace",reason=FieldValueForbidden
	Tenant string `json:"tenant"`

	// keyName is the name of the ApiKey.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="keyName is immutable",reason=FieldValueForbidden
	KeyName string `json:"keyName"`

	// keyUID is the UID of the ApiKey.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="keyUID is immutable",reason=FieldValueForbidden
	KeyUID string `json:"keyUID"`

	// hint is the masked key: its first 8 characters, "…", and its last 4.
	// +required
	// +kubebuilder:validation:MaxLength=32
	Hint string `json:"hint"`

	// format is the key's format, Prefixed or Hex.
	// +required
	Format KeyFormat `json:"format"`

	// expiresAt is the instant after which the key no longer authenticates.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// pending is true from the moment the key's hash is recorded until the
	// raw key is confirmed delivered to its Secret. A pending record never
	// authenticates: its key may exist nowhere but in a minting process
	// that died. It goes from true to false once, never back.
	// +optional
	Pending bool `json:"pending,omitempty"`

	// revoked is true once the key is revoked; it never goes back.
	// +optional
	// +default=false
	Revoked bool `json:"revoked"`

	// revokedAt is when the key was revoked.
	// +optional
	RevokedAt *metav1.Time `json:"revokedAt,omitempty"`

	// revocationReason is why: Revoked, Deleted, Rotated or Orphaned.
	// +optional
	// +kubebuilder:validation:Enum=Revoked;Deleted;Rotated;Orphaned
	RevocationReason string `json:"revocationReason,omitempty"`

	// rotation is the key's rotation number: 0 for an ApiKey's first key,
	// one more for each key a rotation minted. Neither it nor requestedAt
	// may be set, changed or removed once the record exists (the rules on
	// the fields hold changes, those on the spec their presence).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="rotation is immutable",reason=FieldValueForbidden
	Rotation int32 `json:"rotation,omitempty"`

	// requestedAt is the rotation request (the ApiKey's
	// spec.rotation.requestedAt, or the scheduled instant) this key was
	// minted for; unset for a first key.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="requestedAt is immutable",reason=FieldValueForbidden
	RequestedAt *metav1.Time `json:"requestedAt,omitempty"`

	// validUntil is when a key that a rotation replaced stops working: the
	// new key's delivery plus the grace period. It is never extended.
	// +optional
	ValidUntil *metav1.Time `json:"validUntil,omitempty"`
}

// ApiKeyRecordStatus is how the key has been used.
type ApiKeyRecordStatus struct {
	// lastUsedAt is when the key last authenticated a request, written at most
	// once per minute.
	// +optional
	LastUsedAt *metav1.Time `json:"lastUsedAt,omitempty"`
}

// ApiKeyRecord is the operator's hashed record of a minted key: the verifier
// looks keys up by its hash, and it outlives the ApiKey for audit. Its name
// is the hash itself, so the API server refuses a second record of one key
// value, whatever state the first is in: a hash belongs to one record for
// as long as any record of it exists.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=latchkey
// +kubebuilder:selectablefield:JSONPath=`.spec.keyUID`
// +kubebuilder:selectablefield:JSONPath=`.spec.tenant`
// Name and hash are both immutable, so checking at creation is enough; it
// also leaves records from before this rule revocable.
// +kubebuilder:validation:XValidation:rule="oldSelf.hasValue() || self.metadata.name == self.spec.hash",optionalOldSelf=true,message="metadata.name must be spec.hash: one record per key value",reason=FieldValueInvalid
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenant`
// +kubebuilder:printcolumn:name="Key Name",type=string,JSONPath=`.spec.keyName`
// +kubebuilder:printcolumn:name="Key",type=string,JSONPath=`.spec.hint`
// +kubebuilder:printcolumn:name="Pending",type=boolean,JSONPath=`.spec.pending`,priority=1
// +kubebuilder:printcolumn:name="Rotation",type=integer,JSONPath=`.spec.rotation`,priority=1
// +kubebuilder:printcolumn:name="Valid Until",type=date,JSONPath=`.spec.validUntil`,priority=1
// +kubebuilder:printcolumn:name="Revoked",type=boolean,JSONPath=`.spec.revoked`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.spec.revocationReason`
// +kubebuilder:printcolumn:name="Created",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Last Used",type=date,JSONPath=`.status.lastUsedAt`
type ApiKeyRecord struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the hashed record.
	// +required
	Spec ApiKeyRecordSpec `json:"spec"`

	// status is how the key has been used.
	// +optional
	Status ApiKeyRecordStatus `json:"status,omitempty"`
}

// Minted is when the record's key counts as minted: its creation, or the
// rotation request it answered if that is later (kubectl's clock may be
// ahead of the API server's).
func (r *ApiKeyRecord) Minted() time.Time {
	if a := r.Spec.RequestedAt; a != nil && a.After(r.CreationTimestamp.Time) {
		return a.Time
	}
	return r.CreationTimestamp.Time
}

// SupersededAt says whether a rotation requested at requested replaces the
// record's key: the request is later than the instant it was minted.
func (r *ApiKeyRecord) SupersededAt(requested time.Time) bool {
	return Superseded(r.Minted(), requested)
}

// Superseded is SupersededAt for a key minted at minted: the one rule, for
// readers that keep the instant rather than the record.
func Superseded(minted, requested time.Time) bool {
	return requested.After(minted)
}

// ApiKeyRecordList is a list of ApiKeyRecords.
// +kubebuilder:object:root=true
type ApiKeyRecordList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the ApiKeyRecords.
	Items []ApiKeyRecord `json:"items"`
}
