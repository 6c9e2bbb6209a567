package v1alpha1

import (
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/config/crd"
)

func TestState(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	tests := []struct {
		name string
		spec ApiKeySpec
		last Phase
		want Phase
	}{
		{"a key no pass has seen is Pending", ApiKeySpec{}, "", PhasePending},
		{"a key is what the controller last wrote", ApiKeySpec{}, PhaseActive, PhaseActive},
		{"revoking in spec makes it Revoked before any pass", ApiKeySpec{Revoked: true}, PhaseActive, PhaseRevoked},
		{"it is Expired from the instant of its expiry", ApiKeySpec{ExpiresAt: at(0)}, PhaseActive, PhaseExpired},
		{"and Active the instant before", ApiKeySpec{ExpiresAt: at(time.Nanosecond)}, PhaseActive, PhaseActive},
		{"revoked beats expired", ApiKeySpec{Revoked: true, ExpiresAt: at(-time.Hour)}, PhaseExpired, PhaseRevoked},
		{"a Failed key stays Failed", ApiKeySpec{}, PhaseFailed, PhaseFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &ApiKey{Spec: tt.spec, Status: ApiKeyStatus{Phase: tt.last}}
			if got := k.State(now); got != tt.want {
				t.Fatalf("State = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestScopeBoundsAreTheCRDs: the constants clients check scopes with are
// the generated schema's.
func TestScopeBoundsAreTheCRDs(t *testing.T) {
	b, err := crd.Bases.ReadFile("bases/auth.latchkey.dev_apikeys.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var def apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &def); err != nil {
		t.Fatal(err)
	}
	scopes := def.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["scopes"]
	if scopes.MaxItems == nil || *scopes.MaxItems != MaxScopes ||
		scopes.Items.Schema.MaxLength == nil || *scopes.Items.Schema.MaxLength != MaxScopeLength ||
		scopes.Items.Schema.Pattern != ScopePattern {
		t.Fatalf("spec.scopes in the CRD: maxItems %v, items %+v; the constants say %d, %d, %s",
			scopes.MaxItems, scopes.Items.Schema, MaxScopes, MaxScopeLength, ScopePattern)
	}
}
