package controller

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
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
	// Most passes leave the key to the walk of periodic checks.
	walk := lookAgain{}
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
			phase: authv1alpha1.PhasePending, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting}}},
		{name: "a key just delivered is Active and Ready, and left to the walk of Secret checks",
			record: recordFixture(nil), secret: secretDelivered, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "an Active key that expires is looked at again exactly at its expiry",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(10 * time.Second)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: lookAgain{dueIn: 10 * time.Second},
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive}}},
		{name: "an Active key that expires in an hour is looked at again in an hour",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(time.Hour)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: lookAgain{dueIn: time.Hour}},
		{name: "a key is Expired from the instant of its expiry",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(0)}, prev: active, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseExpired, next: walk,
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
			secret: secretNotOwned, phase: authv1alpha1.PhaseFailed, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a key whose namespace has not opted in waits Pending, looking again soon",
			secret: secretAccessDenied, phase: authv1alpha1.PhasePending, next: lookAgain{retryIn: 30 * time.Second},
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a minted key whose namespace opted out again keeps working, delivery unknown",
			prev: active, record: recordFixture(nil), secret: secretAccessDenied, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionUnknown, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a key whose Secret was deleted keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretMissing, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretMissing}}},
		{name: "a key whose Secret was replaced by someone else's keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretNotOwned, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a key whose Secret holds another value keeps working, not delivered",
			prev: active, record: recordFixture(nil), secret: secretChanged, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretChanged}}},
		{name: "a key whose Secret was not looked at keeps what status said of delivery",
			prev: active, record: recordFixture(nil), secret: secretUnchecked, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "an Active key whose check the budget deferred keeps what status said of delivery, and waits for the walk",
			prev: active, record: recordFixture(nil), secret: secretDeferred, phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered}}},
		{name: "a key whose check the budget deferred still expires on time",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: in(0)}, prev: active, record: recordFixture(nil), secret: secretDeferred,
			phase: authv1alpha1.PhaseExpired, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired}}},
		{name: "a Failed key whose retry the budget deferred stays Failed, as it was",
			prev: failed, secret: secretDeferred, phase: authv1alpha1.PhaseFailed, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned}}},
		{name: "a Pending key whose retry the budget deferred keeps waiting for its namespace, as it was",
			prev: waiting, secret: secretDeferred, phase: authv1alpha1.PhasePending, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied},
				{authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied}}},
		{name: "a Secret deleted from a Failed key's way lets it become Active once minted",
			prev: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseFailed}, record: recordFixture(nil), secret: secretDelivered,
			phase: authv1alpha1.PhaseActive, next: walk,
			conds: []cond{{authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := keyFixture(tt.spec, tt.prev)
			before := key.Status.DeepCopy()
			st, next := computeStatus(observation{
				key: key, record: tt.record, secret: tt.secret, now: statusNow,
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
	st, _ := computeStatus(observation{key: key, secret: secretDelivered, now: statusNow,
		record: recordFixture(func(r *authv1alpha1.ApiKeyRecord) { r.Status.LastUsedAt = &earlier })})
	if !st.LastUsedAt.Equal(&later) {
		t.Fatalf("lastUsedAt went back to %v", st.LastUsedAt)
	}
	st, _ = computeStatus(observation{key: keyFixture(authv1alpha1.ApiKeySpec{}, authv1alpha1.ApiKeyStatus{LastUsedAt: &earlier}),
		secret: secretDelivered, now: statusNow,
		record: recordFixture(func(r *authv1alpha1.ApiKeyRecord) { r.Status.LastUsedAt = &later })})
	if !st.LastUsedAt.Equal(&later) {
		t.Fatalf("lastUsedAt = %v, want the record's newer use", st.LastUsedAt)
	}
}

func TestStatusEvents(t *testing.T) {
	key := keyFixture(authv1alpha1.ApiKeySpec{}, authv1alpha1.ApiKeyStatus{})
	status := func(s secretState, rec *authv1alpha1.ApiKeyRecord, spec authv1alpha1.ApiKeySpec) authv1alpha1.ApiKeyStatus {
		k := keyFixture(spec, key.Status)
		st, _ := computeStatus(observation{key: k, record: rec, secret: s, now: statusNow})
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

// TestComputeStatusLifecycle: rotation, suspension and expiry warnings as
// status shows them, and when a key is looked at again for them.
func TestComputeStatusLifecycle(t *testing.T) {
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: statusNow.Add(d)} }
	rec := func(rotation int32, hint string, created time.Duration, mod func(*authv1alpha1.ApiKeyRecord)) authv1alpha1.ApiKeyRecord {
		return *recordFixture(func(r *authv1alpha1.ApiKeyRecord) {
			r.Spec.Rotation, r.Spec.Hint, r.CreationTimestamp = rotation, hint, *at(created)
			if mod != nil {
				mod(r)
			}
		})
	}
	until := func(d time.Duration) func(*authv1alpha1.ApiKeyRecord) {
		return func(r *authv1alpha1.ApiKeyRecord) { r.Spec.ValidUntil = at(d) }
	}
	used := func(d time.Duration) func(*authv1alpha1.ApiKeyRecord) {
		return func(r *authv1alpha1.ApiKeyRecord) { r.Status.LastUsedAt = at(d) }
	}
	every := func(d time.Duration) *authv1alpha1.RotationSpec {
		return &authv1alpha1.RotationSpec{Every: &metav1.Duration{Duration: d}}
	}
	const week = 7 * 24 * time.Hour
	first := rec(0, "lk_first…0000", -2*time.Hour, nil)
	tests := []struct {
		name     string
		spec     authv1alpha1.ApiKeySpec
		record   authv1alpha1.ApiKeyRecord
		previous []authv1alpha1.ApiKeyRecord
		warning  time.Duration
		phase    authv1alpha1.Phase
		ready    string
		soon     metav1.ConditionStatus
		dueIn    time.Duration
		check    func(t *testing.T, st authv1alpha1.ApiKeyStatus)
	}{
		{name: "a first key has rotation 0, no rotatedAt and no previous keys",
			record: first, phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if st.Rotation != 0 || st.RotatedAt != nil || st.PreviousKeys != nil || st.NextRotationAt != nil {
					t.Errorf("status %+v", st)
				}
			}},
		{name: "a rotated key shows the current key, when it was rotated, and the keys in their grace period newest first",
			record: rec(3, "lk_third…3333", -time.Minute, nil),
			previous: []authv1alpha1.ApiKeyRecord{
				rec(2, "lk_secnd…2222", -30*time.Minute, until(time.Hour)),
				rec(1, "lk_first…1111", -time.Hour, until(30*time.Minute)),
				rec(0, "lk_zeroo…0000", -2*time.Hour, func(r *authv1alpha1.ApiKeyRecord) {
					r.Spec.ValidUntil, r.Spec.Revoked = at(-time.Hour), true
				}),
			},
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse,
			dueIn: 30 * time.Minute,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if st.KeyHint != "lk_third…3333" || st.Rotation != 3 || !st.RotatedAt.Equal(at(-time.Minute)) {
					t.Errorf("current key: hint %q rotation %d rotatedAt %v", st.KeyHint, st.Rotation, st.RotatedAt)
				}
				want := []authv1alpha1.PreviousKey{
					{KeyHint: "lk_secnd…2222", Rotation: 2, ValidUntil: *at(time.Hour)},
					{KeyHint: "lk_first…1111", Rotation: 1, ValidUntil: *at(30 * time.Minute)},
				}
				if !equality.Semantic.DeepEqual(st.PreviousKeys, want) {
					t.Errorf("previousKeys = %+v, want %+v", st.PreviousKeys, want)
				}
			}},
		{name: "a replaced key whose validUntil has come is no longer listed, revoked or not",
			record:   rec(1, "lk_new…1111", -time.Minute, nil),
			previous: []authv1alpha1.ApiKeyRecord{rec(0, "lk_old…0000", -time.Hour, until(0))},
			phase:    authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if st.PreviousKeys != nil {
					t.Errorf("previousKeys = %+v", st.PreviousKeys)
				}
			}},
		{name: "last use is the newest over every key of the ApiKey",
			record:   rec(1, "lk_new…1111", -time.Minute, used(-time.Hour)),
			previous: []authv1alpha1.ApiKeyRecord{rec(0, "lk_old…0000", -2*time.Hour, func(r *authv1alpha1.ApiKeyRecord) { until(time.Hour)(r); used(-time.Second)(r) })},
			phase:    authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: time.Hour,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if !st.LastUsedAt.Equal(at(-time.Second)) {
					t.Errorf("lastUsedAt = %v", st.LastUsedAt)
				}
			}},
		{name: "a scheduled rotation says when, and the key is looked at again then",
			spec: authv1alpha1.ApiKeySpec{Rotation: every(3 * time.Hour)}, record: first,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: time.Hour,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if !st.NextRotationAt.Equal(at(time.Hour)) {
					t.Errorf("nextRotationAt = %v", st.NextRotationAt)
				}
			}},
		{name: "a key rotated on schedule counts the next one from the instant it was scheduled for",
			spec: authv1alpha1.ApiKeySpec{Rotation: every(time.Hour)},
			record: rec(1, "lk_new…1111", -2*time.Second, func(r *authv1alpha1.ApiKeyRecord) {
				r.Spec.RequestedAt = at(0)
			}),
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: time.Hour,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if !st.NextRotationAt.Equal(at(time.Hour)) {
					t.Errorf("nextRotationAt = %v", st.NextRotationAt)
				}
			}},
		{name: "a suspended key is Suspended and not Ready",
			spec: authv1alpha1.ApiKeySpec{Suspended: true}, record: first,
			phase: authv1alpha1.PhaseSuspended, ready: authv1alpha1.ReasonSuspended, soon: metav1.ConditionFalse},
		{name: "a suspended key that has expired is Expired",
			spec: authv1alpha1.ApiKeySpec{Suspended: true, ExpiresAt: at(-time.Second)}, record: first,
			phase: authv1alpha1.PhaseExpired, ready: authv1alpha1.ReasonExpired, soon: metav1.ConditionFalse},
		{name: "a suspended key that is revoked is Revoked",
			spec: authv1alpha1.ApiKeySpec{Suspended: true, Revoked: true}, record: first,
			phase: authv1alpha1.PhaseRevoked, ready: authv1alpha1.ReasonRevoked, soon: metav1.ConditionFalse},
		{name: "a key within the warning of its expiry is ExpiringSoon, and looked at again at expiry",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(3 * 24 * time.Hour)}, record: first,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionTrue, dueIn: 3 * 24 * time.Hour},
		{name: "a key further from its expiry is not, and is looked at again when the warning starts",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(week + time.Hour)}, record: first,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: time.Hour},
		{name: "the warning is the manager's setting",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(3 * time.Hour)}, record: first, warning: time.Hour,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: 2 * time.Hour},
		{name: "a suspended key warns too: resumed, it would expire",
			spec: authv1alpha1.ApiKeySpec{Suspended: true, ExpiresAt: at(time.Hour)}, record: first,
			phase: authv1alpha1.PhaseSuspended, ready: authv1alpha1.ReasonSuspended, soon: metav1.ConditionTrue, dueIn: time.Hour},
		{name: "a key rotated on schedule before its expiry does not warn yet",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(3 * time.Hour), Rotation: every(3 * time.Hour)}, record: first,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionFalse, dueIn: time.Hour},
		{name: "a key that expires before its next scheduled rotation warns",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(30 * time.Minute), Rotation: every(3 * time.Hour)}, record: first,
			phase: authv1alpha1.PhaseActive, ready: authv1alpha1.ReasonActive, soon: metav1.ConditionTrue, dueIn: 30 * time.Minute},
		{name: "an expired key no longer warns, and is not rotated",
			spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(-time.Second), Rotation: every(time.Hour)}, record: first,
			phase: authv1alpha1.PhaseExpired, ready: authv1alpha1.ReasonExpired, soon: metav1.ConditionFalse,
			check: func(t *testing.T, st authv1alpha1.ApiKeyStatus) {
				if st.NextRotationAt != nil {
					t.Errorf("nextRotationAt = %v", st.NextRotationAt)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			record := tt.record
			st, next := computeStatus(observation{
				key: keyFixture(tt.spec, authv1alpha1.ApiKeyStatus{}), record: &record, previous: tt.previous,
				secret: secretDelivered, now: statusNow, expiryWarning: tt.warning,
			})
			if st.Phase != tt.phase {
				t.Errorf("phase = %s, want %s", st.Phase, tt.phase)
			}
			if c := meta.FindStatusCondition(st.Conditions, authv1alpha1.ConditionReady); c == nil || c.Reason != tt.ready {
				t.Errorf("Ready = %+v, want reason %s", c, tt.ready)
			}
			if c := meta.FindStatusCondition(st.Conditions, authv1alpha1.ConditionExpiringSoon); c == nil || c.Status != tt.soon {
				t.Errorf("ExpiringSoon = %+v, want %s", c, tt.soon)
			}
			if next.dueIn != tt.dueIn {
				t.Errorf("looked at again in %v, want %v", next.dueIn, tt.dueIn)
			}
			if tt.check != nil {
				tt.check(t, st)
			}
		})
	}
}

