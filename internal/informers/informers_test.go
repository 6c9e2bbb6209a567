package informers

import (
	"testing"

	toolscache "k8s.io/client-go/tools/cache"
)

type thing struct{ name string }

func TestHandleUnwrapsMissedDeletes(t *testing.T) {
	var added, removed []string
	h := Handle(func(x *thing) { added = append(added, x.name) }, func(x *thing) { removed = append(removed, x.name) })
	h.OnAdd(&thing{"a"}, true)
	h.OnUpdate(&thing{"a"}, &thing{"b"})
	h.OnAdd("not a thing", false)
	h.OnDelete(&thing{"c"})
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "d", Obj: &thing{"d"}})
	if len(added) != 2 || added[0] != "a" || added[1] != "b" {
		t.Errorf("added %v, want [a b]", added)
	}
	if len(removed) != 2 || removed[0] != "c" || removed[1] != "d" {
		t.Errorf("removed %v, want [c d]", removed)
	}
}
