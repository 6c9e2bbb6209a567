// Package informers holds Latchkey's own watches (Stream, a Reflector into
// sinks that keep only what they need of each object) and what the small
// indexes beside them share.
package informers

import (
	"context"
	"sync/atomic"
	"unique"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// A Sink takes a watch's objects as they come and keeps what it needs of
// them, never the objects: an informer's store would keep every object
// whole, typed, for as long as it exists, where an index of a few fields
// per object is all a reader needs.
type Sink[T client.Object] interface {
	// Set is an object added or changed.
	Set(T)
	// Remove is an object deleted.
	Remove(T)
	// Replace is every object there is, from a list: the first, or a
	// relist after the watch fell too far behind. What the sink holds
	// that the list lacks was deleted meanwhile.
	Replace([]T)
}

// An Adder is a Sink that tells an object the watch shows added from one
// changed: Add is called in place of Set for the first.
type Adder[T client.Object] interface {
	Add(T)
}

// Stream lists and watches the objects of L's kind through c into its
// sinks, in turn, until ctx ends, with client-go's Reflector (relists,
// bookmarks, backoff) and no store of its own. The objects come decoded
// as W (a type that may skip what no sink reads), and the sinks are handed
// them as T. Synced reports whether the first list is in the sinks.
type Stream[W client.Object, L client.ObjectList, T client.Object] struct {
	synced atomic.Bool
	// count, when set, is read as each list begins (CountLists); listing
	// is its value for the list under way, listed for the one the sinks
	// hold.
	count           func() int64
	listing, listed atomic.Int64
	sinks           []Sink[T]
	lw              *toolscache.ListWatch
	newObj          func() W
	as              func(W) T
}

// NewStream is a stream of L's objects through c into sinks, of those
// scope selects (its namespace and field selector; the zero value: all);
// newList and newObj make an empty L and W, and as is the T a W holds.
func NewStream[W client.Object, L client.ObjectList, T client.Object](c client.WithWatch, scope client.ListOptions,
	newList func() L, newObj func() W, as func(W) T, sinks ...Sink[T]) *Stream[W, L, T] {
	options := func(opts metav1.ListOptions) *client.ListOptions {
		o := scope
		// client.ListOptions writes its own limit and continue over Raw's:
		// they must be the Reflector's, or a relist comes in one piece.
		o.Raw, o.Limit, o.Continue = &opts, opts.Limit, opts.Continue
		return &o
	}
	s := &Stream[W, L, T]{sinks: sinks, newObj: newObj, as: as}
	s.lw = &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			if opts.Continue == "" {
				s.begin()
			}
			list := newList()
			return list, c.List(ctx, list, options(opts))
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
				s.begin() // a watch-list: its initial events are a list
			}
			return c.Watch(ctx, newList(), options(opts))
		},
	}
	return s
}

// CountLists has the stream read count as each of its lists begins, so
// that ListedAt says which count the list its sinks hold began after. It
// must come before Run.
func (s *Stream[W, L, T]) CountLists(count func() int64) { s.count = count }

// ListedAt is the count read as the list the sinks hold began, and
// whether they hold one.
func (s *Stream[W, L, T]) ListedAt() (int64, bool) { return s.listed.Load(), s.synced.Load() }

func (s *Stream[W, L, T]) begin() {
	if s.count != nil {
		s.listing.Store(s.count())
	}
}

// Run feeds the sink until ctx ends.
func (s *Stream[W, L, T]) Run(ctx context.Context) {
	r := toolscache.NewReflectorWithOptions(s.lw, s.newObj(), (*streamStore[W, L, T])(s), toolscache.ReflectorOptions{})
	r.RunWithContext(ctx)
}

// Synced reports whether the sink holds the first list.
func (s *Stream[W, L, T]) Synced() bool { return s.synced.Load() }

// streamStore is the Reflector's view of a Stream.
type streamStore[W client.Object, L client.ObjectList, T client.Object] Stream[W, L, T]

func (s *streamStore[W, L, T]) Add(obj any) error {
	s.call(obj, func(sink Sink[T], t T) {
		if a, ok := sink.(Adder[T]); ok {
			a.Add(t)
			return
		}
		sink.Set(t)
	})
	return nil
}
func (s *streamStore[W, L, T]) Update(obj any) error { s.call(obj, Sink[T].Set); return nil }
func (s *streamStore[W, L, T]) Delete(obj any) error { s.call(obj, Sink[T].Remove); return nil }
func (s *streamStore[W, L, T]) Resync() error        { return nil }

func (s *streamStore[W, L, T]) Replace(list []any, _ string) error {
	objs := make([]T, 0, len(list))
	for _, obj := range list {
		if w, ok := obj.(W); ok {
			objs = append(objs, s.as(w))
		}
	}
	for _, sink := range s.sinks {
		sink.Replace(objs)
	}
	s.listed.Store(s.listing.Load())
	s.synced.Store(true)
	return nil
}

func (s *streamStore[W, L, T]) call(obj any, f func(Sink[T], T)) {
	if w, ok := obj.(W); ok {
		t := s.as(w)
		for _, sink := range s.sinks {
			f(sink, t)
		}
	}
}

// Intern is s held once however many objects repeat it (a namespace, a
// kind, a format, a condition's text); unique lets go of a text no object
// holds any more.
func Intern[S ~string](s S) S {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}
