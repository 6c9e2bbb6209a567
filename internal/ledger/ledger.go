// Package ledger reads and writes tenants' UsageLedgers: every change is one
// optimistic-concurrency write of the whole ledger, retried on conflict, so
// reports from several replicas never lose an update and a change is durable
// once a call returns.
package ledger

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/usage"
)

// Name is the name of the one ledger in each tenant namespace.
const Name = "default"

// Store changes ledgers through the API server.
type Store struct {
	// Client writes ledgers; Reader reads them from the API server, not a
	// cache, so that a write is based on the latest version.
	Client client.Client
	Reader client.Reader
	Clock  clock.PassiveClock
	// Writes counts ledger writes by result (written, conflict); optional.
	Writes *prometheus.CounterVec

	mu     sync.Mutex
	queues map[string]*queue
}

// conflictBackoff retries conflicting writes from several replicas.
var conflictBackoff = wait.Backoff{Steps: 20, Duration: 5 * time.Millisecond, Factor: 1.6, Jitter: 1, Cap: time.Second}

// Apply applies a batch of executions to the tenant's ledger. It returns
// false when the batch had been applied before; errors from usage.Apply
// mean nothing was applied.
func (s *Store) Apply(ctx context.Context, tenant string, b *usage.Batch) (bool, error) {
	var applied bool
	err := s.change(ctx, tenant, func(spec *authv1alpha1.UsageLedgerSpec) (bool, error) {
		var err error
		applied, err = usage.Apply(spec, b, s.Clock.Now())
		return applied, err
	})
	return applied, err
}

// CountVerifications adds a day's verification counts to the tenant's ledger.
func (s *Store) CountVerifications(ctx context.Context, tenant, date string, allowed, denied int64) error {
	return s.change(ctx, tenant, func(spec *authv1alpha1.UsageLedgerSpec) (bool, error) {
		usage.CountVerifications(spec, date, allowed, denied, s.Clock.Now())
		return true, nil
	})
}

// change queues mutate for the tenant's ledger and waits until it is
// written. Changes queued while a write is under way are applied together
// in the next write (group commit), so one replica never conflicts with
// itself and many small reports cost few writes. Each write reads the
// ledger, applies the group in order, and writes it back with the version
// it read, re-reading and re-applying the group on conflict.
func (s *Store) change(ctx context.Context, tenant string, mutate func(*authv1alpha1.UsageLedgerSpec) (bool, error)) error {
	o := &op{mutate: mutate, done: make(chan error, 1)}
	s.mu.Lock()
	if s.queues == nil {
		s.queues = map[string]*queue{}
	}
	q := s.queues[tenant]
	if q == nil {
		q = &queue{}
		s.queues[tenant] = q
	}
	q.pending = append(q.pending, o)
	lead := !q.committing
	q.committing = true
	s.mu.Unlock()

	if lead {
		go s.commitAll(tenant, q)
	}
	select {
	case err := <-o.done:
		return err
	case <-ctx.Done():
		// The change may still be written; a retried report is recognised.
		return ctx.Err()
	}
}

type queue struct {
	pending    []*op
	committing bool
}

type op struct {
	mutate func(*authv1alpha1.UsageLedgerSpec) (bool, error)
	err    error
	done   chan error
}

// commitTimeout bounds one group's write, whoever is waiting for it.
const commitTimeout = 30 * time.Second

func (s *Store) commitAll(tenant string, q *queue) {
	for {
		s.mu.Lock()
		group := q.pending
		q.pending = nil
		if len(group) == 0 {
			q.committing = false
			delete(s.queues, tenant)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		err := s.commit(ctx, tenant, group)
		cancel()
		for _, o := range group {
			if o.err != nil {
				o.done <- o.err
			} else {
				o.done <- err
			}
		}
	}
}

func (s *Store) commit(ctx context.Context, tenant string, group []*op) error {
	err := retryOnConflict(ctx, func() error {
		l := &authv1alpha1.UsageLedger{}
		err := s.Reader.Get(ctx, types.NamespacedName{Namespace: tenant, Name: Name}, l)
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		changed := false
		for _, o := range group {
			var c bool
			c, o.err = o.mutate(&l.Spec)
			changed = changed || c
		}
		if !changed {
			return nil
		}
		if exists {
			err = s.Client.Update(ctx, l)
		} else {
			l.Namespace, l.Name = tenant, Name
			l.Labels = map[string]string{authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue}
			err = s.Client.Create(ctx, l)
		}
		s.count(err)
		return err
	})
	if err != nil {
		return fmt.Errorf("writing the usage ledger of %s: %w", tenant, err)
	}
	return nil
}

func retryOnConflict(ctx context.Context, f func() error) error {
	backoff := conflictBackoff
	for {
		err := f()
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
			return err
		}
		if backoff.Steps <= 1 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff.Step()):
		}
	}
}

func (s *Store) count(err error) {
	if s.Writes == nil {
		return
	}
	switch {
	case err == nil:
		s.Writes.WithLabelValues("written").Inc()
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
		s.Writes.WithLabelValues("conflict").Inc()
	default:
		s.Writes.WithLabelValues("failed").Inc()
	}
}
