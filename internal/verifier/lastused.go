package verifier

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// DefaultLastUsedInterval is how often last use is written out: at most
// one write per key per interval, per replica.
const DefaultLastUsedInterval = time.Minute

// LastUsed remembers when each key last authenticated a request and writes
// it to the ApiKey's and the record's status in batches. The request path
// only touches a map; a crash loses at most one interval of last-use times.
type LastUsed struct {
	client   client.Client
	clock    clock.PassiveClock
	interval time.Duration
	writes   *prometheus.CounterVec

	mu      sync.Mutex
	pending map[types.UID]use
}

type use struct {
	tenant, name string
	at           time.Time
}

// NewLastUsed returns a recorder that writes through c every interval.
func NewLastUsed(c client.Client, clk clock.PassiveClock, interval time.Duration, writes *prometheus.CounterVec) *LastUsed {
	if interval <= 0 {
		interval = DefaultLastUsedInterval
	}
	return &LastUsed{client: c, clock: clk, interval: interval, writes: writes, pending: map[types.UID]use{}}
}

// Record notes that id authenticated a request now.
func (l *LastUsed) Record(id Identity) {
	now := l.clock.Now()
	l.mu.Lock()
	l.pending[id.KeyUID] = use{tenant: id.Tenant, name: id.KeyName, at: now}
	l.mu.Unlock()
}

// Start flushes every interval until ctx ends, then once more.
func (l *LastUsed) Start(ctx context.Context) error {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l.Flush(flushCtx)
			return nil
		case <-t.C:
			l.Flush(ctx)
		}
	}
}

// NeedLeaderElection is false: every replica writes the uses it saw.
func (l *LastUsed) NeedLeaderElection() bool { return false }

// Flush writes every pending use and returns how many keys were written.
// A use whose write fails transiently is kept for the next flush.
func (l *LastUsed) Flush(ctx context.Context) int {
	l.mu.Lock()
	batch := l.pending
	l.pending = make(map[types.UID]use, len(batch))
	l.mu.Unlock()

	written := 0
	for uid, u := range batch {
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
			l.mu.Lock()
			if newer, ok := l.pending[uid]; !ok || newer.at.Before(u.at) {
				l.pending[uid] = u
			}
			l.mu.Unlock()
		}
	}
	return written
}

func (l *LastUsed) count(result string) {
	if l.writes != nil {
		l.writes.WithLabelValues(result).Inc()
	}
}

// write sets lastUsedAt with merge patches of status alone: they never
// conflict with the controller's own status writes.
func (l *LastUsed) write(ctx context.Context, uid types.UID, u use) error {
	// The UID makes the write a precondition: a newer ApiKey of the same
	// name is never stamped with the old key's use.
	patch := client.RawPatch(types.MergePatchType,
		fmt.Appendf(nil, `{"metadata":{"uid":%q},"status":{"lastUsedAt":%q}}`, uid, metav1.NewTime(u.at).UTC().Format(time.RFC3339)))
	key := &authv1alpha1.ApiKey{}
	key.Namespace, key.Name = u.tenant, u.name
	if err := l.client.Status().Patch(ctx, key, patch); err != nil {
		return err
	}
	rec := &authv1alpha1.ApiKeyRecord{}
	rec.Name = string(uid)
	return l.client.Status().Patch(ctx, rec, patch)
}
