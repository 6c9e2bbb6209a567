// Package informers holds what the handlers Latchkey adds to its cache's
// informers share.
package informers

import toolscache "k8s.io/client-go/tools/cache"

// As is an informer's object as a T, the last state known of one whose
// deletion the watch missed included.
func As[T any](obj any) (T, bool) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	t, ok := obj.(T)
	return t, ok
}

// Handle calls f with every object of type T the informer adds, updates
// (the new state) or deletes: f is add for the first two and remove for the
// last.
func Handle[T any](add, remove func(T)) toolscache.ResourceEventHandlerFuncs {
	call := func(f func(T)) func(any) {
		return func(obj any) {
			if t, ok := As[T](obj); ok {
				f(t)
			}
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    call(add),
		UpdateFunc: func(_, obj any) { call(add)(obj) },
		DeleteFunc: call(remove),
	}
}
