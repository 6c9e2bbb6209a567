package controller

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// secretState is what a pass found of the key's Secret.
type secretState int

const (
	// secretUnchecked: the pass did not look (the key is revoked, or it is
	// being minted); what status said of delivery stands.
	secretUnchecked secretState = iota
	// secretDelivered: the Secret is the key's and holds the delivered key.
	secretDelivered
	// secretMissing: the Secret was deleted.
	secretMissing
	// secretNotOwned: a Secret Latchkey did not create for this ApiKey has
	// the name: in the way of minting, or put in place of the delivered one.
	secretNotOwned
	// secretChanged: the key's own Secret no longer holds the delivered key.
	secretChanged
	// secretAccessDenied: the namespace has not let Latchkey at its Secrets.
	secretAccessDenied
	// secretDeferred: the pass would have looked, but the budget of
	// periodic checks had no room; what status said stands, all of it
	// for a key not minted yet.
	secretDeferred
)

// observation is what one pass gathered, from which status is computed:
// the ApiKey as the pass began (its status the last one written), its
// delivered record if it has one, and what the pass found of its Secret.
type observation struct {
	key *authv1alpha1.ApiKey
	// record is the current key's (the delivered one with the highest
	// rotation number), previous the older delivered ones, newest first.
	record   *authv1alpha1.ApiKeyRecord
	previous []authv1alpha1.ApiKeyRecord
	secret   secretState
	now      time.Time
	// expiryWarning is how long before its expiry a key is ExpiringSoon;
	// 0 means DefaultExpiryWarning.
	expiryWarning time.Duration
	// serviceAccount is the manager's, namespace:name, for the command
	// that opts a namespace in.
	serviceAccount string
}

// lookAgain is when a pass asks for the key to be looked at again, besides
// the walk that checks every key's Secret in turn (secretChecks).
type lookAgain struct {
	// retryIn, if positive, is how soon a delivery that could not be made
	// yet (the namespace has not opted in) is tried again, within the
	// budget of periodic checks.
	retryIn time.Duration
	// dueIn, if positive, is how soon the key's status changes by the
	// clock alone (it expires, starts its expiry warning, is rotated on
	// schedule, or a replaced key's grace period ends): it is looked at
	// then, whatever the budget.
	dueIn time.Duration
}

// computeStatus is the ApiKey's status after a pass that observed o, and
// when to look again. It is pure: the pass's phases gather, this decides,
// and Reconcile writes the result once. It leaves observedGeneration as it
// was; only a pass that succeeded stamps it.
func computeStatus(o observation) (authv1alpha1.ApiKeyStatus, lookAgain) {
	b := &statusBuilder{st: *o.key.Status.DeepCopy(), gen: o.key.Generation}
	b.fromRecords(o)
	if o.key.Spec.Revoked {
		b.revoked(o)
		b.expiringSoon(o)
		return b.st, lookAgain{}
	}
	var next lookAgain
	if o.secret == secretDeferred && o.record == nil {
		// Until the walk or a change brings it back, a key not minted yet
		// stays as it was.
		return b.st, next
	}
	if b.delivery(o, &next) {
		return b.st, next
	}
	b.readiness(o)
	next.dueIn = soonest(o.now, clockInstants(o.key, &b.st, b.expiringSoon(o))...)
	return b.st, next
}

// clockInstants are the instants at which the key's status st changes by
// the clock alone: it expires, its expiry warning starts (warnAt), it is
// rotated on schedule, a replaced key's grace period ends.
func clockInstants(key *authv1alpha1.ApiKey, st *authv1alpha1.ApiKeyStatus, warnAt *metav1.Time) []*metav1.Time {
	instants := make([]*metav1.Time, 0, 3+len(st.PreviousKeys))
	instants = append(instants, key.Spec.ExpiresAt, warnAt, st.NextRotationAt)
	for i := range st.PreviousKeys {
		instants = append(instants, &st.PreviousKeys[i].ValidUntil)
	}
	return instants
}

