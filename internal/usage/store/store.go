// Package store reads and writes tenants' UsageLedgers, applying the
// arithmetic of package usage to them. Every change is one
// optimistic-concurrency write of the tenant's state object, retried on
// conflict, so reports from several replicas never lose an update and a
// change is durable once a call returns.
//
// The state object stays bounded (about 300 kB at every cap) because it
// remembers only the most recent batch keys; older ones move to segments
// that are kept for two UTC days. A key leaves the state object only in a
// write made after it is in a segment, and a lookup reads the state object
// before the segments, so a key is always found in one or the other: a batch
// is applied at most once for at least 24 hours.
package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage"
)

// maxCachedKeys bounds the segment keys the store keeps in memory for all
// tenants together (12 bytes each: 24 MB); a tenant dropped from the cache
// has its segments read again on its next report.
const maxCachedKeys = 2_000_000

// Store changes ledgers through the API server.
type Store struct {
	// Client writes ledgers; Reader reads them from the API server, not a
	// cache, so that a write is based on the latest version and a lookup
	// in the segments sees every key moved before it.
	Client client.Client
	Reader client.Reader
	Clock  clock.PassiveClock
	// Metrics counts ledger writes; nil counts none.
	Metrics *metrics.Metrics

	mu     sync.Mutex
	queues map[string]*queue
	seen   map[string]*segmentKeys
	cached int
}

// segmentKeys are the keys in a tenant's segments when its state had
// counted moves and batches counted on date.
type segmentKeys struct {
	moves int64
	date  string
	keys  []usage.ID // sorted
}

func (k *segmentKeys) has(id usage.ID) bool {
	_, found := slices.BinarySearchFunc(k.keys, id, compareIDs)
	return found
}

func compareIDs(a, b usage.ID) int { return bytes.Compare(a[:], b[:]) }

// conflictBackoff retries conflicting writes from several replicas.
var conflictBackoff = wait.Backoff{Steps: 20, Duration: 5 * time.Millisecond, Factor: 1.6, Jitter: 1, Cap: time.Second}

// Report records a batch of executions sent with the key named reporter in
// the tenant's ledger, durably once it returns. It returns false when the
// batch had been applied before; errors from usage.ApplyBatch mean nothing
// was applied.
func (s *Store) Report(ctx context.Context, tenant, reporter string, b *usage.Batch) (bool, error) {
	var applied bool
	err := s.change(ctx, tenant, func(l *usage.Ledger, seen func(usage.ID) bool) (bool, error) {
		var err error
		applied, err = usage.ApplyBatch(l, b, reporter, seen, s.Clock.Now())
		return applied, err
	})
	return applied, err
}

// RecordVerifications adds a day's verification counts to the tenant's
// ledger, durably once it returns.
func (s *Store) RecordVerifications(ctx context.Context, tenant, date string, allowed, denied int64) error {
	return s.change(ctx, tenant, func(l *usage.Ledger, _ func(usage.ID) bool) (bool, error) {
		usage.AddVerifications(l, date, allowed, denied, s.Clock.Now())
		return true, nil
	})
}

type mutation func(l *usage.Ledger, seen func(usage.ID) bool) (bool, error)

// change queues mutate for the tenant's ledger and waits until it is
// written. Changes queued while a write is under way are applied together
// in the next write (group commit), so one replica never conflicts with
// itself and many small reports cost few writes. Each write reads the
// ledger, applies the group in order, and writes it back with the version
// it read, re-reading and re-applying the group on conflict.
func (s *Store) change(ctx context.Context, tenant string, mutate mutation) error {
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
	mutate mutation
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
		obj := &authv1alpha1.UsageLedger{}
		err := s.Reader.Get(ctx, types.NamespacedName{Namespace: tenant, Name: authv1alpha1.UsageLedgerStateName}, obj)
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		l, err := usage.Decode(obj.Spec.State)
		if err != nil {
			return err
		}
		now := s.Clock.Now()
		date := l.Today(now)

		known, err := s.keysMoved(ctx, tenant, l.Moves, date)
		if err != nil {
			return err
		}
		// Keys move before the group is applied, leaving the state in this
		// same write, so that the group's own keys find room.
		var moved []usage.ID
		if len(l.Recent) >= usage.MoveAt {
			moved = slices.SortedFunc(slices.Values(l.Recent), compareIDs)
			switch err := s.moveKeys(ctx, tenant, date, moved); {
			case err == nil:
				l.Recent = nil
				l.Moves++
			case apierrors.IsConflict(err) || len(l.Recent) >= usage.MaxRecent:
				return err
			default:
				// The state has room for more keys (MaxRecent): reports go
				// on, and the next write tries the move again.
				log.FromContext(ctx).Error(err, "Could not move batch keys to a segment; keeping them in the state", "tenant", tenant)
				moved = nil
			}
		}
		seen := func(id usage.ID) bool {
			_, justMoved := slices.BinarySearchFunc(moved, id, compareIDs)
			return justMoved || known.has(id)
		}

		changed := moved != nil
		for _, o := range group {
			var c bool
			c, o.err = o.mutate(l, seen)
			changed = changed || c
		}
		if !changed {
			return nil
		}
		obj.Spec = authv1alpha1.UsageLedgerSpec{State: l.Encode()}
		obj.Labels = ledgerLabels(authv1alpha1.LedgerPartState, "")
		if exists {
			err = s.Client.Update(ctx, obj)
		} else {
			obj.Namespace, obj.Name = tenant, authv1alpha1.UsageLedgerStateName
			err = s.Client.Create(ctx, obj)
		}
		s.count(err)
		if err == nil && moved != nil {
			s.remember(tenant, &segmentKeys{moves: l.Moves, date: date, keys: merge(known.keys, moved)})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("writing the usage ledger of %s: %w", tenant, err)
	}
	return nil
}

