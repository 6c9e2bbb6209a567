package verifier

import (
	"bytes"
	"maps"
	"net/http"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	kjson "sigs.k8s.io/json"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// The index's watches decode ApiKeys and records as wire types that skip
// what no sink reads: managed fields, labels, annotations (but the
// Reflector's own), conditions, a record's status. Decoding an ApiKey as
// a bench-load mint leaves it took 68–90 µs and 5.3 KB in 85 allocations
// whole, 37–56 µs and 1.4 KB in 24 as the wire type (BenchmarkDecodeApiKey,
// four runs on a busy machine). At 100,000 keys a restart decodes 200,000 objects at once
// on one core, and every status write (last use, a pass) comes back as a
// watch event to every replica.

// NewWatchClient is the client the index's watches need (Watching.Client):
// one that decodes ApiKeys and records as the wire types.
func NewWatchClient(cfg *rest.Config, httpClient *http.Client, mapper meta.RESTMapper) (client.WithWatch, error) {
	return client.NewWithWatch(cfg, client.Options{Scheme: wireScheme(), HTTPClient: httpClient, Mapper: mapper})
}

func wireScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	gv := authv1alpha1.GroupVersion
	s.AddKnownTypeWithName(gv.WithKind("ApiKey"), &wireKey{})
	s.AddKnownTypeWithName(gv.WithKind("ApiKeyList"), &wireKeyList{})
	s.AddKnownTypeWithName(gv.WithKind("ApiKeyRecord"), &wireRecord{})
	s.AddKnownTypeWithName(gv.WithKind("ApiKeyRecordList"), &wireRecordList{})
	metav1.AddToGroupVersion(s, gv)
	return s
}

// wireMeta is the metadata the sinks and the Reflector read: all but what
// it skips. Its fields shadow ObjectMeta's of the same JSON names, so that
// one pass of the decoder reads past them.
type wireMeta struct {
	metav1.ObjectMeta `json:",inline"`
	ManagedFields     skipped         `json:"managedFields,omitempty"`
	Labels            skipped         `json:"labels,omitempty"`
	Annotations       wireAnnotations `json:"annotations,omitempty"`
}

// GetAnnotations is the Reflector's read of the bookmark annotation.
func (m *wireMeta) GetAnnotations() map[string]string { return m.Annotations }

func (m *wireMeta) objectMeta() metav1.ObjectMeta {
	o := m.ObjectMeta
	o.Annotations = m.Annotations
	return o
}

func (m *wireMeta) deepCopy() wireMeta {
	return wireMeta{ObjectMeta: *m.DeepCopy(), Annotations: maps.Clone(m.Annotations)}
}

// skipped is a JSON value read past, not decoded.
type skipped struct{}

func (*skipped) UnmarshalJSON([]byte) error { return nil }

// wireAnnotations keeps of the annotations only the one the Reflector
// reads: the bookmark's that ends a watch-list's initial events. Others
// (kubectl's last-applied configuration, a whole copy of the object) are
// read past.
type wireAnnotations map[string]string

func (a *wireAnnotations) UnmarshalJSON(b []byte) error {
	if !bytes.Contains(b, []byte(metav1.InitialEventsAnnotationKey)) {
		return nil
	}
	var all map[string]string
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &all); err != nil {
		return err
	}
	if v, ok := all[metav1.InitialEventsAnnotationKey]; ok {
		*a = wireAnnotations{metav1.InitialEventsAnnotationKey: v}
	}
	return nil
}

// wireKey is an ApiKey as the watch decodes it: what the sinks read.
type wireKey struct {
	metav1.TypeMeta `json:",inline"`
	wireMeta        `json:"metadata"`
	Spec            authv1alpha1.ApiKeySpec `json:"spec"`
	Status          struct {
		Phase              authv1alpha1.Phase `json:"phase,omitempty"`
		ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	} `json:"status"`
}

func (k *wireKey) DeepCopyObject() runtime.Object {
	c := *k
	c.wireMeta = k.deepCopy()
	c.Spec = *k.Spec.DeepCopy()
	return &c
}

func (k *wireKey) apiKey() *authv1alpha1.ApiKey {
	a := &authv1alpha1.ApiKey{TypeMeta: k.TypeMeta, ObjectMeta: k.objectMeta(), Spec: k.Spec}
	a.Status.Phase, a.Status.ObservedGeneration = k.Status.Phase, k.Status.ObservedGeneration
	return a
}

type wireKeyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []wireKey `json:"items"`
}

func (l *wireKeyList) DeepCopyObject() runtime.Object {
	c := &wireKeyList{TypeMeta: l.TypeMeta, ListMeta: *l.DeepCopy(), Items: make([]wireKey, len(l.Items))}
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*wireKey)
	}
	return c
}

// wireRecord is an ApiKeyRecord as the watch decodes it: no status.
type wireRecord struct {
	metav1.TypeMeta `json:",inline"`
	wireMeta        `json:"metadata"`
	Spec            authv1alpha1.ApiKeyRecordSpec `json:"spec"`
}

func (r *wireRecord) DeepCopyObject() runtime.Object {
	c := *r
	c.wireMeta = r.deepCopy()
	c.Spec = *r.Spec.DeepCopy()
	return &c
}

func (r *wireRecord) record() *authv1alpha1.ApiKeyRecord {
	return &authv1alpha1.ApiKeyRecord{TypeMeta: r.TypeMeta, ObjectMeta: r.objectMeta(), Spec: r.Spec}
}

type wireRecordList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []wireRecord `json:"items"`
}

func (l *wireRecordList) DeepCopyObject() runtime.Object {
	c := &wireRecordList{TypeMeta: l.TypeMeta, ListMeta: *l.DeepCopy(), Items: make([]wireRecord, len(l.Items))}
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*wireRecord)
	}
	return c
}
