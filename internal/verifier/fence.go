package verifier

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

const (
	// DefaultMaxFences bounds the fence table. Real revocations are
	// confirmed by the watch within milliseconds, so the table holds only
	// those of the last few seconds; ten thousand is far past any real
	// burst, and past it a revocation is refused rather than let in unfenced.
	DefaultMaxFences = 10_000
	// DefaultFenceConfirmAfter is how long a fence waits for the watch to
	// show the revocation before the API server is asked directly. The
	// API server persists an admitted write right after its (5 s at most)
	// admission call, so a revocation not persisted by then is one that
	// failed, or was never made: a forged review.
	DefaultFenceConfirmAfter = 5 * time.Second
)

// ErrTooManyFences refuses a fence past the table's bound.
type ErrTooManyFences struct{ Max int }

func (e ErrTooManyFences) Error() string {
	return fmt.Sprintf("%d keys are fenced already, the most this replica holds (--max-fences); "+
		"fences end when their revocations are seen persisted", e.Max)
}

// A Stop is what an admitted change takes away from a key, which a fence
// holds off until the watch shows the change.
type Stop struct {
	// Revoked: every key of the ApiKey, for good (revocation, deletion).
	Revoked bool
	// Suspended: every key of the ApiKey, until it is resumed.
	Suspended bool
	// RotationRequested, when set, is a rotation with no grace period:
	// the keys it supersedes (ApiKey.Supersedes) stop.
	RotationRequested time.Time
	// Scopes the key no longer has.
	Scopes []string
}

// IsZero says whether the change takes nothing away.
func (s Stop) IsZero() bool {
	return !s.Revoked && !s.Suspended && s.RotationRequested.IsZero() && len(s.Scopes) == 0
}

// TakenAway is what an update from old to updated takes away at once, so
// that the admission webhook fences it: revocation, suspension, a
// rotation with a grace period of 0s, and scopes removed.
func TakenAway(old, updated *authv1alpha1.ApiKey) Stop {
	var s Stop
	s.Revoked = updated.Spec.Revoked && !old.Spec.Revoked
	s.Suspended = updated.Spec.Suspended && !old.Spec.Suspended
	// A new request with no grace, or the grace of a request already made
	// cut to none: either way the keys it supersedes stop now.
	if r := updated.RotationRequested(); !r.IsZero() && updated.GracePeriod() == 0 &&
		(r.After(old.RotationRequested()) || old.GracePeriod() != 0) {
		s.RotationRequested = r
	}
	for _, scope := range old.Spec.Scopes {
		if !updated.HasScope(scope) {
			s.Scopes = append(s.Scopes, scope)
		}
	}
	return s
}

// seenIn says whether k, as the watch or the API server shows it, holds
// everything s takes away: then the index decides as the fence would.
func (s Stop) seenIn(k *authv1alpha1.ApiKey) bool {
	gone := k.Spec.Revoked || !k.DeletionTimestamp.IsZero()
	if s.Revoked && !gone {
		return false
	}
	if s.Suspended && !gone && !k.Spec.Suspended {
		return false
	}
	if !s.RotationRequested.IsZero() && !gone && (k.RotationRequested().Before(s.RotationRequested) || k.GracePeriod() != 0) {
		return false
	}
	for _, scope := range s.Scopes {
		if !gone && k.HasScope(scope) {
			return false
		}
	}
	return true
}

// covers says whether s stops everything o stops.
func (s Stop) covers(o Stop) bool {
	if (o.Revoked && !s.Revoked) || (o.Suspended && !s.Suspended) || o.RotationRequested.After(s.RotationRequested) {
		return false
	}
	for _, scope := range o.Scopes {
		if !slices.Contains(s.Scopes, scope) {
			return false
		}
	}
	return true
}

// merge is a fence that stops what both s and o stop.
func (s Stop) merge(o Stop) Stop {
	s.Revoked = s.Revoked || o.Revoked
	s.Suspended = s.Suspended || o.Suspended
	if o.RotationRequested.After(s.RotationRequested) {
		s.RotationRequested = o.RotationRequested
	}
	for _, scope := range o.Scopes {
		if !slices.Contains(s.Scopes, scope) {
			// Clipped, so that a reader's copy of the old list never shares
			// the array this appends to.
			s.Scopes = append(slices.Clip(s.Scopes), scope)
		}
	}
	return s
}

// fence is one key held off, and the check that may lift it.
type fence struct {
	uid  types.UID
	key  types.NamespacedName
	stop Stop
	// gen is the generation of the ApiKey the change was made to: only a
	// later one can show the change, so that a lagging watch's older
	// object that happens to look the same (suspended, resumed, suspended
	// again) never lifts the fence.
	gen   int64
	until time.Time
	// check is when the API server is asked whether the change is real.
	check time.Time
}