func ledgerLabels(part, date string) map[string]string {
	l := map[string]string{authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue, authv1alpha1.LabelLedger: part}
	if date != "" {
		l[authv1alpha1.LabelLedgerDate] = date
	}
	return l
}

// keysMoved returns the keys in the tenant's segments of date and the day
// before, as they are once the state has counted moves. It must be called
// after the state was read: a cached set of the same count is then complete,
// and segments read now hold every key moved up to it.
func (s *Store) keysMoved(ctx context.Context, tenant string, moves int64, date string) (*segmentKeys, error) {
	s.mu.Lock()
	k := s.seen[tenant]
	s.mu.Unlock()
	if k != nil && k.moves == moves && k.date == date {
		return k, nil
	}
	k = &segmentKeys{moves: moves, date: date}
	if moves == 0 {
		return k, nil
	}
	days, err := labels.NewRequirement(authv1alpha1.LabelLedgerDate, selection.In, []string{date, previousDay(date)})
	if err != nil {
		return nil, err
	}
	part, _ := labels.NewRequirement(authv1alpha1.LabelLedger, selection.Equals, []string{authv1alpha1.LedgerPartBatchKeys})
	var list authv1alpha1.UsageLedgerList
	if err := s.Reader.List(ctx, &list, client.InNamespace(tenant), client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*days, *part)}); err != nil {
		return nil, err
	}
	for _, seg := range list.Items {
		if seg.Spec.BatchKeys == nil {
			continue
		}
		ids, err := usage.SplitIDs(seg.Spec.BatchKeys.Keys)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", seg.Name, err)
		}
		k.keys = append(k.keys, ids...)
	}
	slices.SortFunc(k.keys, compareIDs)
	s.remember(tenant, k)
	return k, nil
}

// remember caches a tenant's segment keys, evicting other tenants' while
// the cache is over its bound (map order makes them arbitrary ones).
func (s *Store) remember(tenant string, k *segmentKeys) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]*segmentKeys{}
	}
	if old := s.seen[tenant]; old != nil {
		s.cached -= len(old.keys)
	}
	for t, other := range s.seen {
		if s.cached+len(k.keys) <= maxCachedKeys {
			break
		}
		if t != tenant {
			s.cached -= len(other.keys)
			delete(s.seen, t)
		}
	}
	s.seen[tenant] = k
	s.cached += len(k.keys)
}

// moveKeys adds sorted keys to the segments of date: filling the day's
// segments in order, overwriting one left from an older day in the same
// slot. Adding a key already there changes nothing, so a move repeated
// after a failed state write is harmless.
func (s *Store) moveKeys(ctx context.Context, tenant, date string, keys []usage.ID) error {
	slot, err := slotOf(date)
	if err != nil {
		return err
	}
	for n := 0; len(keys) > 0; n++ {
		if n == usage.MaxSegments {
			return fmt.Errorf("the batch keys of %s fill all %d segments", date, usage.MaxSegments)
		}
		name := fmt.Sprintf("batch-keys-%d-%02d", slot, n)
		err := retryOnConflict(ctx, func() error {
			seg := &authv1alpha1.UsageLedger{}
			err := s.Reader.Get(ctx, types.NamespacedName{Namespace: tenant, Name: name}, seg)
			exists := err == nil
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			var have []usage.ID
			if b := seg.Spec.BatchKeys; b != nil && b.Date == date {
				if have, err = usage.SplitIDs(b.Keys); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			add := slices.DeleteFunc(slices.Clone(keys), func(id usage.ID) bool {
				_, found := slices.BinarySearchFunc(have, id, compareIDs)
				return found
			})
			room := max(usage.SegmentKeys-len(have), 0)
			rest := add[min(room, len(add)):]
			if len(add) == len(rest) && exists && seg.Spec.BatchKeys.Date == date {
				keys = rest // full, or holding them all already
				return nil
			}
			seg.Spec = authv1alpha1.UsageLedgerSpec{BatchKeys: &authv1alpha1.LedgerBatchKeys{
				Date: date, Keys: usage.JoinIDs(merge(have, add[:len(add)-len(rest)])),
			}}
			seg.Labels = ledgerLabels(authv1alpha1.LedgerPartBatchKeys, date)
			if exists {
				err = s.Client.Update(ctx, seg)
			} else {
				seg.Namespace, seg.Name = tenant, name
				err = s.Client.Create(ctx, seg)
			}
			s.count(err)
			if err == nil {
				keys = rest
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("moving batch keys to %s: %w", name, err)
		}
	}
	return nil
}

// slotOf is where a day's segments live: three slots, so that today's and
// yesterday's are never overwritten and the third is free to reuse.
func slotOf(date string) (int64, error) {
	t, err := time.Parse(time.DateOnly, date)
	if err != nil {
		return 0, err
	}
	return t.Unix() / 86400 % 3, nil
}

func previousDay(date string) string {
	t, _ := time.Parse(time.DateOnly, date)
	return usage.Day(t.AddDate(0, 0, -1))
}

// merge is the sorted union of two sorted sets.
func merge(a, b []usage.ID) []usage.ID {
	out := make([]usage.ID, 0, len(a)+len(b))
	out = append(out, a...)
	out = append(out, b...)
	slices.SortFunc(out, compareIDs)
	return slices.Compact(out)
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
	switch {
	case err == nil:
		s.Metrics.LedgerWritten("written")
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
		s.Metrics.LedgerWritten("conflict")
	default:
		s.Metrics.LedgerWritten("failed")
	}
}
