package controller

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// compactAfter is the most items a queue must once have held for it to be
// worth replacing after it drained: below it the maps' buckets are small.
const compactAfter = 1024

// compactMargin keeps a replacement away from items about to become ready:
// the queue being replaced may be handing them to a worker right then.
const compactMargin = time.Second

// newCompactingQueue is the NewQueue of Latchkey's controllers:
// controller-runtime's priority queue, replaced by a fresh one once a burst
// has drained. Go maps never hand back the buckets they grew, and the
// queue's map of items and its metrics' map of add times grew to the
// largest burst the controller saw — minting 100,000 keys left 13.5 MB of a
// settled replica's 56 MB heap in those two maps, empty, for the life of
// the process (a heap profile after make bench-load -keys 100000).
func newCompactingQueue(log logr.Logger) func(string, workqueue.TypedRateLimiter[reconcile.Request]) workqueue.TypedRateLimitingInterface[reconcile.Request] {
	return func(name string, limiter workqueue.TypedRateLimiter[reconcile.Request]) workqueue.TypedRateLimitingInterface[reconcile.Request] {
		q := &compactingQueue{
			limiter: limiter,
			now:     time.Now,
			queued:  map[reconcile.Request]queuedItem{},
			newInner: func() priorityqueue.PriorityQueue[reconcile.Request] {
				return priorityqueue.New(name, func(o *priorityqueue.Opts[reconcile.Request]) {
					o.Log = log.WithValues("controller", name)
					o.RateLimiter = limiter
				})
			},
		}
		q.inner = q.newInner()
		return q
	}
}

// compactingQueue keeps its own small record of what its inner queue holds
// (queued: added and not yet handed out), so that it can hand the items
// still waiting to a fresh inner queue.
type compactingQueue struct {
	limiter  workqueue.TypedRateLimiter[reconcile.Request]
	newInner func() priorityqueue.PriorityQueue[reconcile.Request]
	now      func() time.Time

	mu    sync.Mutex
	inner priorityqueue.PriorityQueue[reconcile.Request]
	// generation counts replacements: a Get that waited on a replaced
	// queue asks the current one again.
	generation uint64
	queued     map[reconcile.Request]queuedItem
	added      uint64
	// inFlight counts items handed out and not Done: a queue is replaced
	// only with none, since the inner queue alone knows not to hand an item
	// out twice at once.
	inFlight int
	// most is the largest len(queued) since the last replacement.
	most     int
	shutDown bool
}

// queuedItem is what the inner queue holds of an item: readyAt zero means
// ready now. It merges adds as priorityqueue does: the earliest readiness
// and the highest priority win.
type queuedItem struct {
	readyAt  time.Time
	priority int
	order    uint64
}

var _ priorityqueue.PriorityQueue[reconcile.Request] = &compactingQueue{}

func (q *compactingQueue) AddWithOpts(o priorityqueue.AddOpts, items ...reconcile.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutDown {
		return
	}
	now := q.now()
	priority := 0
	if o.Priority != nil {
		priority = *o.Priority
	}
	for _, key := range items {
		after := o.After
		if o.RateLimited {
			// Resolved here, not by the inner queue, so that queued
			// knows when the item becomes ready.
			if rl := q.limiter.When(key); after == 0 || rl < after {
				after = rl
			}
		}
		var readyAt time.Time
		if after > 0 {
			readyAt = now.Add(after)
		}
		q.record(key, readyAt, priority)
		q.inner.AddWithOpts(priorityqueue.AddOpts{After: after, Priority: new(priority)}, key)
	}
	q.most = max(q.most, len(q.queued))
}

func (q *compactingQueue) record(key reconcile.Request, readyAt time.Time, priority int) {
	was, ok := q.queued[key]
	if !ok {
		q.queued[key] = queuedItem{readyAt: readyAt, priority: priority, order: q.added}
		q.added++
		return
	}
	if was.readyAt.IsZero() || (!readyAt.IsZero() && was.readyAt.Before(readyAt)) {
		readyAt = was.readyAt
	}
	order := was.order
	if priority > was.priority {
		order = q.added
		q.added++
	} else {
		priority = was.priority
	}
	q.queued[key] = queuedItem{readyAt: readyAt, priority: priority, order: order}
}

