package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KeyFormat is how a raw key is written.
// +kubebuilder:validation:Enum=Prefixed;Hex
type KeyFormat string

const (
	// FormatPrefixed is lk_ + 256 random bits in base62 + a base62 CRC32
	// checksum, so typos fail without a lookup and secret scanners find leaks.
	FormatPrefixed KeyFormat = "Prefixed"
	// FormatHex is 64 lowercase hex characters, for clients that expect it.
	FormatHex KeyFormat = "Hex"
)

// ApiKeySpec is what the user declares.
// +kubebuilder:validation:XValidation:rule="has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)",message="secretName is immutable: the key was delivered to this Secret; create a new ApiKey to deliver a key elsewhere",fieldPath=".secretName",reason=FieldValueForbidden
type ApiKeySpec struct {
	// secretName is the Secret in the ApiKey's namespace that receives the raw
	// key, under data key "api-key". Defaults to the ApiKey's name. Latchkey
	// never writes to a Secret it did not create.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`

	// revoked set to true revokes the key at once. It is one way: a revoked
	// key can never be un-revoked; create a new ApiKey instead.
	// +optional
	// +default=false
	// +kubebuilder:validation:XValidation:rule="self || !oldSelf",message="revoked cannot be changed from true to false: a revoked key stays revoked; create a new ApiKey instead",reason=FieldValueForbidden
	Revoked bool `json:"revoked"`

	// expiresAt is the instant after which the key no longer authenticates
	// and the phase becomes Expired. Unset means the key does not expire.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// format is how the raw key is written: Prefixed (default; lk_ + base62 +
	// checksum) or Hex (64 lowercase hex characters). It cannot change.
	// +optional
	// +default="Prefixed"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="format is immutable: the key has already been minted in this format",reason=FieldValueForbidden
	Format KeyFormat `json:"format,omitempty"`

	// description is short free text shown to people, such as who holds the key.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Description string `json:"description,omitempty"`
}

// Phase is where an ApiKey is in its life.
// +kubebuilder:validation:Enum=Pending;Active;Revoked;Expired;Failed
type Phase string

const (
	// PhasePending means the key has not been minted and delivered yet.
	PhasePending Phase = "Pending"
	// PhaseActive means the key authenticates requests.
	PhaseActive Phase = "Active"
	// PhaseRevoked means the key was revoked and never authenticates again.
	PhaseRevoked Phase = "Revoked"
	// PhaseExpired means spec.expiresAt has passed.
	PhaseExpired Phase = "Expired"
	// PhaseFailed means the key cannot be delivered; conditions say why.
	PhaseFailed Phase = "Failed"
)

// Condition types of an ApiKey.
const (
	// ConditionReady is True while the key authenticates requests.
	ConditionReady = "Ready"
	// ConditionKeyDelivered is True while the Secret holding the raw key exists.
	ConditionKeyDelivered = "KeyDelivered"
)

// Condition reasons of an ApiKey.
const (
	ReasonActive         = "Active"
	ReasonMinting        = "Minting"
	ReasonRevoked        = "Revoked"
	ReasonExpired        = "Expired"
	ReasonDelivered      = "Delivered"
	ReasonSecretMissing  = "SecretMissing"
	ReasonSecretNotOwned = "SecretNotOwned"
	// ReasonSecretChanged means the Secret is Latchkey's but no longer holds
	// the key it delivered; the delivered key still works.
	ReasonSecretChanged      = "SecretChanged"
	ReasonNotDelivered       = "NotDelivered"
	ReasonSecretAccessDenied = "SecretAccessDenied"
)

// ApiKeyStatus is what Latchkey observed and did. It never holds the raw key.
type ApiKeyStatus struct {
	// phase is Pending, Active, Revoked, Expired or Failed.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// keyHint is the masked key: its first 8 characters, "…", and its last 4.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	KeyHint string `json:"keyHint,omitempty"`

	// lastUsedAt is when the key last authenticated a request, written at most
	// once per minute. Unset until first use.
	// +optional
	LastUsedAt *metav1.Time `json:"lastUsedAt,omitempty"`

	// revokedAt is when Latchkey revoked the key.
	// +optional
	RevokedAt *metav1.Time `json:"revokedAt,omitempty"`

	// conditions are Ready and KeyDelivered.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// ApiKey is an API key for the services of its namespace (the tenant). The
// raw key is delivered once to a Secret; Latchkey keeps only its hash.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ak,categories=latchkey
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63",message="metadata.name must be at most 63 characters: Latchkey labels the key's Secret and record with it",reason=FieldValueInvalid
// +kubebuilder:printcolumn:name="Key",type=string,JSONPath=`.status.keyHint`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Created",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Last Used",type=date,JSONPath=`.status.lastUsedAt`
// +kubebuilder:printcolumn:name="Description",type=string,JSONPath=`.spec.description`,priority=1
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.spec.expiresAt`,priority=1
type ApiKey struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the key the user declares.
	// +required
	Spec ApiKeySpec `json:"spec"`

	// status is what Latchkey observed.
	// +optional
	Status ApiKeyStatus `json:"status,omitempty"`
}

// SecretName is the Secret that receives the raw key.
func (k *ApiKey) SecretName() string {
	if k.Spec.SecretName != "" {
		return k.Spec.SecretName
	}
	return k.Name
}

// Expired reports whether the key's expiresAt has passed at now: from that
// instant on it fails authentication.
func (k *ApiKey) Expired(now time.Time) bool {
	return k.Spec.ExpiresAt != nil && !now.Before(k.Spec.ExpiresAt.Time)
}

// State is the key's phase at now, the one definition for those that read
// ApiKeys rather than reconcile them (Usage's counts, the plugin): the spec
// decides Revoked and Expired at once, before the controller's next pass
// writes them; otherwise it is the phase the controller last wrote, and
// Pending before its first pass.
func (k *ApiKey) State(now time.Time) Phase {
	switch {
	case k.Spec.Revoked:
		return PhaseRevoked
	case k.Expired(now):
		return PhaseExpired
	case k.Status.Phase == "":
		return PhasePending
	}
	return k.Status.Phase
}

// ApiKeyList is a list of ApiKeys.
// +kubebuilder:object:root=true
type ApiKeyList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the ApiKeys.
	Items []ApiKey `json:"items"`
}
