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
)

// observation is what one pass gathered, from which status is computed:
// the ApiKey as the pass began (its status the last one written), its
// delivered record if it has one, and what the pass found of its Secret.
type observation struct {
	key    *authv1alpha1.ApiKey
	record *authv1alpha1.ApiKeyRecord
	secret secretState
	now    time.Time
	// secretCheckInterval is how soon an Active key is looked at again.
	secretCheckInterval time.Duration
	// serviceAccount is the manager's, namespace:name, for the command
	// that opts a namespace in.
	serviceAccount string
}

// computeStatus is the ApiKey's status after a pass that observed o, and
// how soon to look again (0: only when something changes). It is pure: the
// pass's phases gather, this decides, and Reconcile writes the result once.
// It leaves observedGeneration as it was; only a pass that succeeded stamps it.
func computeStatus(o observation) (authv1alpha1.ApiKeyStatus, time.Duration) {
	st := *o.key.Status.DeepCopy()
	gen := o.key.Generation
	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
	secretName := o.key.SecretName()
	if o.record != nil {
		st.KeyHint = o.record.Spec.Hint
		if used := o.record.Status.LastUsedAt; used != nil && (st.LastUsedAt == nil || st.LastUsedAt.Before(used)) {
			st.LastUsedAt = used
		}
	}

	if o.key.Spec.Revoked {
		if o.record != nil && o.record.Spec.RevokedAt != nil {
			st.RevokedAt = o.record.Spec.RevokedAt
		}
		if st.RevokedAt == nil {
			st.RevokedAt = &metav1.Time{Time: o.now}
		}
		st.Phase = authv1alpha1.PhaseRevoked
		set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonRevoked,
			"The key was revoked and never authenticates again")
		return st, 0
	}

	switch o.secret {
	case secretDelivered:
		set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionTrue, authv1alpha1.ReasonDelivered,
			fmt.Sprintf("Key delivered to Secret %q", secretName))
	case secretMissing:
		set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretMissing,
			fmt.Sprintf("Secret %q was deleted; the key still works. If its holder lost it, revoke this ApiKey and create a new one", secretName))
	case secretChanged:
		set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretChanged,
			fmt.Sprintf("Secret %q no longer holds the key Latchkey delivered (%s); that key still works, and the value now in the Secret authenticates nothing. If the delivered key is lost, revoke this ApiKey and create a new one", secretName, st.KeyHint))
	case secretNotOwned:
		if o.record != nil {
			set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned,
				fmt.Sprintf("Secret %q was replaced by one Latchkey did not create; the key still works", secretName))
			break
		}
		// The message says no more than the phase does: that the name is not
		// available. The ApiKey's author may not read Secrets, and learns
		// nothing of the one in the way.
		msg := fmt.Sprintf("Latchkey cannot deliver the key to Secret %q: that name is not available to this ApiKey, and Latchkey only ever writes a Secret it creates itself. Choose another spec.secretName (in a new ApiKey)", secretName)
		st.Phase = authv1alpha1.PhaseFailed
		set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretNotOwned, msg)
		set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonNotDelivered, msg)
		return st, o.secretCheckInterval
	case secretAccessDenied:
		sa := o.serviceAccount
		if sa == "" {
			sa = authv1alpha1.DefaultServiceAccount
		}
		msg := fmt.Sprintf("Latchkey may not get or create Secrets in namespace %q. To let it deliver keys here: kubectl create rolebinding %s -n %s --clusterrole=%s --serviceaccount=%s",
			o.key.Namespace, authv1alpha1.KeyDeliveryClusterRole, o.key.Namespace, authv1alpha1.KeyDeliveryClusterRole, sa)
		if o.record == nil {
			// Before minting the key waits; once minted it keeps working and
			// only the check is unknown.
			st.Phase = authv1alpha1.PhasePending
			set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied, msg)
			set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonSecretAccessDenied, msg)
			return st, min(authv1alpha1.KeyDeliveryRetry, o.secretCheckInterval)
		}
		set(authv1alpha1.ConditionKeyDelivered, metav1.ConditionUnknown, authv1alpha1.ReasonSecretAccessDenied, msg)
	}

	if o.record == nil {
		st.Phase = authv1alpha1.PhasePending
		set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonMinting, "The key is being minted")
		return st, o.secretCheckInterval
	}
	if o.key.Expired(o.now) {
		st.Phase = authv1alpha1.PhaseExpired
		set(authv1alpha1.ConditionReady, metav1.ConditionFalse, authv1alpha1.ReasonExpired,
			fmt.Sprintf("The key expired at %s", o.key.Spec.ExpiresAt.UTC().Format(time.RFC3339)))
		return st, o.secretCheckInterval
	}
	st.Phase = authv1alpha1.PhaseActive
	set(authv1alpha1.ConditionReady, metav1.ConditionTrue, authv1alpha1.ReasonActive, "The key authenticates requests")
	next := o.secretCheckInterval
	if exp := o.key.Spec.ExpiresAt; exp != nil && exp.Sub(o.now) < next {
		next = exp.Sub(o.now)
	}
	return st, next
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
