package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// TestRecordRulesHeldByTheAPIServer changes records directly, as someone
// bypassing the operator would: the API server refuses, naming the field.
func TestRecordRulesHeldByTheAPIServer(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		revoked bool
		change  func(r *authv1alpha1.ApiKeyRecord)
		want    []string
	}{
		{"changing the hash is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Hash = keys.Hash("another key") },
			[]string{"spec.hash", "hash is immutable"}},
		{"changing the tenant is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Tenant = "elsewhere" },
			[]string{"spec.tenant", "tenant is immutable"}},
		{"un-revoking a revoked record is refused", true,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Revoked = false },
			[]string{"spec.revoked", "a revoked record can never become active again"}},
		{"revoking without a time is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Revoked = true },
			[]string{"spec.revokedAt", "revokedAt is required when revoked is true"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			rec := &authv1alpha1.ApiKeyRecord{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "rules-"},
				Spec: authv1alpha1.ApiKeyRecordSpec{
					Hash: keys.Hash(t.Name()), Tenant: "tenant", KeyName: "k", KeyUID: "uid",
					Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
				},
			}
			if tt.revoked {
				at := metav1.NewTime(time.Now())
				rec.Spec.Revoked, rec.Spec.RevokedAt, rec.Spec.RevocationReason = true, &at, authv1alpha1.RevocationRevoked
			}
			g.Expect(env.Client.Create(ctx, rec)).To(Succeed())
			t.Cleanup(func() { _ = env.Client.Delete(ctx, rec) })
			base := rec.DeepCopy()
			tt.change(rec)
			err := env.Client.Patch(ctx, rec, client.MergeFrom(base))
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "case %d: got %v", i, err)
			for _, w := range tt.want {
				g.Expect(err.Error()).To(ContainSubstring(w))
			}
		})
	}
}
