package verifier

import (
	"bytes"
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
// Reflector's own), conditions, a record's status. Decoding an ApiKey whole allocated ≈ 5.3 KB in 85
// pieces; without them ≈ 1.4 KB in 24, and ≈ 30 % less time (a decode
// benchmark of an ApiKey as a bench-load mint leaves it). At 100,000 keys
// a restart decodes 200,000 objects at once on one core, and every status
// write (last use, a pass) comes back as a watch event to every replica.

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
// it skips.
type wireMeta struct {
	metav1.ObjectMeta `json:",inline"`
	ManagedFields     skipped         `json:"managedFields,omitempty"`
	Labels            skipped         `json:"labels,omitempty"`
	Annotations       wireAnnotations `json:"annotations,omitempty"`
}

func (m *wireMeta) objectMeta() metav1.ObjectMeta {
	o := m.ObjectMeta
	o.Annotations = m.Annotations
	return o
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
type wireKey struct{ authv1alpha1.ApiKey }

func (k *wireKey) UnmarshalJSON(b []byte) error {
	var w struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        wireMeta                `json:"metadata"`
		Spec            authv1alpha1.ApiKeySpec `json:"spec"`
		Status          struct {
			Phase              authv1alpha1.Phase `json:"phase,omitempty"`
			ObservedGeneration int64              `json:"observedGeneration,omitempty"`
		} `json:"status"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &w); err != nil {
		return err
	}
	k.ApiKey = authv1alpha1.ApiKey{TypeMeta: w.TypeMeta, ObjectMeta: w.Metadata.objectMeta(), Spec: w.Spec}
	k.Status.Phase, k.Status.ObservedGeneration = w.Status.Phase, w.Status.ObservedGeneration
	return nil
}

func (k *wireKey) DeepCopyObject() runtime.Object { return &wireKey{*k.DeepCopy()} }

func (k *wireKey) apiKey() *authv1alpha1.ApiKey { return &k.ApiKey }

type wireKeyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []wireKey `json:"items"`
}

func (l *wireKeyList) DeepCopyObject() runtime.Object {
	c := &wireKeyList{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy(), Items: make([]wireKey, len(l.Items))}
	for i := range l.Items {
		c.Items[i] = wireKey{*l.Items[i].DeepCopy()}
	}
	return c
}

// wireRecord is an ApiKeyRecord as the watch decodes it: no status.
type wireRecord struct{ authv1alpha1.ApiKeyRecord }

func (r *wireRecord) UnmarshalJSON(b []byte) error {
	var w struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        wireMeta                      `json:"metadata"`
		Spec            authv1alpha1.ApiKeyRecordSpec `json:"spec"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &w); err != nil {
		return err
	}
	r.ApiKeyRecord = authv1alpha1.ApiKeyRecord{TypeMeta: w.TypeMeta, ObjectMeta: w.Metadata.objectMeta(), Spec: w.Spec}
	return nil
}

func (r *wireRecord) DeepCopyObject() runtime.Object { return &wireRecord{*r.DeepCopy()} }

func (r *wireRecord) record() *authv1alpha1.ApiKeyRecord { return &r.ApiKeyRecord }

type wireRecordList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []wireRecord `json:"items"`
}

func (l *wireRecordList) DeepCopyObject() runtime.Object {
	c := &wireRecordList{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy(), Items: make([]wireRecord, len(l.Items))}
	for i := range l.Items {
		c.Items[i] = wireRecord{*l.Items[i].DeepCopy()}
	}
	return c
}
