package controller

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// The controllers cache no ApiKey and no record: at 100,000 keys the typed
// objects, a store's keys and its indexes were most of the manager's heap
// (≈ 3 KB a key), and the collector's work over them the p99 of every
// verification. Their passes come instead from the key index's watches
// (verifier.Verifier feeds them its ApiKeys and records), and a pass reads
// the one ApiKey or record it needs from the API server.

// indexSource is a controller's source fed by the key index's watches.
// The watches run on every replica, the controller only on the leader:
// until it starts, what they bring adds to no queue. When it starts, its
// workers wait for the index to sync, and catchUp then adds whatever needs
// a pass, beside them (a list of every ApiKey must not hold them up).
type indexSource struct {
	index *verifier.Verifier
	// catchUp adds the passes due, when the controller starts.
	catchUp func(ctx context.Context, s *indexSource) error
	queue   atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
	done    chan error
}

func newIndexSource(index *verifier.Verifier, catchUp func(ctx context.Context, s *indexSource) error) *indexSource {
	return &indexSource{index: index, catchUp: catchUp, done: make(chan error, 1)}
}

// add queues req if the controller runs.
func (s *indexSource) add(req reconcile.Request) {
	if q := s.queue.Load(); q != nil {
		(*q).Add(req)
	}
}

// addLow queues req behind the passes changes cause, if the controller runs.
func (s *indexSource) addLow(req reconcile.Request) { s.addLowAfter(req, 0) }

// addLowAfter is addLow in d.
func (s *indexSource) addLowAfter(req reconcile.Request, d time.Duration) {
	q := s.queue.Load()
	if q == nil {
		return
	}
	if pq, ok := (*q).(priorityqueue.PriorityQueue[reconcile.Request]); ok {
		pq.AddWithOpts(priorityqueue.AddOpts{After: d, Priority: new(handler.LowPriority)}, req)
		return
	}
	(*q).AddAfter(req, d)
}

// running says whether the controller has started and the index synced.
func (s *indexSource) running() bool { return s.queue.Load() != nil && s.index.Synced() }

// Start is the controller's start, on the leader.
func (s *indexSource) Start(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	s.queue.Store(&q)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for !s.index.Synced() {
			select {
			case <-ctx.Done():
				s.done <- ctx.Err()
				return
			case <-tick.C:
			}
		}
		s.done <- nil
		for {
			err := s.catchUp(ctx, s)
			if err == nil || ctx.Err() != nil {
				return
			}
			log.FromContext(ctx).Error(err, "Catching up with the key index; trying again")
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()
	return nil
}

// WaitForSync holds the controller's workers until the index has synced.
func (s *indexSource) WaitForSync(ctx context.Context) error {
	select {
	case err := <-s.done:
		if err != nil {
			return fmt.Errorf("waiting for the key index: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SyncTimeout is how long a controller fed by the index waits for it to
// sync when it starts: the first lists of every ApiKey and record, which
// at a million keys take minutes on a core (controller-runtime's default
// is 2 minutes).
const SyncTimeout = 15 * time.Minute

// needsPass says whether the ApiKey, as the watch shows it, asks for a
// pass: a spec its status has not caught up with (a create, an edit, a
// pass that failed), or a deletion its finalizer still holds. Status
// writes, last use and label edits do not: the controller's own writes
// never make it loop.
func needsPass(k *authv1alpha1.ApiKey) bool {
	if !k.DeletionTimestamp.IsZero() {
		return controllerutil.ContainsFinalizer(k, authv1alpha1.Finalizer)
	}
	return k.Generation != k.Status.ObservedGeneration
}

func requestFor(obj client.Object) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}}
}

// apiKeyEvents feeds the ApiKey controller its passes from the index's
// watch of ApiKeys.
type apiKeyEvents struct{ *indexSource }

func (e *apiKeyEvents) Add(k *authv1alpha1.ApiKey) {
	if needsPass(k) {
		e.add(requestFor(k))
	}
}

// Set is an ApiKey changed. The finalizer a new key's first pass adds
// brings no second pass: the first is under way, and if it fails it is
// retried.
func (e *apiKeyEvents) Set(k *authv1alpha1.ApiKey) {
	firstPassUnderWay := k.Generation == 1 && k.Status.ObservedGeneration == 0 && k.DeletionTimestamp.IsZero() &&
		controllerutil.ContainsFinalizer(k, authv1alpha1.Finalizer)
	if needsPass(k) && !firstPassUnderWay {
		e.add(requestFor(k))
	}
}

func (e *apiKeyEvents) Remove(k *authv1alpha1.ApiKey) {
	e.add(requestFor(k))
}

// Replace is a relist: it may follow changes the watch missed.
func (e *apiKeyEvents) Replace(list []*authv1alpha1.ApiKey) {
	for _, k := range list {
		if needsPass(k) {
			e.add(requestFor(k))
		}
	}
}

// createdEvents forgets the records this process created once the index's
// watch shows them.
type createdEvents struct{ created *createdRecords }

func (e createdEvents) Set(r *authv1alpha1.ApiKeyRecord) {
	e.created.forget(types.UID(r.Spec.KeyUID), r.Name)
}
func (e createdEvents) Remove(r *authv1alpha1.ApiKeyRecord) { e.Set(r) }
func (e createdEvents) Replace(list []*authv1alpha1.ApiKeyRecord) {
	for _, r := range list {
		e.Set(r)
	}
}

// orphanEvents feeds the record controller: a record whose ApiKey the
// index does not hold, and the records of an ApiKey deleted.
type orphanEvents struct{ *indexSource }

func (e orphanEvents) Set(r *authv1alpha1.ApiKeyRecord) {
	if e.running() && !e.index.HasKey(types.UID(r.Spec.KeyUID)) {
		e.add(reconcile.Request{NamespacedName: types.NamespacedName{Name: r.Name}})
	}
}
func (e orphanEvents) Remove(*authv1alpha1.ApiKeyRecord) {}
func (e orphanEvents) Replace([]*authv1alpha1.ApiKeyRecord) {
	if e.running() {
		e.addOrphans()
	}
}

func (e orphanEvents) addOrphans() {
	for _, name := range e.index.Orphans() {
		e.addLow(reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	}
}

// deletedKeyEvents brings the record controller the records of a deleted
// ApiKey.
type deletedKeyEvents struct{ orphanEvents }

func (e deletedKeyEvents) Set(*authv1alpha1.ApiKey) {}
func (e deletedKeyEvents) Remove(k *authv1alpha1.ApiKey) {
	for _, name := range e.index.RecordNames(k.UID) {
		e.add(reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	}
}
func (e deletedKeyEvents) Replace([]*authv1alpha1.ApiKey) {
	if e.running() {
		e.addOrphans()
	}
}

// usageEvents brings the Usage controller its tenant's Usage when one of
// the tenant's ApiKeys changes; the pass counts them from the index and
// writes at most every WriteInterval.
type usageEvents struct{ *indexSource }

func usageOf(namespace string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: authv1alpha1.UsageName}}
}

func (e usageEvents) Set(k *authv1alpha1.ApiKey)    { e.add(usageOf(k.Namespace)) }
func (e usageEvents) Remove(k *authv1alpha1.ApiKey) { e.add(usageOf(k.Namespace)) }
func (e usageEvents) Replace(list []*authv1alpha1.ApiKey) {
	for _, k := range list {
		e.add(usageOf(k.Namespace))
	}
}
