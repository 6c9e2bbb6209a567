package controller

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

var statusNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// keyFixture is an ApiKey at generation 3 whose last status is st.
func keyFixture(spec authv1alpha1.ApiKeySpec, st authv1alpha1.ApiKeyStatus) *authv1alpha1.ApiKey {
	k := newKey("tenant", "ci", spec)
	k.Generation = 3
	k.Status = st
	return k
}

func recordFixture(mod func(*authv1alpha1.ApiKeyRecord)) *authv1alpha1.ApiKeyRecord {
	r := &authv1alpha1.ApiKeyRecord{Spec: authv1alpha1.ApiKeyRecordSpec{
		Hash: "h", Tenant: "tenant", KeyName: "ci", KeyUID: "uid", Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
	}}
	if mod != nil {
		mod(r)
	}
	return r
}

func TestComputeStatus(t *testing.T) {
	in := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: statusNow.Add(d)} }
	active := authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive, KeyHint: "lk_abcde…wxyz", Conditions: []metav1.Condition{
		{Type: authv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: authv1alpha1.ReasonActive},
		{Type: authv1alpha1.ConditionKeyDelivered, Status: metav1.ConditionTrue, Reason: authv1alpha1.ReasonDelivered},
	}}
	notDelivered := func(phase authv1alpha1.Phase, ready, delivered string) authv1alpha1.ApiKeyStatus {
		return authv1alpha1.ApiKeyStatus{Phase: phase, Conditions: []metav1.Condition{
			{Type: authv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: ready, ObservedGeneration: 3},
			{Type: authv1alpha1.ConditionKeyDelivered, Status: metav1.ConditionFalse, Reason: delivered, ObservedGeneration: 3},
		}}
	}
	failed := notDelivered(authv1alpha1.PhaseFailed, authv1alpha1.ReasonNotDelivered, authv1alpha1.ReasonSecretNotOwned)
	waiting := notDelivered(authv1alpha1.PhasePending, authv1alpha1.ReasonSecretAccessDenied, authv1alpha1.ReasonSecretAccessDenied)
	every := lookAgain{scheduled: true, checkAfter: time.Minute}
	firstFreeSlot := lookAgain{scheduled: true}
	type cond struct {
		typ    string
		status metav1.ConditionStatus
		reason string
	}
	tests := []struct {
		name   string
		spec   authv1alpha1.ApiKeySpec
		prev   authv1alpha1.ApiKeyStatus
		record *authv1alpha1.ApiKeyRecord
		secret secretState
		phase  authv1alpha1.Phase
		conds  []cond
		next   lookAgain
	}{
		{name: "a key not minted yet is Pending, being minted",
			phase: authv1alpha1.PhasePending, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting}}},
		{name: "a key just delivered is Active and Ready, looked at again at the next Secret check",
			record: recordFixture(nil), secret: secretDelivered, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "an Active key that expires before the next check is looked at again exactly at its expiry",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(10 * time.Second)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: lookAgain{scheduled: true, checkAfter: time.Minute, expiresIn: 10 * time.Second},
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive}}},
		{name: "an Active key that expires after the next check is looked at again for the check",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(time.Hour)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: lookAgain{scheduled: true, checkAfter: time.Minute, expiresIn: time.Hour}},
		{name: "a key is Expired from the instant of its expiry",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(0)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseExpired, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired}}},
		{name: "a revoked key is Revoked and not Ready, and never looked at again on a schedule",
			spec: authv1alpha1.ApiKeySpec{Revoked: true}, prev: active,
			record: recordFixture(func(r *authv1alpha1.ApiKeyRecord) { r.Spec.Revoked, r.Spec.RevokedAt = true, in(-time.Second) }),
			phase:  authv1alpha1.PhaseRevoked,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonRevoked},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "a key revoked before it was minted is Revoked all the same",
			spec: authv1alpha1.ApiKeySpec{Revoked: true}, phase: authv1alpha1.PhaseRevoked,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonRevoked}}},
		{name: "a revoked key that has expired stays Revoked",
			spec: authv1alpha1.ApiKeySpec{Revoked: true, ExpiresAt: in(-time.Hour)}, prev: active, record: recordFixture(nil),
			phase: authv1alpha1.PhaseRevoked},
		{name: "a key whose Secret name is taken is Failed, and says so without confirming more",
			secret: secretNotOwned, phase: authv1alpha1.PhaseFailed, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a key whose namespace has not opted in waits Pending, looking again soon",
			secret: secretAccessDenied, phase: authv1alpha1.PhasePending, next: lookAgain{scheduled: true, checkAfter: 30 * time.Second},
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a minted key whose namespace opted out again keeps working, delivery unknown",
			prev: active, record: recordFixture(nil), secret: secretAccessDenied, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionUnknown, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a key whose Secret was deleted keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretMissing, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretMissing}}},
		{name: "a key whose Secret was replaced by someone else's keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretNotOwned, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a key whose Secret holds another value keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretChanged, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretChanged}}},
		{name: "a key whose Secret was not looked at keeps what status said of delivery",
			prev: active, record: recordFixture(nil), secret: secretUnchecked, phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "an Active key whose check the budget deferred keeps what status said of delivery, and takes the first free slot",
			prev: active, record: recordFixture(nil), secret: secretDeferred, phase: authv1alpha1.PhaseActive, next: firstFreeSlot,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "a key whose check the budget deferred still expires on time",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(0)}, prev: active, record: recordFixture(nil), secret: secretDeferred,
			phase: authv1alpha1.PhaseExpired, next: firstFreeSlot,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired}}},
		{name: "a Failed key whose retry the budget deferred stays Failed, as it was",
			prev: failed, secret: secretDeferred, phase: authv1alpha1.PhaseFailed, next: firstFreeSlot,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a Pending key whose retry the budget deferred keeps waiting for its namespace, as it was",
			prev: waiting, secret: secretDeferred, phase: authv1alpha1.PhasePending, next: firstFreeSlot,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a Secret deleted from a Failed key's way lets it become Active once minted",
			prev: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseFailed}, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: every,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := keyFixture(tt.spec, tt.prev)
			before := key.Status.DeepCopy()
			st, next := computeStatus(observation{
				key: key, record: tt.record, secret: tt.secret, now: statusNow, secretCheckInterval: time.Minute,
			})
			if st.Phase != tt.phase {
				t.Errorf("phase = %s, want %s", st.Phase, tt.phase)
			}
			if next != tt.next {
				t.Errorf("looked at again %+v, want %+v", next, tt.next)
			}
			for _, c := range tt.conds {
				got := meta.FindStatusCondition(st.Conditions, c.typ)
				if got == nil || got.Status != c.status || got.Reason != c.reason {
					t.Errorf("condition %s = %+v, want %s %s", c.typ, got, c.status, c.reason)
				}
			}
			for _, c := range st.Conditions {
				if c.ObservedGeneration != 3 && meta.FindStatusCondition(before.Conditions, c.Type) == nil {
					t.Errorf("condition %s set for generation %d", c.Type, c.ObservedGeneration)
				}
			}
			if st.ObservedGeneration != before.ObservedGeneration {
				t.Error("computeStatus stamped observedGeneration: only a pass that succeeded may")
			}
			if tt.record != nil && st.KeyHint != tt.record.Spec.Hint {
				t.Errorf("keyHint = %q", st.KeyHint)
			}
			if tt.phase == authv1alpha1.PhaseRevoked && st.RevokedAt == nil {
				t.Error("a Revoked key says when")
			}
			if !equalStatus(before, &key.Status) {
				t.Error("computeStatus changed the ApiKey it was given")
			}
		})
	}
}

