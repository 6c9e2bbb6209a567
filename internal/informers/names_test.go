package informers

import (
	"slices"
	"testing"
)

func TestNames(t *testing.T) {
	var n Names[string]
	n.Add("k", "a")
	n.Add("k", "a")
	n.Add("k", "b")
	n.Add("other", "a")
	if got := n.Of("k"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Of(k) = %v, want [a b]", got)
	}
	got := n.Of("k")
	got[0] = "changed"
	if n.Of("k")[0] != "a" {
		t.Error("a caller's copy changed the index")
	}
	n.Remove("k", "a")
	n.Remove("k", "missing")
	if got := n.Of("k"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("Of(k) = %v, want [b]", got)
	}
	n.Remove("k", "b")
	n.Remove("other", "a")
	if len(n.m) != 0 {
		t.Errorf("keys with no names left are kept: %v", n.m)
	}
}
