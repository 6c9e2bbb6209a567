package controller

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
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
//   - checks are scheduled in slots 1/perSecond apart, each key's next one
//     in the first free slot at least the check interval away: with few
//     keys each is checked every interval, with more than interval ×
//     perSecond about every keys/perSecond, in turn;
//   - a pass no change caused (a slot, a resync after a restart) reads the
//     Secret only with a token from a bucket refilled at perSecond and
//     holding ceil(perSecond): over any t seconds such passes make at most
//     perSecond × t + ceil(perSecond) GETs, whatever the key count. One
//     that finds the bucket empty reads nothing and takes the first free
//     slot, so that a restart's resync of every key is spread out too;
//   - a pass a change caused (a create, a spec edit) reads at once and
//     takes nothing, so that what a user does is answered without delay.
//
// It keeps nothing per key: a slot lives only in the work queue's requeue.
type secretChecks struct {
	clock    clock.PassiveClock
	interval time.Duration
	// perKey is the slots' spacing: 1/perSecond.
	perKey  time.Duration
	limiter *rate.Limiter

	mu sync.Mutex
	// free is the first slot not taken.
	free time.Time
}

// newSecretChecks returns the budget; zero or negative settings mean the
// defaults.
func newSecretChecks(clk clock.PassiveClock, interval time.Duration, perSecond float64) *secretChecks {
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
	}
}

// take reports whether a pass no change caused may read a Secret now.
func (c *secretChecks) take() bool {
	return c.limiter.AllowN(c.clock.Now(), 1)
}

// requeueAfter is how soon a key is reconciled again: at its next check's
// slot, or at the instant its status is due to change if that comes
// first; 0 if only a change brings it back.
func (c *secretChecks) requeueAfter(next lookAgain) time.Duration {
	if !next.scheduled {
		return 0
	}
	if next.dueIn > 0 && next.dueIn <= next.checkAfter {
		// The pass then takes a slot then.
		return next.dueIn
	}
	slot := c.slot(next.checkAfter)
	if next.dueIn > 0 {
		return min(slot, next.dueIn)
	}
	return slot
}

// slot takes the first free slot at least d from now and returns how far
// away it is.
func (c *secretChecks) slot(d time.Duration) time.Duration {
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	at := now.Add(d)
	if at.Before(c.free) {
		at = c.free
	}
	c.free = at.Add(c.perKey)
	return at.Sub(now)
}