// dueIn is how soon the key, as the last pass left its status, needs a
// pass (0: now; negative: not for the clock), for a new leader, which
// holds no requeue of the last one's: now for a spec or deletion the
// status has not caught up with, a key never delivered, or an instant of
// clockInstants passed that the status does not show yet; else at the
// next of them.
func dueIn(key *authv1alpha1.ApiKey, warning time.Duration, now time.Time) time.Duration {
	if needsPass(key) || key.Spec.Revoked && key.Status.Phase != authv1alpha1.PhaseRevoked {
		return 0
	}
	if key.Spec.Revoked {
		return -1
	}
	st := &key.Status
	if st.Phase == "" || st.Phase == authv1alpha1.PhasePending {
		return 0
	}
	var warnAt *metav1.Time
	if exp := key.Spec.ExpiresAt; exp != nil {
		if warning <= 0 {
			warning = DefaultExpiryWarning
		}
		warnAt = &metav1.Time{Time: exp.Add(-warning)}
		expired := !now.Before(exp.Time)
		if expired && st.Phase != authv1alpha1.PhaseExpired ||
			!expired && !warnAt.After(now) && !meta.IsStatusConditionTrue(st.Conditions, authv1alpha1.ConditionExpiringSoon) {
			return 0
		}
	}
	instants := clockInstants(key, st, warnAt)
	for _, at := range instants[2:] { // a rotation or a grace period's end that passed
		if at != nil && !at.After(now) {
			return 0
		}
	}
	if d := soonest(now, instants...); d > 0 {
		return d
	}
	return -1
}

// soonest is how far from now the earliest of the instants still to come
// is, or 0 if none is.
func soonest(now time.Time, instants ...*metav1.Time) time.Duration {
	var d time.Duration
	for _, at := range instants {
		if at == nil {
			continue
		}
		if in := at.Sub(now); in > 0 && (d == 0 || in < d) {
			d = in
		}
	}
	return d
}

// statusBuilder is the status computeStatus builds, whose conditions are
// stamped with the generation the pass saw.
type statusBuilder struct {
	st  authv1alpha1.ApiKeyStatus
	gen int64
}

func (b *statusBuilder) set(typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&b.st.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: b.gen,
	})
}

// fromRecords takes the hint, the rotation and the next one from the
// current record, the keys still in their grace period from the previous
// ones, and the last use (which only moves forward) from all of them.
func (b *statusBuilder) fromRecords(o observation) {
	record := o.record
	if record == nil {
		return
	}
	b.st.KeyHint, b.st.Rotation, b.st.RotatedAt = record.Spec.Hint, record.Spec.Rotation, nil
	if record.Spec.Rotation > 0 {
		b.st.RotatedAt = record.CreationTimestamp.DeepCopy()
	}
	b.st.NextRotationAt = nil
	if next, ok := nextRotation(o.key, record); ok {
		b.st.NextRotationAt = &metav1.Time{Time: next}
	}
	b.usedAt(record)
	b.st.PreviousKeys = nil
	for i := range o.previous {
		p := &o.previous[i]
		b.usedAt(p)
		if !p.Spec.Revoked && p.Spec.ValidUntil != nil && p.Spec.ValidUntil.After(o.now) {
			b.st.PreviousKeys = append(b.st.PreviousKeys, authv1alpha1.PreviousKey{
				KeyHint: p.Spec.Hint, Rotation: p.Spec.Rotation, ValidUntil: *p.Spec.ValidUntil,
			})
		}
	}
}

// usedAt moves the last use forward to the record's.
func (b *statusBuilder) usedAt(record *authv1alpha1.ApiKeyRecord) {
	if used := record.Status.LastUsedAt; used != nil && (b.st.LastUsedAt == nil || b.st.LastUsedAt.Before(used)) {
		b.st.LastUsedAt = used
	}
}

// revoked is a revoked key's status, dated by its record if it has one.
func (b *statusBuilder) revoked(o observation) {
	if o.record != nil && o.record.Spec.RevokedAt != nil {
		b.st.RevokedAt = o.record.Spec.RevokedAt
	}
	if b.st.RevokedAt == nil {
		b.st.RevokedAt = &metav1.Time{Time: o.now}
	}
	b.st.Phase, b.st.NextRotationAt = authv1alpha1.PhaseRevoked, nil
	b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonRevoked,
		"The key was revoked and never authenticates again")
}