func TestLifecycleEvents(t *testing.T) {
	status := func(spec authv1alpha1.ApiKeySpec) authv1alpha1.ApiKeyStatus {
		st, _ := computeStatus(observation{key: keyFixture(spec, authv1alpha1.ApiKeyStatus{}), record: recordFixture(nil),
			secret: secretDelivered, now: statusNow})
		return st
	}
	soon := &metav1.Time{Time: statusNow.Add(time.Hour)}
	active := status(authv1alpha1.ApiKeySpec{})
	suspended := status(authv1alpha1.ApiKeySpec{Suspended: true})
	expiring := status(authv1alpha1.ApiKeySpec{ExpiresAt: soon})
	tests := []struct {
		name       string
		prev, next authv1alpha1.ApiKeyStatus
		want       string
	}{
		{"suspending says so", active, suspended, EventKeySuspended},
		{"resuming says so", suspended, active, EventKeyResumed},
		{"the expiry warning is a Warning when it starts", active, expiring, EventKeyExpiringSoon},
		{"and only then", expiring, expiring, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := statusEvents(&tt.prev, &tt.next)
			switch {
			case tt.want == "" && len(evs) != 0:
				t.Fatalf("events %+v, want none", evs)
			case tt.want != "" && (len(evs) != 1 || evs[0].reason != tt.want):
				t.Fatalf("events %+v, want %s", evs, tt.want)
			}
		})
	}
}

