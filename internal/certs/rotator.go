package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// Validity of what the Rotator makes. The CA lives long so that renewing
// the serving certificate never changes the webhook configuration's CA
// bundle; the serving certificate is renewed when a third of its life is left.
const (
	CAValidity      = 10 * 365 * 24 * time.Hour
	ServingValidity = 365 * 24 * time.Hour
	renewWhenLeft   = ServingValidity / 3
	caFile          = "ca.crt"
	caKeyFile       = "ca.key"
	checkEvery      = time.Minute
)

// Rotator keeps the webhook server's certificate in a Secret of the
// operator's namespace, renews it before it expires, serves it from memory
// (no volume, no restart) and injects its CA into the webhook
// configuration, so that installing Latchkey needs nothing else. Every
// replica runs one: creation races end in AlreadyExists, renewal races in
// a conflict, and the losers load the winner's certificate.
type Rotator struct {
	// Client reads and writes the Secret and the webhook configuration by
	// name (no cache: Latchkey never lists or watches Secrets).
	Client            client.Client
	Clock             clock.PassiveClock
	Namespace         string
	SecretName        string
	ServiceName       string
	WebhookConfigName string

	mu      sync.RWMutex
	current *tls.Certificate
}

// The Secret lives in the manager's own namespace ("system" until kustomize
// names it), the only one where the manager itself holds Secret access.
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=get;create
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=update,resourceNames=latchkey-webhook-server-cert
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=get;update,resourceNames=latchkey-validating-webhook-configuration

// GetCertificate serves the current certificate (tls.Config.GetCertificate).
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.current == nil {
		return nil, errors.New("the serving certificate is not ready yet")
	}
	return r.current, nil
}

// Ready is a readiness check: ready once a certificate is served.
func (r *Rotator) Ready() error {
	_, err := r.GetCertificate(nil)
	return err
}

// NeedLeaderElection is false: every replica serves webhooks.
func (r *Rotator) NeedLeaderElection() bool { return false }

// Start keeps the certificate fresh until ctx ends.
func (r *Rotator) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithValues("secret", r.Namespace+"/"+r.SecretName)
	for {
		if err := r.Ensure(ctx); err != nil {
			logger.Error(err, "Failed to ensure the webhook serving certificate; retrying")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(checkEvery):
		}
	}
}

// Ensure makes, renews or loads the certificate and injects the CA.
func (r *Rotator) Ensure(ctx context.Context) error {
	secret := &corev1.Secret{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: r.SecretName}, secret)
	switch {
	case apierrors.IsNotFound(err):
		secret, err = r.create(ctx)
	case err == nil && r.needsRenewal(secret):
		err = r.renew(ctx, secret)
	}
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return fmt.Errorf("the Secret holds no usable certificate: %w", err)
	}
	r.mu.Lock()
	r.current = &cert
	r.mu.Unlock()
	return r.injectCA(ctx, secret.Data[caFile])
}

func (r *Rotator) dnsNames() []string {
	return []string{
		r.ServiceName + "." + r.Namespace + ".svc",
		r.ServiceName + "." + r.Namespace + ".svc.cluster.local",
	}
}

func (r *Rotator) create(ctx context.Context) (*corev1.Secret, error) {
	now := r.Clock.Now()
	ca, err := NewAuthority("latchkey-webhook-ca", now, CAValidity)
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue(r.dnsNames(), nil, now, ServingValidity)
	if err != nil {
		return nil, err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: r.SecretName,
			Labels: map[string]string{authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			caFile: ca.CertPEM, caKeyFile: ca.KeyPEM, corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key,
		},
	}
	err = r.Client.Create(ctx, secret)
	if apierrors.IsAlreadyExists(err) {
		// Another replica made it first: use theirs.
		err = r.Client.Get(ctx, client.ObjectKeyFromObject(secret), secret)
	}
	return secret, err
}

func (r *Rotator) needsRenewal(secret *corev1.Secret) bool {
	notAfter, err := NotAfter(secret.Data[corev1.TLSCertKey])
	if err != nil {
		return true
	}
	caNotAfter, err := NotAfter(secret.Data[caFile])
	if err != nil {
		return true
	}
	now := r.Clock.Now()
	return notAfter.Sub(now) < renewWhenLeft || caNotAfter.Sub(now) < ServingValidity
}

// renew issues a new serving certificate from the same CA (a new CA only
// when the old one nears its end), with the Secret's version as a
// precondition.
func (r *Rotator) renew(ctx context.Context, secret *corev1.Secret) error {
	now := r.Clock.Now()
	ca, err := ParseAuthority(secret.Data[caFile], secret.Data[caKeyFile])
	if err != nil || ca.Cert.NotAfter.Sub(now) < ServingValidity {
		if ca, err = NewAuthority("latchkey-webhook-ca", now, CAValidity); err != nil {
			return err
		}
	}
	cert, key, err := ca.Issue(r.dnsNames(), nil, now, ServingValidity)
	if err != nil {
		return err
	}
	secret.Data = map[string][]byte{
		caFile: ca.CertPEM, caKeyFile: ca.KeyPEM, corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key,
	}
	if err := r.Client.Update(ctx, secret); err != nil {
		if apierrors.IsConflict(err) {
			// Another replica renewed it: load theirs.
			return r.Client.Get(ctx, client.ObjectKeyFromObject(secret), secret)
		}
		return fmt.Errorf("renewing the serving certificate: %w", err)
	}
	log.FromContext(ctx).Info("Renewed the webhook serving certificate", "notAfter", now.Add(ServingValidity))
	return nil
}

func (r *Rotator) injectCA(ctx context.Context, ca []byte) error {
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: r.WebhookConfigName}, vwc); err != nil {
		return fmt.Errorf("reading the webhook configuration %s: %w", r.WebhookConfigName, err)
	}
	changed := false
	for i := range vwc.Webhooks {
		if !bytes.Equal(vwc.Webhooks[i].ClientConfig.CABundle, ca) {
			vwc.Webhooks[i].ClientConfig.CABundle = ca
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := r.Client.Update(ctx, vwc); err != nil {
		return fmt.Errorf("injecting the CA into %s: %w", r.WebhookConfigName, err)
	}
	return nil
}
