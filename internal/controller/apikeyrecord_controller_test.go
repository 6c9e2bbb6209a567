package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// goneRecord creates the record of a key that no longer exists, revoked
// at revokedAt for reason (or pending, with no reason).
func goneRecord(g Gomega, tenant, value, reason string, revokedAt time.Time) *authv1alpha1.ApiKeyRecord {
	rec := &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(value)},
		Spec: authv1alpha1.ApiKeyRecordSpec{
			Hash: keys.Hash(value), Tenant: tenant, KeyName: "gone-" + value[len(value)-4:], KeyUID: "uid-" + value,
			Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
		},
	}
	if reason == "" {
		rec.Spec.Pending = true
	} else {
		at := metav1.NewTime(revokedAt)
		rec.Spec.Revoked, rec.Spec.RevokedAt, rec.Spec.RevocationReason = true, &at, reason
	}
	g.Expect(env.Client.Create(context.Background(), rec)).To(Succeed())
	return rec
}

func recordExists(g Gomega, rec *authv1alpha1.ApiKeyRecord) bool {
	err := env.Client.Get(context.Background(), types.NamespacedName{Name: rec.Name}, &authv1alpha1.ApiKeyRecord{})
	if apierrors.IsNotFound(err) {
		return false
	}
	g.Expect(err).NotTo(HaveOccurred())
	return true
}

func TestRecordsOfDeletedKeysAreBoundedPerTenant(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	index := watchedIndex(t, ns)
	r := &ApiKeyRecordReconciler{Client: env.Client, Index: index, APIReader: env.Client, Clock: clk, Retention: 90 * 24 * time.Hour, MaxDeletedPerTenant: 3}

	recs := make([]*authv1alpha1.ApiKeyRecord, 0, 5)
	for i := range 5 {
		recs = append(recs, goneRecord(g, ns, fmt.Sprintf("%s-%04d", ns, i), authv1alpha1.RevocationDeleted, clk.Now().Add(time.Duration(i)*time.Minute)))
	}
	g.Eventually(func() []verifier.GoneRecord { return index.GoneRecords(ns) }).Should(HaveLen(5))
	// Another tenant's records and a revoked, not deleted, key's are not counted.
	other := goneRecord(g, env.Namespace(t), ns+"-other", authv1alpha1.RevocationDeleted, clk.Now().Add(-time.Hour))

	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: recs[4].Name}})
	g.Expect(err).NotTo(HaveOccurred())
	for i, rec := range recs {
		g.Expect(recordExists(g, rec)).To(Equal(i >= 2), "record %d: the two longest revoked go", i)
	}
	g.Expect(recordExists(g, other)).To(BeTrue())
}

func TestPendingRecordOfAVanishedKeyIsDeleted(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(time.Now())
	ns := env.Namespace(t)
	r := &ApiKeyRecordReconciler{Client: env.Client, Index: watchedIndex(t, ns), APIReader: env.Client, Clock: clk, Retention: time.Hour}
	rec := goneRecord(g, ns, "pending-of-a-vanished-key", "", time.Time{})
	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(rec)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(recordExists(g, rec)).To(BeFalse(), "its key never authenticated: there is nothing to keep")
}
