package v1alpha1

import "time"

// Labels, annotations and data keys Latchkey puts on the objects it writes.
const (
	// LabelTenant is the namespace a record's key authenticates for.
	LabelTenant = "auth.latchkey.dev/tenant"
	// LabelKeyName is the name of the ApiKey an object belongs to.
	LabelKeyName = "auth.latchkey.dev/key-name"
	// LabelKeyUID is the UID of the ApiKey a record belongs to: records are
	// named by hash, and found by the key they belong to with this label.
	LabelKeyUID = "auth.latchkey.dev/key-uid"
	// LabelManagedBy marks objects Latchkey created.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "latchkey"

	// SecretKeyAPIKey is the Secret data key holding the raw key.
	SecretKeyAPIKey = "api-key"
	// SecretKeyTenant is the Secret data key holding the tenant (not secret).
	SecretKeyTenant = "tenant"
	// SecretKeyName is the Secret data key holding the ApiKey's name (not secret).
	SecretKeyName = "name"

	// KeyDeliveryClusterRole lets Latchkey get and create Secrets where it
	// is bound: a namespace's RoleBinding to it opts the namespace in.
	KeyDeliveryClusterRole = "latchkey-key-delivery"
	// DefaultServiceAccount is the manager's ServiceAccount as installed,
	// namespace:name.
	DefaultServiceAccount = "latchkey-system:latchkey-controller-manager"
	// KeyDeliveryRetry is how soon a key waiting for its namespace to opt in
	// looks again: the opt-in is a RoleBinding, which Latchkey does not watch.
	KeyDeliveryRetry = 30 * time.Second

	// Finalizer makes Latchkey revoke a key's record before the ApiKey goes.
	Finalizer = "auth.latchkey.dev/revoke-record"
)
