package controller

import (
	"context"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// DefaultSecretChecksPerSecond is how many Secret reads a second the
// periodic checks of all keys together may make.
const DefaultSecretChecksPerSecond = 5

// secretChecks is the one budget all keys' periodic Secret checks share.
// Latchkey may not list or watch Secrets, so each check is a GET by name;
// checking every key on a fixed period would cost API calls in proportion
// to the number of keys, forever. Instead:
//
//   - one walk over the keys in use releases them in turn, one a slot:
//     slots are 1/perSecond apart, stretched so that a round over every key
//     lasts at least the check interval. With few keys each is checked
//     every interval, with more than interval × perSecond about every
//     keys/perSecond seconds;
//   - a released key's next pass reads its Secret. Between their checks
//     keys wait in no queue: the walk holds its place in the key index
//     (which knows them by name) and the few released and not yet
//     reconciled; nothing per key (a round's list of names had held 3 MB
//     at 100,000 keys for the 5.5 hours of the round);
//   - a pass no change caused and the walk did not release (a resync, a
//     new leader's catch-up, a delivery retry) reads the Secret only
//     with a token from a bucket refilled at perSecond and holding
//     ceil(perSecond), from which each release takes one too: over any t
//     seconds such passes and the walk make at most perSecond × t +
//     ceil(perSecond) GETs, whatever the key count. One that finds the
//     bucket empty reads nothing and leaves the key to the walk;
//   - a pass a change caused (a create, a spec edit) reads at once and
//     takes nothing, so that what a user does is answered without delay;
//   - the walk holds at most ceil(perSecond) releases whose pass has not
//     come yet. A queue busy with other passes (a mint of 100,000 keys
//     held the walk's back for 53 minutes) makes it wait, rather than
//     pile up releases that would all read their Secret at once when the
//     queue drains (34 GETs a second for minutes after that mint).
type secretChecks struct {
	clock    clock.Clock
	interval time.Duration
	// perKey is the least spacing of releases: 1/perSecond.
	perKey  time.Duration
	limiter *rate.Limiter
	// keys are those the walk visits: not revoked, not being deleted.
	keys keysInUse

	mu sync.Mutex
	// released holds when each key not yet claimed was released: one
	// older than the interval is forgotten, so that a pass that never
	// comes stalls the walk for an interval at most.
	released map[types.NamespacedName]time.Time
}

// keysInUse names the keys the walk visits (verifier.Verifier), in the
// order of their places in the index.
type keysInUse interface {
	// CountInUse is how many there are.
	CountInUse() int
	// NextInUse is the first at or after a place (1 is the first), and
	// the place after it; ok is false when there is none.
	NextInUse(from int32) (key types.NamespacedName, next int32, ok bool)
}

// newSecretChecks returns the budget of a walk over keys; zero or negative
// settings mean the defaults.
func newSecretChecks(clk clock.Clock, interval time.Duration, perSecond float64, keys keysInUse) *secretChecks {
	if interval <= 0 {
		interval = DefaultSecretCheckInterval
	}
	if perSecond <= 0 {
		perSecond = DefaultSecretChecksPerSecond
	}
	return &secretChecks{
		clock:    clk,
		interval: interval,
		perKey:   time.Duration(float64(time.Second) / perSecond),
		limiter:  rate.NewLimiter(rate.Limit(perSecond), int(math.Ceil(perSecond))),
		keys:     keys,
		released: map[types.NamespacedName]time.Time{},
	}
}

// take reports whether a pass no change caused may read a Secret now.
func (c *secretChecks) take() bool {
	return c.limiter.AllowN(c.clock.Now(), 1)
}

// release lets key's next pass read its Secret.
func (c *secretChecks) release(key types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released[key] = c.clock.Now()
}

// waiting is how many released keys wait for their pass, forgetting those
// released longer than an interval ago.
func (c *secretChecks) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, at := range c.released {
		if c.clock.Since(at) > c.interval {
			delete(c.released, key)
		}
	}
	return len(c.released)
}

// claim reports whether the walk released key for a check, and forgets
// that it did: one release, one read.
func (c *secretChecks) claim(key types.NamespacedName) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.released[key]
	delete(c.released, key)
	return ok
}

// walk releases keys for a check, in rounds over those it visits, until
// ctx ends; reconcile brings a released key to its next pass. A key
// revoked or deleted during a round takes no slot.
func (c *secretChecks) walk(ctx context.Context, reconcile func(types.NamespacedName)) {
	for {
		n := c.keys.CountInUse()
		if n == 0 {
			if !c.sleep(ctx, c.interval) {
				return
			}
			continue
		}
		slot := max(c.perKey, c.interval/time.Duration(n))
		for at := int32(1); ; {
			if _, _, ok := c.keys.NextInUse(at); !ok {
				break
			}
			if !c.sleep(ctx, slot) {
				return
			}
			for c.waiting() >= c.limiter.Burst() || !c.take() {
				if !c.sleep(ctx, c.perKey) {
					return
				}
			}
			// Asked again: the key found before the sleep may have gone.
			key, next, ok := c.keys.NextInUse(at)
			if !ok {
				break
			}
			at = next
			c.release(key)
			reconcile(key)
		}
	}
}

// sleep waits d on the clock, or until ctx ends: then it reports false.
func (c *secretChecks) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-c.clock.After(d):
		return true
	}
}

// requeueAfter is how soon a pass asks for its key again: at the instant
// its status is due to change by the clock, or to retry its delivery,
// whichever comes first; 0 if only a change or the walk brings it back.
func requeueAfter(next lookAgain) time.Duration {
	switch {
	case next.retryIn > 0 && next.dueIn > 0:
		return min(next.retryIn, next.dueIn)
	case next.retryIn > 0:
		return next.retryIn
	default:
		return next.dueIn
	}
}