// delivery sets KeyDelivered from what the pass found of the Secret, and
// reports whether that also decided the phase (a key that cannot be
// minted), with when to look again in next.
func (b *statusBuilder) delivery(o observation, next *lookAgain) (final bool) {
	secretName := o.key.SecretName()
	switch o.secret {
	case secretDelivered:
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered,
			fmt.Sprintf("Key delivered to Secret %q", secretName))
	case secretMissing:
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretMissing,
			fmt.Sprintf("Secret %q was deleted; the key still works. If its holder lost it, revoke this ApiKey and create a new one", secretName)+rotationWaits(o))
	case secretChanged:
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretChanged,
			fmt.Sprintf("Secret %q no longer holds the key Latchkey delivered (%s); that key still works, and the value now in the Secret authenticates nothing. If the delivered key is lost, revoke this ApiKey and create a new one", secretName, b.st.KeyHint)+rotationWaits(o))
	case secretNotOwned:
		if o.record == nil {
			b.nameTaken(secretName)
			return true
		}
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned,
			fmt.Sprintf("Secret %q was replaced by one Latchkey did not create; the key still works", secretName)+rotationWaits(o))
	case secretAccessDenied:
		if b.accessDenied(o) {
			next.retryIn = authv1alpha1.KeyDeliveryRetry
			return true
		}
	}
	return false
}

// rotationWaits says, when a rotation is due, that it waits for the
// Secret: a new key is written only into the ApiKey's own Secret, holding
// the key Latchkey delivered.
func rotationWaits(o observation) string {
	if o.record == nil {
		return ""
	}
	if _, due := rotationDue(o.key, o.record, o.now); !due {
		return ""
	}
	return ". The rotation requested waits: Latchkey writes a new key only into the Secret it created, while it holds the current key"
}

// nameTaken fails a key not minted yet whose Secret's name is another's.
// The message says no more than the phase does: that the name is not
// available. The ApiKey's author may not read Secrets, and learns nothing
// of the one in the way.
func (b *statusBuilder) nameTaken(secretName string) {
	msg := fmt.Sprintf("Latchkey cannot deliver the key to Secret %q: that name is not available to this ApiKey, and Latchkey only ever writes a Secret it creates itself. Choose another spec.secretName (in a new ApiKey)", secretName)
	b.st.Phase = authv1alpha1.PhaseFailed
	b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned, msg)
	b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered, msg)
}

// accessDenied says which command opts the namespace in. Before minting the
// key waits, Pending (final); once minted it keeps working and only the
// check is unknown.
func (b *statusBuilder) accessDenied(o observation) (final bool) {
	sa := o.serviceAccount
	if sa == "" {
		sa = authv1alpha1.DefaultServiceAccount
	}
	msg := fmt.Sprintf("Latchkey may not get, create or patch Secrets in namespace %q. To let it deliver keys here: kubectl create rolebinding %s -n %s --clusterrole=%s --serviceaccount=%s",
		o.key.Namespace, authv1alpha1.KeyDeliveryClusterRole, o.key.Namespace, authv1alpha1.KeyDeliveryClusterRole, sa)
	if o.record != nil {
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionUnknown, authv1alpha1.ReasonSecretAccessDenied, msg)
		return false
	}
	b.st.Phase = authv1alpha1.PhasePending
	b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied, msg)
	b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied, msg)
	return true
}

// readiness sets the phase and Ready of a key that is not revoked and not
// held up by its Secret: minting, expired, suspended or active. An expired
// key is never rotated again (its next key would be expired too).
func (b *statusBuilder) readiness(o observation) {
	switch {
	case o.record == nil:
		b.st.Phase = authv1alpha1.PhasePending
		b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting, "The key is being minted")
	case o.key.Expired(o.now):
		b.st.Phase, b.st.NextRotationAt = authv1alpha1.PhaseExpired, nil
		b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired,
			fmt.Sprintf("The key expired at %s", o.key.Spec.ExpiresAt.UTC().Format(time.RFC3339)))
	case o.key.Spec.Suspended:
		b.st.Phase = authv1alpha1.PhaseSuspended
		b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSuspended,
			"The key is suspended: every key of this ApiKey fails until spec.suspended is set back to false")
	default:
		b.st.Phase = authv1alpha1.PhaseActive
		b.set(authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive, "The key authenticates requests")
	}
}