func TestLastUseOnlyMovesForward(t *testing.T) {
	earlier, later := metav1.NewTime(statusNow.Add(-time.Hour)), metav1.NewTime(statusNow)
	key := keyFixture(authv1alpha1.ApiKeySpec{}, authv1alpha1.ApiKeyStatus{LastUsedAt: &later})
	st, _ := computeStatus(observation{key: key, secret: secretDelivered, now: statusNow, secretCheckInterval: time.Minute,
		record: recordFixture(func(r *authv1alpha1.ApiKeyRecord) { r.Status.LastUsedAt = &earlier })})
	if !st.LastUsedAt.Equal(&later) {
		t.Fatalf("lastUsedAt went back to %v", st.LastUsedAt)
	}
	st, _ = computeStatus(observation{key: keyFixture(authv1alpha1.ApiKeySpec{}, authv1alpha1.ApiKeyStatus{LastUsedAt: &earlier}),
		secret: secretDelivered, now: statusNow, secretCheckInterval: time.Minute,
		record: recordFixture(func(r *authv1alpha1.ApiKeyRecord) { r.Status.LastUsedAt = &later })})
	if !st.LastUsedAt.Equal(&later) {
		t.Fatalf("lastUsedAt = %v, want the record's newer use", st.LastUsedAt)
	}
}

