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
		{"making a delivered record pending again is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Pending = true },
			[]string{"spec.pending", "a delivered key's record stays delivered"}},
		{"giving a first key a rotation number is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Rotation = 3 },
			[]string{"spec.rotation", "rotation is immutable"}},
		{"giving a first key a rotation request is refused", false,
			func(r *authv1alpha1.ApiKeyRecord) { r.Spec.RequestedAt = &metav1.Time{Time: time.Now()} },
			[]string{"spec.requestedAt", "requestedAt is immutable"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			rec := ruleRecord(t.Name())
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

func ruleRecord(value string) *authv1alpha1.ApiKeyRecord {
	return &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(value)},
		Spec: authv1alpha1.ApiKeyRecordSpec{
			Hash: keys.Hash(value), Tenant: "tenant", KeyName: "k", KeyUID: "uid",
			Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
		},
	}
}

// TestGracePeriodsAreNeverExtended: a replaced key's validUntil can move
// earlier, never later.
func TestGracePeriodsAreNeverExtended(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	rec := ruleRecord(t.Name())
	until := metav1.NewTime(time.Now().Add(time.Hour).Truncate(time.Second))
	rec.Spec.ValidUntil = &until
	g.Expect(env.Client.Create(ctx, rec)).To(Succeed())
	t.Cleanup(func() { _ = env.Client.Delete(ctx, rec) })
	base := rec.DeepCopy()
	later := metav1.NewTime(until.Add(time.Hour))
	rec.Spec.ValidUntil = &later
	err := env.Client.Patch(ctx, rec, client.MergeFrom(base))
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
	g.Expect(err.Error()).To(And(ContainSubstring("spec.validUntil"), ContainSubstring("never extended")))
	rec = base.DeepCopy()
	earlier := metav1.NewTime(until.Add(-time.Minute))
	rec.Spec.ValidUntil = &earlier
	g.Expect(env.Client.Patch(ctx, rec, client.MergeFrom(base))).To(Succeed())
}

// TestOneRecordPerKeyValue: whoever writes records, the API server keeps
// a hash to one record, revoked or not, of any tenant.
func TestOneRecordPerKeyValue(t *testing.T) {
	ctx := context.Background()

	t.Run("a record not named by its hash is refused", func(t *testing.T) {
		g := NewWithT(t)
		rec := ruleRecord(t.Name())
		rec.Name = "by-another-name"
		err := env.Client.Create(ctx, rec)
		g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		g.Expect(err.Error()).To(ContainSubstring("metadata.name must be spec.hash"))
	})

	t.Run("a second record of a revoked key's value is refused, in any tenant", func(t *testing.T) {
		g := NewWithT(t)
		first := ruleRecord(t.Name())
		at := metav1.NewTime(time.Now())
		first.Spec.Revoked, first.Spec.RevokedAt, first.Spec.RevocationReason = true, &at, authv1alpha1.RevocationRevoked
		g.Expect(env.Client.Create(ctx, first)).To(Succeed())
		t.Cleanup(func() { _ = env.Client.Delete(ctx, first) })

		second := ruleRecord(t.Name())
		second.Spec.Tenant, second.Spec.KeyName, second.Spec.KeyUID = "another-tenant", "copy", "another-uid"
		err := env.Client.Create(ctx, second)
		g.Expect(apierrors.IsAlreadyExists(err)).To(BeTrue(), "got %v", err)
	})
}
