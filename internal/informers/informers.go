// Package informers holds Latchkey's own watches (Stream, a Reflector into
// sinks that keep only what they need of each object) and what the small
// indexes beside them share.
package informers

import toolscache "k8s.io/client-go/tools/cache"

// As is a watch's object as a T, the last state known of one whose
// deletion the watch missed included.
func As[T any](obj any) (T, bool) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	t, ok := obj.(T)
	return t, ok
}