func TestStatusEvents(t *testing.T) {
	key := keyFixture(authv1alpha1.ApiKeySpec{}, authv1alpha1.ApiKeyStatus{})
	status := func(s secretState, rec *authv1alpha1.ApiKeyRecord, spec authv1alpha1.ApiKeySpec) authv1alpha1.ApiKeyStatus {
		k := keyFixture(spec, key.Status)
		st, _ := computeStatus(observation{key: k, record: rec, secret: s, now: statusNow, secretCheckInterval: time.Minute})
		return st
	}
	activeSt := status(secretDelivered, recordFixture(nil), authv1alpha1.ApiKeySpec{})
	tests := []struct {
		name       string
		prev, next authv1alpha1.ApiKeyStatus
		want       []string
	}{
		{"a pass that changes nothing says nothing", activeSt, activeSt, nil},
		{"revoking says so once", activeSt, status(secretUnchecked, recordFixture(nil), authv1alpha1.ApiKeySpec{Revoked: true}), []string{EventKeyRevoked}},
		{"expiring says so once", activeSt,
			status(secretDelivered, recordFixture(nil), authv1alpha1.ApiKeySpec{ExpiresAt: &metav1.Time{Time: statusNow}}), []string{EventKeyExpired}},
		{"a deleted Secret is a warning", activeSt, status(secretMissing, recordFixture(nil), authv1alpha1.ApiKeySpec{}), []string{EventSecretMissing}},
		{"a replaced key value is a warning", activeSt, status(secretChanged, recordFixture(nil), authv1alpha1.ApiKeySpec{}), []string{EventSecretChanged}},
		{"a taken Secret name is a warning", authv1alpha1.ApiKeyStatus{}, status(secretNotOwned, nil, authv1alpha1.ApiKeySpec{}), []string{EventSecretNotOwned}},
		{"a namespace not opted in is a warning", authv1alpha1.ApiKeyStatus{}, status(secretAccessDenied, nil, authv1alpha1.ApiKeySpec{}), []string{EventSecretAccessDenied}},
		{"being minted is no news", authv1alpha1.ApiKeyStatus{}, status(secretUnchecked, nil, authv1alpha1.ApiKeySpec{}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, e := range statusEvents(&tt.prev, &tt.next) {
				got = append(got, e.reason)
			}
			if len(got) != len(tt.want) || (len(got) > 0 && got[0] != tt.want[0]) {
				t.Fatalf("events %v, want %v", got, tt.want)
			}
		})
	}
}

func equalStatus(a, b *authv1alpha1.ApiKeyStatus) bool {
	return a.Phase == b.Phase && len(a.Conditions) == len(b.Conditions) && a.KeyHint == b.KeyHint
}