// TestDueIn: what a new leader queues of each key, from the status the
// last leader's passes wrote: now what the status has not caught up with,
// later the next instant the clock changes it, never a key with nothing due.
func TestDueIn(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	key := func(change func(k *authv1alpha1.ApiKey)) *authv1alpha1.ApiKey {
		k := newKey("tenant", "ci", authv1alpha1.ApiKeySpec{})
		k.Generation, k.Status.ObservedGeneration, k.Status.Phase = 2, 2, authv1alpha1.PhaseActive
		k.Finalizers = []string{authv1alpha1.Finalizer}
		if change != nil {
			change(k)
		}
		return k
	}
	soon := func(k *authv1alpha1.ApiKey) {
		meta.SetStatusCondition(&k.Status.Conditions, metav1.Condition{Type: authv1alpha1.ConditionExpiringSoon, Status: metav1.ConditionTrue})
	}
	const week = 7 * 24 * time.Hour
	for _, tc := range []struct {
		name string
		key  *authv1alpha1.ApiKey
		want time.Duration
	}{
		{"an Active key that never expires: nothing", key(nil), -1},
		{"a spec the status has not caught up with: now", key(func(k *authv1alpha1.ApiKey) { k.Generation = 3 }), 0},
		{"a deletion its finalizer holds: now", key(func(k *authv1alpha1.ApiKey) { k.DeletionTimestamp = at(-time.Second) }), 0},
		{"a deletion already let go: nothing", key(func(k *authv1alpha1.ApiKey) { k.DeletionTimestamp, k.Finalizers = at(-time.Second), nil }), -1},
		{"a key never delivered: now", key(func(k *authv1alpha1.ApiKey) { k.Status.Phase = authv1alpha1.PhasePending }), 0},
		{"a revoked key its status shows revoked: nothing", key(func(k *authv1alpha1.ApiKey) {
			k.Spec.Revoked, k.Status.Phase = true, authv1alpha1.PhaseRevoked
		}), -1},
		{"expiry beyond the warning: when the warning starts", key(func(k *authv1alpha1.ApiKey) { k.Spec.ExpiresAt = at(week + time.Hour) }), time.Hour},
		{"within the warning, ExpiringSoon shown: at expiry", key(func(k *authv1alpha1.ApiKey) { k.Spec.ExpiresAt = at(time.Hour); soon(k) }), time.Hour},
		{"within the warning, ExpiringSoon not shown yet: now", key(func(k *authv1alpha1.ApiKey) { k.Spec.ExpiresAt = at(time.Hour) }), 0},
		{"expired, the status not Expired yet: now", key(func(k *authv1alpha1.ApiKey) { k.Spec.ExpiresAt = at(-time.Minute) }), 0},
		{"expired and shown: nothing", key(func(k *authv1alpha1.ApiKey) {
			k.Spec.ExpiresAt, k.Status.Phase = at(-time.Minute), authv1alpha1.PhaseExpired
		}), -1},
		{"a scheduled rotation: then", key(func(k *authv1alpha1.ApiKey) { k.Status.NextRotationAt = at(2 * time.Hour) }), 2 * time.Hour},
		{"a scheduled rotation passed: now", key(func(k *authv1alpha1.ApiKey) { k.Status.NextRotationAt = at(-time.Second) }), 0},
		{"a grace period ending: then", key(func(k *authv1alpha1.ApiKey) {
			k.Status.PreviousKeys = []authv1alpha1.PreviousKey{{ValidUntil: *at(30 * time.Minute)}}
		}), 30 * time.Minute},
		{"a grace period over, the key still listed: now", key(func(k *authv1alpha1.ApiKey) {
			k.Status.PreviousKeys = []authv1alpha1.PreviousKey{{ValidUntil: *at(-time.Second)}}
		}), 0},
	} {
		if got := dueIn(tc.key, week, now); got != tc.want {
			t.Errorf("%s: dueIn = %s, want %s", tc.name, got, tc.want)
		}
	}
}