// fenceTable holds keys off between the admission of their revocation
// and the watch showing it. Every operation is O(1): the TTL and the
// confirmation delay are the same for every fence, so fences expire, and
// come due for their check, in the order they were made — the table is a
// FIFO beside a map. It has its own lock, so that fencing never waits on
// the index's.
type fenceTable struct {
	clock        clock.PassiveClock
	ttl          time.Duration
	confirmAfter time.Duration
	max          int

	mu    sync.RWMutex
	byUID map[types.UID]*fence
	// held mirrors len(byUID), so that the request path, which almost
	// always finds the table empty, need not take its lock.
	held atomic.Int64
	// order holds every fence in byUID, oldest first; checks are the
	// fences whose check has not come yet, oldest first. Both are rings
	// over a slice that grows to the table's bound at most.
	order  ring
	checks ring
	// wake is signalled when checks goes from empty to not.
	wake chan struct{}
}

func newFenceTable(clk clock.PassiveClock, ttl, confirmAfter time.Duration, maxFences int) *fenceTable {
	return &fenceTable{
		clock: clk, ttl: ttl, confirmAfter: confirmAfter, max: maxFences,
		byUID: map[types.UID]*fence{},
		wake:  make(chan struct{}, 1),
	}
}

// add fences what stop takes away from a key. A key fenced already keeps
// its fence (and its check), stopping both: the TTL counts from the first
// admission, so that repeating a revocation does not hold a key off for
// longer.
func (t *fenceTable) add(key *authv1alpha1.ApiKey, stop Stop) error {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	gen := key.Generation
	held, ok := t.byUID[key.UID]
	switch {
	case ok && held.stop.covers(stop):
		return nil
	case ok:
		// Something new is taken away: a fence of its own for both, with
		// its own TTL and check, so that the confirmation of the first
		// change (which may never land) cannot lift the second's. The old
		// fence's places in the rings are skipped when they come up.
		stop, gen = held.stop.merge(stop), max(gen, held.gen)
	case len(t.byUID) >= t.max:
		return ErrTooManyFences{Max: t.max}
	}
	if t.order.len() >= 2*t.max {
		t.compactLocked()
	}
	f := &fence{uid: key.UID, key: types.NamespacedName{Namespace: key.Namespace, Name: key.Name}, stop: stop, gen: gen,
		until: now.Add(t.ttl), check: now.Add(t.confirmAfter)}
	t.byUID[f.uid] = f
	t.held.Store(int64(len(t.byUID)))
	t.order.push(f)
	if t.confirmAfter < t.ttl {
		if t.checks.len() == 0 {
			select {
			case t.wake <- struct{}{}:
			default:
			}
		}
		t.checks.push(f)
	}
	return nil
}

