package verifier

import (
	"os"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	kjson "sigs.k8s.io/json"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// testdata/apikey.json is an ApiKey as kube-apiserver serves it after a
// bench-load mint: managed fields of three writers, three conditions.
func readKeyJSON(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/apikey.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTheWireKeyHoldsWhatTheSinksRead: the wire type decodes the fields
// the index and the controllers' sinks read as the whole type does, and
// none it skips.
func TestTheWireKeyHoldsWhatTheSinksRead(t *testing.T) {
	data := readKeyJSON(t)
	var whole authv1alpha1.ApiKey
	if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &whole); err != nil {
		t.Fatal(err)
	}
	var w wireKey
	if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &w); err != nil {
		t.Fatal(err)
	}
	k := w.apiKey()
	if len(whole.ManagedFields) == 0 || len(whole.Status.Conditions) == 0 {
		t.Fatal("the fixture has no managed fields or conditions to skip")
	}
	if len(k.ManagedFields) != 0 || len(k.Status.Conditions) != 0 || k.Annotations != nil || k.Labels != nil {
		t.Errorf("the wire type kept what it skips: %+v", k.ObjectMeta)
	}
	for what, same := range map[string]bool{
		"name": k.Name == whole.Name, "namespace": k.Namespace == whole.Namespace, "uid": k.UID == whole.UID,
		"resourceVersion": k.ResourceVersion == whole.ResourceVersion, "generation": k.Generation == whole.Generation,
		"finalizers":         equality.Semantic.DeepEqual(k.Finalizers, whole.Finalizers),
		"creationTimestamp":  k.CreationTimestamp.Equal(&whole.CreationTimestamp),
		"spec":               equality.Semantic.DeepEqual(k.Spec, whole.Spec),
		"status.phase":       k.Status.Phase == whole.Status.Phase,
		"observedGeneration": k.Status.ObservedGeneration == whole.Status.ObservedGeneration,
	} {
		if !same {
			t.Errorf("%s differs from the whole decode", what)
		}
	}
}

// TestTheWireKeepsTheBookmarkAnnotation: the Reflector ends a watch-list's
// initial events at a bookmark whose annotation says so.
func TestTheWireKeepsTheBookmarkAnnotation(t *testing.T) {
	var w wireKey
	bookmark := `{"kind":"ApiKey","apiVersion":"auth.latchkey.dev/v1alpha1","metadata":{"resourceVersion":"42","annotations":{"k8s.io/initial-events-end":"true","other":"x"}}}`
	if err := kjson.UnmarshalCaseSensitivePreserveInts([]byte(bookmark), &w); err != nil {
		t.Fatal(err)
	}
	if got := w.GetAnnotations(); len(got) != 1 || got["k8s.io/initial-events-end"] != "true" || w.ResourceVersion != "42" {
		t.Errorf("bookmark decoded as %v at %q", got, w.ResourceVersion)
	}
}

// BenchmarkDecodeApiKey is what the index's watch pays per ApiKey, whole
// and as the wire type handed to the sinks as an ApiKey.
func BenchmarkDecodeApiKey(b *testing.B) {
	data := readKeyJSON(b)
	b.Run("whole", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var k authv1alpha1.ApiKey
			if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var k wireKey
			if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &k); err != nil {
				b.Fatal(err)
			}
			_ = k.apiKey() // what the sinks are handed
		}
	})
}
