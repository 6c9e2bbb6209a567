package v1alpha1

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

func apiKey(ns, name, secret string) *authv1alpha1.ApiKey {
	return &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: authv1alpha1.ApiKeySpec{SecretName: secret}}
}

// TestSecretNamesFollowTheWatch feeds the index as the watch would and
// asks it who else delivers to a Secret.
func TestSecretNamesFollowTheWatch(t *testing.T) {
	var s secretNames
	a, b := apiKey("ns", "a", "shared"), apiKey("ns", "b", "shared")
	s.Replace([]*authv1alpha1.ApiKey{a})
	s.Set(a) // twice is once
	s.Set(apiKey("other", "c", "shared"))
	s.Set(apiKey("ns", "own", "")) // delivers to its own name

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
	s.Set(b)
	s.Remove(a)
	if got := s.otherHolder(a); got != "b" {
		t.Errorf("after a's deletion, otherHolder = %q, want b", got)
	}
	s.Remove(b)
	if got := s.otherHolder(a); got != "" {
		t.Errorf("after b's deletion, otherHolder = %q, want none", got)
	}
	s.Set(apiKey("ns", "own", ""))
	if got := s.otherHolder(apiKey("ns", "y", "own")); got != "own" {
		t.Errorf("after an update, otherHolder = %q, want own", got)
	}
	s.Remove(apiKey("ns", "own", ""))
	// A relist drops the ApiKeys it lacks (other/c): their deletes were missed.
	s.Replace([]*authv1alpha1.ApiKey{a})
	s.Remove(a)
	for _, k := range []*authv1alpha1.ApiKey{a, apiKey("ns", "own", ""), apiKey("other", "c", "shared")} {
		if held := s.holders.Of(refOf(k)); len(held) != 0 {
			t.Errorf("the index still files %v under %v after every ApiKey went", held, refOf(k))
		}
	}
}
