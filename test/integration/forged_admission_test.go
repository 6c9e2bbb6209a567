package integration

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

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
					review, err := testenv.ForgedAdmissionReview(key, op)
					if err != nil {
						t.Fatal(err)
					}
					url := fmt.Sprintf("https://%s:%d%s", lk.WebhookHost(), target.port, testenv.AdmissionPath)
					resp, err := c.client.Post(url, "application/json", bytes.NewReader(review))
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