// holds is what uid's fence stops at now; the zero Stop when none holds.
// The Stop's Scopes are the fence's own, which nobody changes.
func (t *fenceTable) holds(uid types.UID, now time.Time) Stop {
	if t.held.Load() == 0 {
		return Stop{}
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	f, ok := t.byUID[uid]
	if !ok || !now.Before(f.until) {
		return Stop{}
	}
	return f.stop
}

// dropSeen lifts uid's fence once k, newer than the object the change was
// made to (or being deleted, which is for good), shows everything it
// stops: the change is seen, and the index decides from it. Its places in the rings are
// skipped when they come up.
func (t *fenceTable) dropSeen(k *authv1alpha1.ApiKey) {
	if t.held.Load() == 0 {
		return
	}
	t.mu.Lock()
	if f, ok := t.byUID[k.UID]; ok && (k.Generation > f.gen || !k.DeletionTimestamp.IsZero()) && f.stop.seenIn(k) {
		delete(t.byUID, k.UID)
		t.held.Store(int64(len(t.byUID)))
	}
	t.mu.Unlock()
}

// drop lifts uid's fence: the key is gone, or its records revoked.
func (t *fenceTable) drop(uid types.UID) {
	t.mu.Lock()
	delete(t.byUID, uid)
	t.held.Store(int64(len(t.byUID)))
	t.mu.Unlock()
}

// len is how many fences hold now.
func (t *fenceTable) len() int {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	return len(t.byUID)
}

// expireLocked removes the fences whose TTL has passed, and the places of
// dropped ones, from the front of the order: amortised O(1) a call.
func (t *fenceTable) expireLocked(now time.Time) {
	for t.order.len() > 0 {
		f := t.order.front()
		if t.byUID[f.uid] == f && now.Before(f.until) {
			return
		}
		if t.byUID[f.uid] == f {
			delete(t.byUID, f.uid)
			t.held.Store(int64(len(t.byUID)))
		}
		t.order.pop()
	}
}

// compactLocked drops the places of lifted fences from both rings. It
// runs when the order holds twice the bound, so at least half of it is
// lifted fences: amortised over the pushes that filled it, O(1) a fence.
func (t *fenceTable) compactLocked() {
	for _, r := range []*ring{&t.order, &t.checks} {
		var live ring
		for r.len() > 0 {
			if f := r.front(); t.byUID[f.uid] == f {
				live.push(f)
			}
			r.pop()
		}
		*r = live
	}
}

// nextCheck waits until the oldest pending check is due and returns it,
// or nil when ctx ends. Checks of fences already lifted are skipped.
func (t *fenceTable) nextCheck(ctx context.Context, clk clock.Clock) *fence {
	for {
		t.mu.Lock()
		for t.checks.len() > 0 && t.byUID[t.checks.front().uid] != t.checks.front() {
			t.checks.pop()
		}
		var due time.Duration
		var f *fence
		if t.checks.len() > 0 {
			f = t.checks.front()
			if due = f.check.Sub(clk.Now()); due <= 0 {
				t.checks.pop()
				t.mu.Unlock()
				return f
			}
		}
		t.mu.Unlock()
		var timer clock.Timer
		var fire <-chan time.Time
		if f != nil {
			timer = clk.NewTimer(due)
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// lift drops f's fence if it is still the one held for its key.
func (t *fenceTable) lift(f *fence) {
	t.mu.Lock()
	if t.byUID[f.uid] == f {
		delete(t.byUID, f.uid)
		t.held.Store(int64(len(t.byUID)))
	}
	t.mu.Unlock()
}

// FenceConfirmer asks the API server, once per fence, whether a fenced
// key's revocation is real: a fence the watch has not confirmed after
// DefaultFenceConfirmAfter is dropped unless the API server shows the key
// revoked, being deleted, or gone. One check runs at a time, oldest first,
// so a burst of fences costs the API server a steady trickle of reads at
// most. It runs on every replica: each holds its own fences.
type FenceConfirmer struct {
	Verifier *Verifier
	// Reader reads from the API server, not the cache: the cache is the
	// watch, whose silence is what is being checked.
	Reader client.Reader
	Clock  clock.Clock
}

// NeedLeaderElection is false: every replica's fences need confirming.
func (c *FenceConfirmer) NeedLeaderElection() bool { return false }

// Start confirms fences until ctx ends.
func (c *FenceConfirmer) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("fences")
	for {
		f := c.Verifier.fences.nextCheck(ctx, c.Clock)
		if f == nil {
			return nil
		}
		if real, err := c.real(ctx, f); err != nil {
			// Fail closed: the fence stands until its TTL.
			logger.V(1).Info("Could not confirm a fence; it holds until its TTL", "apiKey", f.key, "error", err.Error())
		} else if !real {
			logger.Info("Dropped a fence the API server does not confirm: the key does not show the change that was admitted",
				"apiKey", f.key, "uid", f.uid)
			c.Verifier.fences.lift(f)
		}
	}
}

// real says whether the API server shows f's key with what the fence
// stops taken away, or gone.
func (c *FenceConfirmer) real(ctx context.Context, f *fence) (bool, error) {
	key := &authv1alpha1.ApiKey{}
	err := c.Reader.Get(ctx, f.key, key)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && key.UID != f.uid):
		// Gone, or the name reused — or a review that named the key's UID
		// under another name: only the UID says which.
		return c.revokedByUID(ctx, f)
	case err != nil:
		return false, err
	}
	return f.stop.seenIn(key), nil
}

// revokedByUID looks for f's key by UID among its namespace's ApiKeys: the
// change is real if the key is nowhere, or shows it where it is.
func (c *FenceConfirmer) revokedByUID(ctx context.Context, f *fence) (bool, error) {
	var list authv1alpha1.ApiKeyList
	if err := c.Reader.List(ctx, &list, client.InNamespace(f.key.Namespace)); err != nil {
		return false, err
	}
	for i := range list.Items {
		if k := &list.Items[i]; k.UID == f.uid {
			return f.stop.seenIn(k), nil
		}
	}
	return true, nil
}

// ring is a FIFO of fences over a slice that is reused as it drains.
type ring struct {
	buf        []*fence
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) front() *fence { return r.buf[r.head] }

func (r *ring) push(f *fence) {
	if r.size == len(r.buf) {
		grown := make([]*fence, max(16, 2*len(r.buf)))
		n := copy(grown, r.buf[r.head:])
		copy(grown[n:], r.buf[:r.head])
		r.buf, r.head = grown, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = f
	r.size++
}

func (r *ring) pop() {
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.size--
}

// Option tunes a Verifier.
type Option func(*options)

type options struct {
	maxFences    int
	confirmAfter time.Duration
	gate         Gate
}

// WithGate has every answer wait for g's leave (the serving lease):
// without it, the verifier answers whenever asked.
func WithGate(g Gate) Option {
	return func(o *options) { o.gate = g }
}

// WithMaxFences bounds the fence table (default DefaultMaxFences).
func WithMaxFences(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxFences = n
		}
	}
}

// WithFenceConfirmAfter sets how long a fence waits for the watch before
// the API server is asked (default DefaultFenceConfirmAfter).
func WithFenceConfirmAfter(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.confirmAfter = d
		}
	}
}
