package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{}, func(e *testenv.Env) error { env = e; return nil })
}

// TestRotator makes, shares, injects and renews the serving certificate
// as two replicas would, against a real API server.
func TestRotator(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	none := admissionregistrationv1.SideEffectClassNone
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "rotator-test-" + ns},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name: "v.latchkey.dev", SideEffects: &none, AdmissionReviewVersions: []string{"v1"},
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{Namespace: ns, Name: "svc", Path: ptr.To("/x")},
			},
		}},
	}
	if err := env.Client.Create(ctx, vwc); err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(time.Now())
	replica := func() *certs.Rotator {
		return &certs.Rotator{Client: env.Client, Clock: clk, Namespace: ns, SecretName: "cert", ServiceName: "svc", WebhookConfigName: vwc.Name}
	}
	a, b := replica(), replica()
	if a.Ready() == nil {
		t.Fatal("ready before it has a certificate")
	}
	for _, r := range []*certs.Rotator{a, b} {
		if err := r.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ca := caBundle(t, vwc.Name)
	leafA, leafB := serving(t, a), serving(t, b)
	if !leafA.Equal(leafB) {
		t.Fatal("two replicas serve different certificates")
	}
	verify(t, leafA, ca, "svc."+ns+".svc")

	// Nine months on, less than a third of its life is left: it is renewed from the
	// same CA, so the webhook configuration's bundle does not change.
	clk.Step(9 * 30 * 24 * time.Hour)
	if err := a.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	renewed := serving(t, b)
	if renewed.Equal(leafA) {
		t.Fatal("the certificate was not renewed")
	}
	if !renewed.Equal(serving(t, a)) {
		t.Fatal("replicas disagree after renewal")
	}
	if got := caBundle(t, vwc.Name); string(got) != string(ca) {
		t.Fatal("renewal changed the CA bundle")
	}
	verify(t, renewed, ca, "svc."+ns+".svc.cluster.local")
	secret := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "cert"}, secret); err != nil || secret.Type != corev1.SecretTypeTLS {
		t.Fatalf("secret: %v %s", err, secret.Type)
	}
}

func serving(t *testing.T, r *certs.Rotator) *x509.Certificate {
	t.Helper()
	c, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func caBundle(t *testing.T, name string) []byte {
	t.Helper()
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Name: name}, vwc); err != nil {
		t.Fatal(err)
	}
	if len(vwc.Webhooks[0].ClientConfig.CABundle) == 0 {
		t.Fatal("no CA injected")
	}
	return vwc.Webhooks[0].ClientConfig.CABundle
}

func verify(t *testing.T, leaf *x509.Certificate, ca []byte, name string) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: leaf.NotBefore.Add(2 * time.Hour)}); err != nil {
		t.Fatalf("the serving certificate does not verify for %s: %v", name, err)
	}
}
