// Package v1alpha1 holds the admission webhook of the auth.latchkey.dev/v1alpha1
// API. Only ApiKey has one, because its checks need other objects and the
// revocation fence; ApiKeyRecord, Usage and UsageLedger are judged by their
// CRDs' schemas alone.
package v1alpha1

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// RevocationFence stops what a change takes away from a key — revocation,
// deletion, suspension, a rotation with no grace period, removed scopes —
// before the change is persisted, closing the gap between the API call
// returning and the verifier's watch catching up. Fence is called while
// the request is being admitted; when it returns an error the request is
// refused (fail closed), so nothing is taken from a key in the API without
// being fenced.
type RevocationFence interface {
	Fence(ctx context.Context, key *authv1alpha1.ApiKey, stop verifier.Stop) error
}

// ApiKeyValidator refuses ApiKeys that CEL cannot judge, and fences keys
// that are being revoked or deleted.
type ApiKeyValidator struct {
	Clock clock.PassiveClock
	// Fence is told of revocations; nil means no verifier runs in this process.
	Fence RevocationFence
	// Keys says which other ApiKey delivers to a Secret, from the key
	// index (verifier.Verifier), so that admitting an ApiKey reads no
	// ApiKey and none is cached whole on a replica that only serves.
	Keys interface {
		OtherHolder(*authv1alpha1.ApiKey) string
	}
}

// +kubebuilder:webhook:path=/validate-auth-latchkey-dev-v1alpha1-apikey,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=auth.latchkey.dev,resources=apikeys,verbs=create;update;delete,versions=v1alpha1,name=vapikey-v1alpha1.latchkey.dev,admissionReviewVersions=v1,timeoutSeconds=5

// SetupWebhookWithManager registers the validator on the manager's webhook
// server.
func (v *ApiKeyValidator) SetupWebhookWithManager(mgr ctrl.Manager) error {
	if v.Keys == nil {
		return errors.New("the ApiKey validator needs the key index (Keys)")
	}
	return ctrl.NewWebhookManagedBy(mgr, &authv1alpha1.ApiKey{}).WithValidator(v).Complete()
}

var specPath = field.NewPath("spec")

// ValidateCreate refuses an already expired key and a Secret name another
// ApiKey of the namespace delivers to.
func (v *ApiKeyValidator) ValidateCreate(ctx context.Context, key *authv1alpha1.ApiKey) (admission.Warnings, error) {
	var errs field.ErrorList
	if exp := key.Spec.ExpiresAt; exp != nil && !exp.After(v.Clock.Now()) {
		errs = append(errs, field.Invalid(specPath.Child("expiresAt"), exp.UTC().Format("2006-01-02T15:04:05Z"),
			"must be in the future: a key that is already expired could never be used"))
	}
	errs = append(errs, v.validateSecretNameUnique(key)...)
	return nil, v.invalid(key, errs)
}

// ValidateUpdate fences what an update takes away at once: spec.revoked
// or spec.suspended turning true, a rotation with a grace period of 0s,
// scopes removed. Immutability and one-way revocation are CEL rules,
// enforced even with this webhook down.
func (v *ApiKeyValidator) ValidateUpdate(ctx context.Context, oldKey, key *authv1alpha1.ApiKey) (admission.Warnings, error) {
	if stop := verifier.TakenAway(oldKey, key); !stop.IsZero() {
		return nil, v.fence(ctx, oldKey, stop)
	}
	return nil, nil
}

// ValidateDelete fences the key before the deletion is persisted.
func (v *ApiKeyValidator) ValidateDelete(ctx context.Context, key *authv1alpha1.ApiKey) (admission.Warnings, error) {
	return nil, v.fence(ctx, key, verifier.Stop{Revoked: true})
}

func (v *ApiKeyValidator) fence(ctx context.Context, key *authv1alpha1.ApiKey, stop verifier.Stop) error {
	if v.Fence == nil {
		return nil
	}
	if req, err := admission.RequestFromContext(ctx); err == nil && req.DryRun != nil && *req.DryRun {
		return nil
	}
	if err := v.Fence.Fence(ctx, key, stop); err != nil {
		return apierrors.NewServiceUnavailable(fmt.Sprintf("could not stop the key from authenticating, so the change was not made; retry: %v", err))
	}
	return nil
}

func (v *ApiKeyValidator) validateSecretNameUnique(key *authv1alpha1.ApiKey) field.ErrorList {
	if other := v.Keys.OtherHolder(key); other != "" {
		return field.ErrorList{field.Invalid(specPath.Child("secretName"), key.SecretName(),
			fmt.Sprintf("ApiKey %q already delivers its key to this Secret; choose another secretName", other))}
	}
	return nil
}

func (v *ApiKeyValidator) invalid(key *authv1alpha1.ApiKey, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(authv1alpha1.GroupVersion.WithKind("ApiKey").GroupKind(), key.Name, errs)
}