// expiringSoon sets ExpiringSoon: True from expiryWarning before
// spec.expiresAt, unless a scheduled rotation comes first (the rotation is
// what the key's holders watch for; it warns once the last rotation before
// expiry is made). It returns when the warning starts, if that is to come.
// The messages name instants, never how far away they are, so that a pass
// that changes nothing writes nothing.
func (b *statusBuilder) expiringSoon(o observation) (warnAt *metav1.Time) {
	exp := o.key.Spec.ExpiresAt
	notSoon := func(msg string) {
		b.set(authv1alpha1.ConditionExpiringSoon, metav1.ConditionFalse, authv1alpha1.ReasonNotExpiring, msg)
	}
	window := o.expiryWarning
	if window <= 0 {
		window = DefaultExpiryWarning
	}
	switch {
	case o.key.Spec.Revoked:
		notSoon("The key was revoked")
	case exp == nil:
		notSoon("The key does not expire")
	case o.key.Expired(o.now):
		notSoon(fmt.Sprintf("The key expired at %s", exp.UTC().Format(time.RFC3339)))
	case b.st.NextRotationAt != nil && !b.st.NextRotationAt.After(exp.Time):
		notSoon(fmt.Sprintf("The key expires at %s, after its next scheduled rotation at %s",
			exp.UTC().Format(time.RFC3339), b.st.NextRotationAt.UTC().Format(time.RFC3339)))
	case exp.Sub(o.now) <= window:
		b.set(authv1alpha1.ConditionExpiringSoon, metav1.ConditionTrue, authv1alpha1.ReasonExpiresSoon,
			fmt.Sprintf("The key expires at %s, within %s", exp.UTC().Format(time.RFC3339), window))
	default:
		notSoon(fmt.Sprintf("The key expires at %s, more than %s away", exp.UTC().Format(time.RFC3339), window))
		return &metav1.Time{Time: exp.Add(-window)}
	}
	return nil
}

// statusEvent is an Event a change of status tells the ApiKey's users of.
type statusEvent struct {
	eventType, reason, action, note string
}

// statusEvents are the Events for a change of status from prev to next:
// one per change, so a pass that changes nothing says nothing.
func statusEvents(prev, next *authv1alpha1.ApiKeyStatus) []statusEvent {
	var evs []statusEvent
	if next.Phase != prev.Phase {
		switch next.Phase {
		case authv1alpha1.PhaseRevoked:
			evs = append(evs, statusEvent{corev1.EventTypeNormal, EventKeyRevoked, "Revoke", "Key revoked"})
		case authv1alpha1.PhaseExpired:
			evs = append(evs, statusEvent{corev1.EventTypeNormal, EventKeyExpired, "Expire", conditionMessage(next, authv1alpha1.ConditionReady)})
		case authv1alpha1.PhaseSuspended:
			evs = append(evs, statusEvent{corev1.EventTypeNormal, EventKeySuspended, "Suspend", "Key suspended"})
		case authv1alpha1.PhaseActive:
			if prev.Phase == authv1alpha1.PhaseSuspended {
				evs = append(evs, statusEvent{corev1.EventTypeNormal, EventKeyResumed, "Resume", "Key resumed"})
			}
		}
	}
	// Once per key and window: when the warning starts, not on every pass.
	if meta.IsStatusConditionTrue(next.Conditions, authv1alpha1.ConditionExpiringSoon) &&
		!meta.IsStatusConditionTrue(prev.Conditions, authv1alpha1.ConditionExpiringSoon) {
		evs = append(evs, statusEvent{corev1.EventTypeWarning, EventKeyExpiringSoon, "Warn", conditionMessage(next, authv1alpha1.ConditionExpiringSoon)})
	}
	before := meta.FindStatusCondition(prev.Conditions, authv1alpha1.ConditionKeyDelivered)
	after := meta.FindStatusCondition(next.Conditions, authv1alpha1.ConditionKeyDelivered)
	if after == nil || after.Status == metav1.ConditionTrue || (before != nil && before.Status == after.Status && before.Reason == after.Reason) {
		return evs
	}
	reason := map[string]string{
		authv1alpha1.ReasonSecretMissing:      EventSecretMissing,
		authv1alpha1.ReasonSecretChanged:      EventSecretChanged,
		authv1alpha1.ReasonSecretNotOwned:     EventSecretNotOwned,
		authv1alpha1.ReasonSecretAccessDenied: EventSecretAccessDenied,
	}[after.Reason]
	if reason != "" {
		evs = append(evs, statusEvent{corev1.EventTypeWarning, reason, "CheckSecret", after.Message})
	}
	return evs
}

func conditionMessage(st *authv1alpha1.ApiKeyStatus, typ string) string {
	if c := meta.FindStatusCondition(st.Conditions, typ); c != nil {
		return c.Message
	}
	return ""
}
