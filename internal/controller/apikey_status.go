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
	key    *authv1alpha1.ApiKey
	record *authv1alpha1.ApiKeyRecord
	secret secretState
	now    time.Time
	// secretCheckInterval is the least wait between two checks of the
	// key's Secret.
	secretCheckInterval time.Duration
	// serviceAccount is the manager's, namespace:name, for the command
	// that opts a namespace in.
	serviceAccount string
}

// lookAgain is when a pass asks for the key to be looked at again.
type lookAgain struct {
	// scheduled is false when only a change brings the key back (it is
	// revoked).
	scheduled bool
	// checkAfter is the least wait before the next check of the Secret;
	// the shared budget picks its slot (secretChecks).
	checkAfter time.Duration
	// expiresIn, if positive, is how soon the key expires: it is looked at
	// then, whatever the budget.
	expiresIn time.Duration
}

// computeStatus is the ApiKey's status after a pass that observed o, and
// when to look again. It is pure: the pass's phases gather, this decides,
// and Reconcile writes the result once. It leaves observedGeneration as it
// was; only a pass that succeeded stamps it.
func computeStatus(o observation) (authv1alpha1.ApiKeyStatus, lookAgain) {
	b := &statusBuilder{st: *o.key.Status.DeepCopy(), gen: o.key.Generation}
	b.fromRecord(o.record)
	if o.key.Spec.Revoked {
		b.revoked(o)
		return b.st, lookAgain{}
	}
	next := lookAgain{scheduled: true, checkAfter: o.secretCheckInterval}
	if o.secret == secretDeferred {
		// The budget's first free slot; until then a key not minted yet
		// stays as it was.
		next.checkAfter = 0
		if o.record == nil {
			return b.st, next
		}
	}
	if b.delivery(o, &next) {
		return b.st, next
	}
	next.expiresIn = b.readiness(o)
	return b.st, next
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

// fromRecord takes the hint and the last use (which only moves forward)
// from the delivered record.
func (b *statusBuilder) fromRecord(record *authv1alpha1.ApiKeyRecord) {
	if record == nil {
		return
	}
	b.st.KeyHint = record.Spec.Hint
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
	b.st.Phase = authv1alpha1.PhaseRevoked
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
			fmt.Sprintf("Secret %q was deleted; the key still works. If its holder lost it, revoke this ApiKey and create a new one", secretName))
	case secretChanged:
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretChanged,
			fmt.Sprintf("Secret %q no longer holds the key Latchkey delivered (%s); that key still works, and the value now in the Secret authenticates nothing. If the delivered key is lost, revoke this ApiKey and create a new one", secretName, b.st.KeyHint))
	case secretNotOwned:
		if o.record == nil {
			b.nameTaken(secretName)
			return true
		}
		b.set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned,
			fmt.Sprintf("Secret %q was replaced by one Latchkey did not create; the key still works", secretName))
	case secretAccessDenied:
		if b.accessDenied(o) {
			next.checkAfter = min(authv1alpha1.KeyDeliveryRetry, next.checkAfter)
			return true
		}
	}
	return false
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
	msg := fmt.Sprintf("Latchkey may not get or create Secrets in namespace %q. To let it deliver keys here: kubectl create rolebinding %s -n %s --clusterrole=%s --serviceaccount=%s",
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
// held up by its Secret: minting, expired or active. It returns how soon an
// active key expires, if it does.
func (b *statusBuilder) readiness(o observation) (expiresIn time.Duration) {
	switch {
	case o.record == nil:
		b.st.Phase = authv1alpha1.PhasePending
		b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting, "The key is being minted")
		return 0
	case o.key.Expired(o.now):
		b.st.Phase = authv1alpha1.PhaseExpired
		b.set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired,
			fmt.Sprintf("The key expired at %s", o.key.Spec.ExpiresAt.UTC().Format(time.RFC3339)))
		return 0
	}
	b.st.Phase = authv1alpha1.PhaseActive
	b.set(authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive, "The key authenticates requests")
	if exp := o.key.Spec.ExpiresAt; exp != nil {
		return exp.Sub(o.now)
	}
	return 0
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
		}
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
