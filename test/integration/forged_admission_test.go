package integration

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/certs"
)

const admissionPath = "/validate-auth-latchkey-dev-v1alpha1-apikey"

// forgedReview is what an attacker who knows a key's name and UID (they
// are in events, Secret ownerReferences and TokenReview answers) sends to
// switch the key off: a DELETE, or an UPDATE turning revoked on.
func forgedReview(t *testing.T, key *authv1alpha1.ApiKey, op admissionv1.Operation) []byte {
	t.Helper()
	raw := func(k *authv1alpha1.ApiKey) runtime.RawExtension {
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		return runtime.RawExtension{Raw: b}
	}
	req := &admissionv1.AdmissionRequest{
		UID:       "forged",
		Kind:      metav1.GroupVersionKind{Group: authv1alpha1.GroupVersion.Group, Version: authv1alpha1.GroupVersion.Version, Kind: "ApiKey"},
		Resource:  metav1.GroupVersionResource{Group: authv1alpha1.GroupVersion.Group, Version: authv1alpha1.GroupVersion.Version, Resource: "apikeys"},
		Name:      key.Name,
		Namespace: key.Namespace,
		Operation: op,
		OldObject: raw(key),
	}
	if op == admissionv1.Update {
		revoked := key.DeepCopy()
		revoked.Spec.Revoked = true
		req.Object = raw(revoked)
	}
	b, err := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestForgedAdmissionReviewFencesNothing sends forged revocations, from a
// client that trusts the server but holds none of kube-apiserver's
// credentials, to the admission port and to the verification port: none
// lands, and the key still authenticates. A revocation through
// kube-apiserver still fences the key at once.
func TestForgedAdmissionReviewFencesNothing(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	key, raw := mint(t, ns, "victim", authv1alpha1.ApiKeySpec{})
	g.Expect(authorize(t, raw)).To(Equal(http.StatusOK))

	// Trusts the serving certificate; presents no client certificate.
	forger := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: lk.HTTPClient.Transport.(*http.Transport).TLSClientConfig.Clone(),
	}}
	// Presents a client certificate of its own making.
	mine := lk.HTTPClient.Transport.(*http.Transport).TLSClientConfig.Clone()
	mine.Certificates = []tls.Certificate{selfSignedClient(t)}
	impostor := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: mine}}

	for _, target := range []struct {
		name string
		port int
	}{{"admission port", lk.AdmissionPort()}, {"verification port", lk.WebhookPort()}} {
		for _, c := range []struct {
			name   string
			client *http.Client
		}{{"no client certificate", forger}, {"a client certificate of its own", impostor}} {
			for _, op := range []admissionv1.Operation{admissionv1.Delete, admissionv1.Update} {
				t.Run(fmt.Sprintf("%s, %s, %s", target.name, c.name, op), func(t *testing.T) {
					url := fmt.Sprintf("https://%s:%d%s", lk.WebhookHost(), target.port, admissionPath)
					resp, err := c.client.Post(url, "application/json", bytes.NewReader(forgedReview(t, key, op)))
					if err == nil {
						_ = resp.Body.Close()
						if target.port == lk.AdmissionPort() || resp.StatusCode == http.StatusOK {
							t.Errorf("a forged review was answered %d", resp.StatusCode)
						}
					}
					// A fence is set while the review is answered: had one
					// landed, the key would be refused now.
					if status := authorize(t, raw); status != http.StatusOK {
						t.Fatalf("after a forged %s review the key answers %d", op, status)
					}
				})
			}
		}
	}

	// The real thing, through kube-apiserver, still fences at once.
	_, stderr, err := env.Kubectl("", "patch", "apikey", key.Name, "-n", ns, "--type=merge", "-p", `{"spec":{"revoked":true}}`)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(authorize(t, raw)).NotTo(Equal(http.StatusOK))
}

// selfSignedClient is a client certificate from a CA the attacker made.
func selfSignedClient(t *testing.T) tls.Certificate {
	t.Helper()
	ca, err := certs.NewAuthority("attacker-ca", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClient("kube-apiserver", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
