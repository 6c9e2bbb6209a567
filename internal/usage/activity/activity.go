// Package activity records what keys did on the request path, in memory,
// and writes it to the API server in batches: each key's last use to its
// ApiKey and record, each tenant's verification counts to its usage ledger.
// It is apart from the verifier, whose index never writes.
package activity

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// DefaultLastUsedInterval is how often activity is written out: at most
// one last-use write per key, and one count per tenant, per interval and
// replica.
const DefaultLastUsedInterval = time.Minute

// DefaultLastUseWritesPerSecond bounds how many keys' last use a replica
// writes per second, averaged over an interval (each is two status
// patches: the ApiKey's and the record's). More keys in use than that
// allows are each written less often than every interval, so that the API
// traffic of last use, and the watch events it sends back to every
// replica, stay the same whatever the number of keys.
const DefaultLastUseWritesPerSecond = 20

// VerificationCounter records a tenant's verification counts of a day; the
// usage store is one.
type VerificationCounter interface {
	RecordVerifications(ctx context.Context, tenant, date string, allowed, denied int64) error
}

// Recorder remembers when each key last authenticated a request, and how
// many verifications each tenant's keys passed and failed per day, and
// writes them out in batches: last use to the ApiKey's and the record's
// status, counts to the tenant's usage ledger. The request path only
// touches maps; a crash loses at most one interval.
type Recorder struct {
	client   client.Client
	counter  VerificationCounter
	clock    clock.PassiveClock
	interval time.Duration
	metrics  *metrics.Metrics
	// perFlush is how many keys' last use one flush writes at most; the
	// others wait for the next.
	perFlush int
	// sleep waits between the writes of a flush Start makes (sleepFor).
	sleep func(ctx context.Context, d time.Duration) bool

	// The maps hold pointers so that a request for a key already in them
	// (every request but a key's first in an interval) only looks it up
	// and stores a number: assigning into them per request was half of
	// Allowed's cost under load.
	mu      sync.Mutex
	pending map[types.UID]*use
	counts  map[tenantDay]*verifications
}

type use struct {
	tenant, name string
	// record is the hash naming the key's record, made its name only
	// when written, not per request.
	record [32]byte
	// at is when, in Unix nanoseconds.
	at int64
}

// tenantDay keys a tenant's counts by UTC day (days since the Unix epoch):
// a number, so that counting a verification formats no date.
type tenantDay struct {
	tenant string
	day    int64
}

const secondsPerDay = 24 * 60 * 60

func dayOf(t time.Time) int64 { return t.Unix() / secondsPerDay }

func (td tenantDay) date() string {
	return time.Unix(td.day*secondsPerDay, 0).UTC().Format(time.DateOnly)
}

type verifications struct{ allowed, denied int64 }

// Option configures a Recorder.
type Option func(*Recorder)

// WithWritesPerSecond bounds the keys whose last use is written per second
// (default DefaultLastUseWritesPerSecond).
func WithWritesPerSecond(n float64) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.perFlush = max(1, int(n*r.interval.Seconds()))
		}
	}
}

// New returns a recorder that writes through c and counter every interval,
// counting last-use writes in m (which may be nil).
func New(c client.Client, counter VerificationCounter, clk clock.PassiveClock, interval time.Duration, m *metrics.Metrics, opts ...Option) *Recorder {
	if interval <= 0 {
		interval = DefaultLastUsedInterval
	}
	r := &Recorder{
		client: c, counter: counter, clock: clk, interval: interval, metrics: m, sleep: sleepFor,
		pending: map[types.UID]*use{}, counts: map[tenantDay]*verifications{},
	}
	WithWritesPerSecond(DefaultLastUseWritesPerSecond)(r)
	for _, o := range opts {
		o(r)
	}
	return r
}

// Allowed notes that id authenticated a request now.
func (l *Recorder) Allowed(id verifier.Identity) {
	now := l.clock.Now()
	td := tenantDay{id.Tenant, dayOf(now)}
	l.mu.Lock()
	if u := l.pending[id.KeyUID]; u != nil && u.record == id.RecordHash {
		u.at = now.UnixNano()
	} else {
		l.pending[id.KeyUID] = &use{tenant: id.Tenant, name: id.KeyName, record: id.RecordHash, at: now.UnixNano()}
	}
	l.countLocked(td).allowed++
	l.mu.Unlock()
}

// countLocked is td's counts, made if there are none yet.
func (l *Recorder) countLocked(td tenantDay) *verifications {
	c := l.counts[td]
	if c == nil {
		c = &verifications{}
		l.counts[td] = c
	}
	return c
}