func (q *compactingQueue) Add(item reconcile.Request) {
	q.AddWithOpts(priorityqueue.AddOpts{}, item)
}

func (q *compactingQueue) AddAfter(item reconcile.Request, after time.Duration) {
	q.AddWithOpts(priorityqueue.AddOpts{After: after}, item)
}

func (q *compactingQueue) AddRateLimited(item reconcile.Request) {
	q.AddWithOpts(priorityqueue.AddOpts{RateLimited: true}, item)
}

func (q *compactingQueue) GetWithPriority() (reconcile.Request, int, bool) {
	for {
		q.mu.Lock()
		inner, generation, shutDown := q.inner, q.generation, q.shutDown
		q.mu.Unlock()
		if shutDown {
			return reconcile.Request{}, 0, true
		}
		item, priority, shutdown := inner.GetWithPriority()

		q.mu.Lock()
		if q.generation != generation {
			// Replaced while waiting: whatever the old queue handed out
			// was still in queued, so the new queue holds it too.
			q.mu.Unlock()
			continue
		}
		if !shutdown {
			delete(q.queued, item)
			q.inFlight++
		}
		q.mu.Unlock()
		return item, priority, shutdown
	}
}

func (q *compactingQueue) Get() (reconcile.Request, bool) {
	item, _, shutdown := q.GetWithPriority()
	return item, shutdown
}

func (q *compactingQueue) Done(item reconcile.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inFlight--
	q.inner.Done(item)
	if q.drained() {
		q.replace()
	}
}

// drained says whether the inner queue is worth replacing and can be: it
// grew past compactAfter, holds a quarter of that or less, and nothing in
// it is handed out, ready, or about to be.
func (q *compactingQueue) drained() bool {
	if q.shutDown || q.inFlight > 0 || q.most < compactAfter || len(q.queued) > q.most/4 {
		return false
	}
	soon := q.now().Add(compactMargin)
	for _, it := range q.queued {
		if it.readyAt.Before(soon) {
			return false
		}
	}
	// Ready items would also stay counted in the depth gauge the old
	// queue shares with the new one.
	return q.inner.Len() == 0
}

// replace hands what waits to a fresh inner queue, in the order it was
// added, and stops the old one. The metrics count each item handed over as
// one more retry.
func (q *compactingQueue) replace() {
	old := q.inner
	q.inner = q.newInner()
	q.generation++
	type entry struct {
		key reconcile.Request
		queuedItem
	}
	waiting := make([]entry, 0, len(q.queued))
	for key, it := range q.queued {
		waiting = append(waiting, entry{key, it})
	}
	slices.SortFunc(waiting, func(a, b entry) int { return cmp.Compare(a.order, b.order) })
	now := q.now()
	fresh := make(map[reconcile.Request]queuedItem, len(waiting))
	for _, e := range waiting {
		fresh[e.key] = e.queuedItem
		q.inner.AddWithOpts(priorityqueue.AddOpts{After: e.readyAt.Sub(now), Priority: new(e.priority)}, e.key)
	}
	q.queued = fresh
	q.most = len(fresh)
	old.ShutDown()
}

func (q *compactingQueue) Forget(item reconcile.Request) { q.limiter.Forget(item) }

func (q *compactingQueue) NumRequeues(item reconcile.Request) int { return q.limiter.NumRequeues(item) }

// Len is the number of items ready to be handed out.
func (q *compactingQueue) Len() int {
	q.mu.Lock()
	inner := q.inner
	q.mu.Unlock()
	return inner.Len()
}

func (q *compactingQueue) ShuttingDown() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.shutDown
}

func (q *compactingQueue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.shutDown {
		q.shutDown = true
		q.inner.ShutDown()
	}
}

// ShutDownWithDrain is ShutDown, as it is for priorityqueue: the
// controller never asks to drain.
func (q *compactingQueue) ShutDownWithDrain() { q.ShutDown() }
