package endpoints

import (
	"bytes"
	"encoding/json"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// encodingJSON is what json.NewEncoder writes for v.
func encodingJSON(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReviewAnswersAreWhatEncodingJSONWrites: every answer the handler
// makes — allowed, with scopes or none, refused, for either version —
// and strings that need escaping come out byte for byte as encoding/json
// writes them.
func TestReviewAnswersAreWhatEncodingJSONWrites(t *testing.T) {
	tm := metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"}
	tricky := "q\"b\\s/<a>&\b\f\n\r\t\x01\x1f é \u2028\u2029 \xff\xfe end"
	tests := map[string]authnv1.TokenReview{
		"refused":   {TypeMeta: tm, Status: authnv1.TokenReviewStatus{Error: "key revoked"}},
		"v1beta1":   {TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1beta1", Kind: "TokenReview"}, Status: authnv1.TokenReviewStatus{Error: "invalid key"}},
		"no answer": {TypeMeta: tm},
		"allowed": {TypeMeta: tm, Status: authnv1.TokenReviewStatus{
			Authenticated: true,
			User: authnv1.UserInfo{Username: "latchkey:tenant-a:ci", UID: "0b6b1b5e-3f3c-4c57-9f2e-8c1b0e9f7a11",
				Groups: []string{"latchkey:authenticated", "latchkey:tenant:tenant-a"},
				Extra:  map[string]authnv1.ExtraValue{"latchkey.dev/key-hint": {"lk_live_…abcd"}}},
			Audiences: []string{"latchkey.dev"},
		}},
		"tricky strings": {TypeMeta: metav1.TypeMeta{APIVersion: tricky, Kind: tricky}, Status: authnv1.TokenReviewStatus{
			Authenticated: true,
			User: authnv1.UserInfo{Username: tricky, UID: tricky, Groups: []string{tricky, ""},
				Extra: map[string]authnv1.ExtraValue{"b": {tricky}, "a": nil, tricky: {}}},
			Audiences: []string{tricky}, Error: tricky,
		}},
	}
	for name, review := range tests {
		t.Run(name, func(t *testing.T) {
			want := encodingJSON(t, &review)
			if got := appendReview(nil, &review); !bytes.Equal(got, want) {
				t.Fatalf("appendReview:\n%s\nencoding/json:\n%s", got, want)
			}
		})
	}
}

// FuzzAppendString: any string comes out as encoding/json writes it.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "<&>", "\x00\x7f", "\u2028", "\xed\xa0\x80", "a\xffb", "\U0001F600"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, encoding/json %s", s, got, want)
		}
	})
}
