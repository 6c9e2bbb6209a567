package v1alpha1

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

func apiKey(ns, name, secret string) *authv1alpha1.ApiKey {
	return &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: authv1alpha1.ApiKeySpec{SecretName: secret}}
}

// TestSecretNamesFollowTheInformer feeds the index as an informer would and
// asks it who else delivers to a Secret.
func TestSecretNamesFollowTheInformer(t *testing.T) {
	var s secretNames
	h := s.handler()
	a, b := apiKey("ns", "a", "shared"), apiKey("ns", "b", "shared")
	h.OnAdd(a, true)
	h.OnAdd(a, false) // twice is once
	h.OnAdd(apiKey("other", "c", "shared"), true)
	h.OnAdd(apiKey("ns", "own", ""), true) // delivers to its own name

	for _, tc := range []struct {
		name string
		key  *authv1alpha1.ApiKey
		want string
	}{
		{"another ApiKey's Secret", b, "a"},
		{"its own Secret is not another's", a, ""},
		{"the same name in another namespace is another Secret", apiKey("third", "d", "shared"), ""},
		{"an ApiKey delivering to its own name", apiKey("ns", "own", ""), ""},
		{"the Secret of an ApiKey delivering to its own name", apiKey("ns", "y", "own"), "own"},
	} {
		if got := s.otherHolder(tc.key); got != tc.want {
			t.Errorf("%s: otherHolder = %q, want %q", tc.name, got, tc.want)
		}
	}
	h.OnAdd(b, true)
	h.OnDelete(a)
	if got := s.otherHolder(a); got != "b" {
		t.Errorf("after a's deletion, otherHolder = %q, want b", got)
	}
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "ns/b", Obj: b})
	if got := s.otherHolder(a); got != "" {
		t.Errorf("after b's deletion, otherHolder = %q, want none", got)
	}
	h.OnUpdate(apiKey("ns", "own", ""), apiKey("ns", "own", ""))
	if got := s.otherHolder(apiKey("ns", "y", "own")); got != "own" {
		t.Errorf("after an update, otherHolder = %q, want own", got)
	}
	h.OnDelete(apiKey("ns", "own", ""))
	h.OnDelete(apiKey("other", "c", "shared"))
	for _, k := range []*authv1alpha1.ApiKey{a, apiKey("ns", "own", ""), apiKey("other", "c", "shared")} {
		if held := s.holders.Of(refOf(k)); len(held) != 0 {
			t.Errorf("the index still files %v under %v after every ApiKey went", held, refOf(k))
		}
	}
}
