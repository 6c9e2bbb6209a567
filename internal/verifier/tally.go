package verifier

import (
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// A tally is a namespace's ApiKeys counted by state, kept as the watch
// brings them, so that a Usage pass reads its tenant's counts instead of
// scanning every key: under load at 10,000 keys those scans, one per
// tenant every couple of seconds while last use was written, took 6 % of
// the manager's core over the rounds of make bench-load (8 % in one 10 s
// profile), held the index's lock while they ran, and grow with the
// number of keys.
//
// The counts are the keys' states at the instant of each change, which
// stay true until a counted key expires: flip is the earliest such
// expiry. Past it the tally is stale and the next CountKeys counts the
// namespace afresh.
type tally struct {
	// keys is how many of the namespace's ApiKeys are indexed.
	keys   int
	counts authv1alpha1.UsageKeys
	// flip is the earliest expiry (Unix nanoseconds) of a key that was not
	// expired when counted; 0: none.
	flip  int64
	stale bool
}

// add counts k, whose state at now is state, n times (1 or -1).
func (t *tally) add(k *key, state authv1alpha1.Phase, now time.Time, n int32) {
	if t.stale || t.flip != 0 && now.UnixNano() >= t.flip {
		t.stale = true
		return
	}
	t.count(k, state, now, n)
}

// count adds n to state, k's at now, and brings flip forward to k's expiry
// if that is when its state changes next.
func (t *tally) count(k *key, state authv1alpha1.Phase, now time.Time, n int32) {
	switch state {
	case authv1alpha1.PhaseRevoked:
		t.counts.Revoked += n
	case authv1alpha1.PhaseExpired:
		t.counts.Expired += n
	case authv1alpha1.PhaseActive:
		t.counts.Active += n
	}
	if n > 0 && !k.revoked && k.expiresAt > now.UnixNano() && (t.flip == 0 || k.expiresAt < t.flip) {
		t.flip = k.expiresAt
	}
}

// tallyKeyLocked counts k in its namespace's tally, or takes it out (n = -1).
func (v *Verifier) tallyKeyLocked(k *key, n int32) {
	t := v.tallies[k.namespace]
	if t == nil {
		t = &tally{}
		v.tallies[k.namespace] = t
	}
	t.keys += int(n)
	if t.keys <= 0 {
		delete(v.tallies, k.namespace)
		return
	}
	now := v.clock.Now()
	t.add(k, v.stateLocked(k, now), now, n)
}

// CountKeys counts the namespace's ApiKeys by state at now (ApiKey.State),
// for its Usage; found says whether it has any.
func (v *Verifier) CountKeys(namespace string, now time.Time) (counts authv1alpha1.UsageKeys, found bool) {
	v.mu.RLock()
	ns, _ := v.syms.lookup(namespace)
	t := v.tallies[ns]
	if ns == 0 || t == nil {
		v.mu.RUnlock()
		return counts, false
	}
	if !t.stale && (t.flip == 0 || now.UnixNano() < t.flip) {
		counts = t.counts
		v.mu.RUnlock()
		return counts, true
	}
	v.mu.RUnlock()

	// A key expired since the namespace was counted: count it afresh.
	v.mu.Lock()
	defer v.mu.Unlock()
	if t = v.tallies[ns]; t == nil {
		return counts, false
	}
	fresh := tally{keys: t.keys}
	for si := int32(1); si < v.slots.next; si++ {
		if s := v.slots.at(si); s.hasKey && s.key.namespace == ns {
			fresh.count(&s.key, v.stateLocked(&s.key, now), now, 1)
		}
	}
	*t = fresh
	return t.counts, true
}