// Denied notes that a key of tenant was refused now.
func (l *Recorder) Denied(tenant string) {
	if tenant == "" {
		return
	}
	td := tenantDay{tenant, dayOf(l.clock.Now())}
	l.mu.Lock()
	l.countLocked(td).denied++
	l.mu.Unlock()
}

// Start flushes every interval until ctx ends, then once more. Its
// flushes spread their last-use writes evenly over the interval: written
// back to back, a minute's writes were a burst of up to 2 × perFlush
// status patches every minute, whose API-server work and watch events took
// seconds of CPU on every replica at once, where paced they are a small
// constant load.
func (l *Recorder) Start(ctx context.Context) error {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	spacing := l.interval / time.Duration(l.perFlush)
	pace := func() bool { return l.sleep(ctx, spacing) }
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l.Flush(flushCtx)
			return nil
		case <-t.C:
			l.flush(ctx, pace)
		}
	}
}

// sleepFor waits d, or until ctx ends (false).
func sleepFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// NeedLeaderElection is false: every replica writes the uses it saw.
func (l *Recorder) NeedLeaderElection() bool { return false }

// Flush writes every pending use and count, and returns how many keys'
// last use it wrote. What fails to be written is kept for the next flush.
func (l *Recorder) Flush(ctx context.Context) int { return l.flush(ctx, nil) }

// flush is Flush with pace, when set, called between last-use writes: when
// it returns false the uses not yet written are kept for the next flush.
func (l *Recorder) flush(ctx context.Context, pace func() bool) int {
	l.mu.Lock()
	batch, counts := l.pending, l.counts
	l.pending = make(map[types.UID]*use, len(batch))
	l.counts = make(map[tenantDay]*verifications, len(counts))
	l.mu.Unlock()

	if l.counter != nil {
		for td, c := range counts {
			if err := l.counter.RecordVerifications(ctx, td.tenant, td.date(), c.allowed, c.denied); err != nil {
				log.FromContext(ctx).Error(err, "Failed to count verifications; keeping them for the next flush", "tenant", td.tenant)
				l.mu.Lock()
				k := l.countLocked(td)
				k.allowed, k.denied = k.allowed+c.allowed, k.denied+c.denied
				l.mu.Unlock()
			}
		}
	}

	written, tried, paced := 0, 0, true
	for uid, u := range batch {
		if tried == l.perFlush || !paced {
			l.keep(uid, u)
			continue
		}
		if tried > 0 && pace != nil && !pace() {
			paced = false
			l.keep(uid, u)
			continue
		}
		tried++
		err := l.write(ctx, uid, u)
		switch {
		case err == nil:
			written++
			l.count("written")
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			l.count("gone")
		default:
			l.count("failed")
			log.FromContext(ctx).Error(err, "Failed to write last use; keeping it for the next flush", "tenant", u.tenant, "apikey", u.name)
			l.keep(uid, u)
		}
	}
	return written
}

// keep puts an unwritten use back for the next flush, unless the key has
// been used again since.
func (l *Recorder) keep(uid types.UID, u *use) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if newer, ok := l.pending[uid]; !ok || newer.at < u.at {
		l.pending[uid] = u
	}
}

func (l *Recorder) count(result string) { l.metrics.LastUseWritten(result) }

// write sets lastUsedAt with merge patches of status alone: they never
// conflict with the controller's own status writes.
func (l *Recorder) write(ctx context.Context, uid types.UID, u *use) error {
	at := metav1.NewTime(time.Unix(0, u.at)).UTC().Format(time.RFC3339)
	// The UID makes the write a precondition: a newer ApiKey of the same
	// name is never stamped with the old key's use.
	key := &authv1alpha1.ApiKey{}
	key.Namespace, key.Name = u.tenant, u.name
	if err := l.client.Status().Patch(ctx, key, client.RawPatch(types.MergePatchType,
		fmt.Appendf(nil, `{"metadata":{"uid":%q},"status":{"lastUsedAt":%q}}`, uid, at))); err != nil {
		return err
	}
	// A record is named by its key's hash: it is never another key's.
	rec := &authv1alpha1.ApiKeyRecord{}
	rec.Name = hex.EncodeToString(u.record[:])
	return l.client.Status().Patch(ctx, rec, client.RawPatch(types.MergePatchType,
		fmt.Appendf(nil, `{"status":{"lastUsedAt":%q}}`, at)))
}
