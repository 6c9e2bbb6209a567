package v1alpha1

import (
	"slices"
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

	// suspended set to true makes every key of the ApiKey fail with "key
	// suspended" at once, as revocation does; set back to false, the same
	// keys work again. Unlike revoked, it is reversible.
	// +optional
	Suspended bool `json:"suspended,omitempty"`

	// rotation replaces the key with a new one in the same Secret, on
	// request or on a schedule, keeping the previous key valid for a grace
	// period so that callers pick the new one up without downtime.
	// +optional
	Rotation *RotationSpec `json:"rotation,omitempty"`

	// scopes are what the key may do, for gateways and RBAC to check: up to
	// 16 lowercase names. TokenReview gives the groups
	// latchkey:tenant:<namespace>:scope:<scope> and latchkey:scope:<scope>
	// per scope, and /authorize refuses a key that lacks a scope the route
	// requires. Removing a scope takes effect as immediately as revocation.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$`
	Scopes []string `json:"scopes,omitempty"`
}

// The bounds of spec.scopes, for clients that check a list before sending
// it (the console); the markers above hold the same values, and a test
// holds the generated CRD to these.
const (
	MaxScopes      = 16
	MaxScopeLength = 63
	ScopePattern   = `^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$`
)

// RotationSpec says when an ApiKey's key is replaced.
type RotationSpec struct {
	// requestedAt asks for a rotation: when it is later than the instant the
	// current key was minted (or than the request that minted it), a new key
	// is minted into the same Secret. kubectl latchkey rotate sets it to now.
	// +optional
	RequestedAt *metav1.Time `json:"requestedAt,omitempty"`

	// gracePeriod is how long the previous key keeps working after the new
	// one is delivered: 0s to 168h, 1h by default. 0s stops the previous key
	// at once, as revocation does, when the request is admitted.
	// +optional
	// +default="1h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('168h')",message="gracePeriod must be between 0s and 168h",reason=FieldValueInvalid
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`

	// every rotates the key automatically that long after each mint: at
	// least 1h, at most 8760h (a year). status.nextRotationAt says when.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h') && duration(self) <= duration('8760h')",message="every must be between 1h and 8760h",reason=FieldValueInvalid
	Every *metav1.Duration `json:"every,omitempty"`
}

// Phase is where an ApiKey is in its life.
// +kubebuilder:validation:Enum=Pending;Active;Suspended;Revoked;Expired;Failed
type Phase string

const (
	// PhasePending means the key has not been minted and delivered yet.
	PhasePending Phase = "Pending"
	// PhaseActive means the key authenticates requests.
	PhaseActive Phase = "Active"
	// PhaseSuspended means spec.suspended holds every key of the ApiKey
	// off until it is set back to false.
	PhaseSuspended Phase = "Suspended"
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
	// ConditionExpiringSoon is True within the manager's --expiry-warning of
	// spec.expiresAt (unless a scheduled rotation comes first).
	ConditionExpiringSoon = "ExpiringSoon"
)

// Condition reasons of an ApiKey.
const (
	ReasonActive         = "Active"
	ReasonMinting        = "Minting"
	ReasonRevoked        = "Revoked"
	ReasonSuspended      = "Suspended"
	ReasonExpiresSoon    = "ExpiresSoon"
	ReasonNotExpiring    = "NotExpiringSoon"
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

	// rotation is how many times the key has been rotated: the current key's
	// rotation number, 0 for the first key.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Rotation int32 `json:"rotation,omitempty"`

	// rotatedAt is when the current key was minted by a rotation.
	// +optional
	RotatedAt *metav1.Time `json:"rotatedAt,omitempty"`

	// nextRotationAt is when spec.rotation.every rotates the key next.
	// +optional
	NextRotationAt *metav1.Time `json:"nextRotationAt,omitempty"`

	// previousKeys are the keys a rotation replaced that still work, in
	// their grace period: newest first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	PreviousKeys []PreviousKey `json:"previousKeys,omitempty"`

	// conditions are Ready, KeyDelivered and ExpiringSoon.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// PreviousKey is a replaced key in its grace period.
type PreviousKey struct {
	// keyHint is the masked key: its first 8 characters, "…", and its last 4.
	// +required
	// +kubebuilder:validation:MaxLength=32
	KeyHint string `json:"keyHint"`

	// rotation is the key's rotation number.
	// +required
	// +kubebuilder:validation:Minimum=0
	Rotation int32 `json:"rotation"`

	// validUntil is when the key stops working.
	// +required
	ValidUntil metav1.Time `json:"validUntil"`
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
// +kubebuilder:printcolumn:name="Scopes",type=string,JSONPath=`.spec.scopes`,priority=1
// +kubebuilder:printcolumn:name="Rotated",type=date,JSONPath=`.status.rotatedAt`,priority=1
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
	case k.Spec.Suspended:
		return PhaseSuspended
	case k.Status.Phase == "":
		return PhasePending
	}
	return k.Status.Phase
}

// GracePeriod is how long a replaced key keeps working.
func (k *ApiKey) GracePeriod() time.Duration {
	if r := k.Spec.Rotation; r != nil && r.GracePeriod != nil {
		return r.GracePeriod.Duration
	}
	return DefaultGracePeriod
}

// DefaultGracePeriod is spec.rotation.gracePeriod's default.
const DefaultGracePeriod = time.Hour

// RotationRequested is spec.rotation.requestedAt, or the zero time.
func (k *ApiKey) RotationRequested() time.Time {
	if r := k.Spec.Rotation; r != nil && r.RequestedAt != nil {
		return r.RequestedAt.Time
	}
	return time.Time{}
}

// Supersedes says whether the key's rotation request replaces the key of
// record (ApiKeyRecord.SupersededAt). The one rule for the controller,
// which mints on it, and the verifier, which with a grace period of 0s
// refuses the record on it before any new key exists.
func (k *ApiKey) Supersedes(record *ApiKeyRecord) bool {
	requested := k.RotationRequested()
	return !requested.IsZero() && record.SupersededAt(requested)
}

// HasScope says whether the key has scope.
func (k *ApiKey) HasScope(scope string) bool { return slices.Contains(k.Spec.Scopes, scope) }

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
