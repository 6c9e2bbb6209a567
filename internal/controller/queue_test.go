package controller

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

func request(i int) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "tenant", Name: fmt.Sprintf("key-%06d", i)}}
}

// handedOut runs workers on q and records what they are given, failing if
// an item is handed to two at once.
type handedOut struct {
	t        *testing.T
	mu       sync.Mutex
	busy     map[reconcile.Request]bool
	got      []reconcile.Request
	priority map[reconcile.Request]int
	at       map[reconcile.Request]time.Time
	wg       sync.WaitGroup
}

func work(t *testing.T, q workqueue.TypedRateLimitingInterface[reconcile.Request], workers int) *handedOut {
	h := &handedOut{t: t, busy: map[reconcile.Request]bool{}, priority: map[reconcile.Request]int{}, at: map[reconcile.Request]time.Time{}}
	pq := q.(priorityqueue.PriorityQueue[reconcile.Request])
	for range workers {
		h.wg.Go(func() {
			for {
				item, priority, shutdown := pq.GetWithPriority()
				if shutdown {
					return
				}
				h.mu.Lock()
				if h.busy[item] {
					t.Errorf("%v handed to two workers at once", item)
				}
				h.busy[item] = true
				h.got = append(h.got, item)
				h.priority[item] = priority
				h.at[item] = time.Now()
				h.mu.Unlock()
				time.Sleep(10 * time.Microsecond)
				h.mu.Lock()
				h.busy[item] = false
				h.mu.Unlock()
				q.Done(item)
			}
		})
	}
	return h
}

func (h *handedOut) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

func (h *handedOut) waitFor(n int, within time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for h.count() < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("workers were handed %d items in %s, want %d", h.count(), within, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCompactingQueueReplacesItsQueueOnceABurstDrained(t *testing.T) {
	const burst = 3 * compactAfter
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](2500*time.Millisecond, time.Hour)
	q := newCompactingQueue(logr.Discard())("test", limiter).(*compactingQueue)
	defer q.ShutDown() // twice is fine

	// Three items wait through the burst: one after a delay at low
	// priority, one after a delay at high, one backing off.
	start := time.Now()
	low, high, backingOff := request(-1), request(-2), request(-3)
	q.AddWithOpts(priorityqueue.AddOpts{After: 3 * time.Second, Priority: new(-100)}, low)
	q.AddWithOpts(priorityqueue.AddOpts{After: 3 * time.Second, Priority: new(10)}, high)
	q.AddRateLimited(backingOff)
	for i := range burst {
		q.Add(request(i))
		if i%2 == 0 {
			q.Add(request(i)) // merged, not handed out twice
		}
	}
	h := work(t, q, 4)
	h.waitFor(burst, 30*time.Second)

	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		generation, queued := q.generation, len(q.queued)
		q.mu.Unlock()
		if generation == 1 {
			if queued != 3 {
				t.Fatalf("the new queue holds %d items, want the 3 waiting", queued)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue was not replaced after %d items drained (generation %d, %d queued)", burst, generation, queued)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if time.Since(start) > 2*time.Second {
		t.Skip("the burst took longer than the waiting items' delay: nothing to check on this machine")
	}

	// The waiting items survive the replacement, with their priority
	// and their time.
	h.waitFor(burst+3, 10*time.Second)
	for _, it := range []reconcile.Request{low, high, backingOff} {
		if got := h.at[it].Sub(start); got < 2400*time.Millisecond {
			t.Errorf("%v handed out %s after it was added, before its delay", it, got)
		}
	}
	if h.priority[high] != 10 || h.priority[low] != -100 {
		t.Errorf("priorities after the replacement: high %d, low %d, want 10 and -100", h.priority[high], h.priority[low])
	}
	if got := limiter.NumRequeues(backingOff); got != 1 {
		t.Errorf("the backing-off item has %d requeues, want 1", got)
	}

	// The new queue is a queue like the first.
	q.Add(request(0))
	h.waitFor(burst+4, 5*time.Second)
	q.ShutDown()
	h.wg.Wait()
}

func TestCompactingQueueLeavesSmallQueuesAlone(t *testing.T) {
	q := newCompactingQueue(logr.Discard())("test", workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]()).(*compactingQueue)
	h := work(t, q, 2)
	for i := range compactAfter / 2 {
		q.Add(request(i))
	}
	h.waitFor(compactAfter/2, 10*time.Second)
	q.ShutDown()
	h.wg.Wait()
	if q.generation != 0 {
		t.Errorf("a queue that never held %d items was replaced %d times", compactAfter, q.generation)
	}
}

// BenchmarkQueueAfterBurst reports the heap a controller queue keeps once
// a burst of b.N items has gone through it and drained:
// priorityqueue's own, and the compacting queue's.
//
//	go test ./internal/controller -run '^$' -bench QueueAfterBurst -benchtime 100000x
func BenchmarkQueueAfterBurst(b *testing.B) {
	limiter := workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]
	for _, c := range []struct {
		name string
		new  func() workqueue.TypedRateLimitingInterface[reconcile.Request]
	}{
		{"priorityqueue", func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
			return priorityqueue.New("bench", func(o *priorityqueue.Opts[reconcile.Request]) { o.RateLimiter = limiter() })
		}},
		{"compacting", func() workqueue.TypedRateLimitingInterface[reconcile.Request] {
			return newCompactingQueue(logr.Discard())("bench", limiter())
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			items := make([]reconcile.Request, b.N)
			for i := range items {
				items[i] = request(i)
			}
			before := heapAfterGC()
			q := c.new()
			b.ResetTimer()
			for _, it := range items {
				q.Add(it)
			}
			for range items {
				it, _ := q.Get()
				q.Done(it)
			}
			b.StopTimer()
			time.Sleep(100 * time.Millisecond) // the old queue's goroutines stop
			b.ReportMetric(float64(heapAfterGC()-before), "retained-B")
			runtime.KeepAlive(items)
			q.ShutDown()
		})
	}
}

func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
