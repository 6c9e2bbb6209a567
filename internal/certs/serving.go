package certs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// ServingConfig is the webhook server's TLS for another listener of the
// manager: tlsOpts applied as the webhook server applies them (one may set
// GetCertificate: a certwatcher or the Rotator). Without a GetCertificate
// it watches dir (default controller-runtime's, where the webhook server
// reads its own) until ctx ends, so that a renewed certificate is served
// without a restart.
func ServingConfig(ctx context.Context, tlsOpts []func(*tls.Config), dir string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	for _, op := range tlsOpts {
		op(cfg)
	}
	if cfg.GetCertificate != nil {
		return cfg, nil
	}
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "k8s-webhook-server", "serving-certs")
	}
	w, err := certwatcher.New(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("the serving certificate: %w", err)
	}
	cfg.GetCertificate = w.GetCertificate
	go func() {
		if err := w.Start(ctx); err != nil {
			log.FromContext(ctx).Error(err, "Certificate watcher failed")
		}
	}()
	return cfg, nil
}

// PublicKeyOf is the public key of a certificate chain's leaf.
func PublicKeyOf(c *tls.Certificate) (crypto.PublicKey, error) {
	if c == nil || len(c.Certificate) == 0 {
		return nil, errors.New("no certificate")
	}
	if c.Leaf != nil {
		return c.Leaf.PublicKey, nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, err
	}
	return leaf.PublicKey, nil
}
