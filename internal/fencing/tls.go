package fencing

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/latchkey-dev/latchkey/internal/certs"
)

// Peers recognise each other by the replica certificate: every replica
// serves the webhook server's certificate (one Secret, or one cert-manager
// Certificate), so a peer is whoever presents a certificate with the same
// public key — a holder of the replica key. Both sides pin it, so neither a
// CA nor a host name is involved: peers are reached by pod address.

// ServerTLS is base (the webhook server's TLS, with GetCertificate set)
// requiring a peer's certificate of every caller.
func ServerTLS(base *tls.Config) *tls.Config {
	cfg := base.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyPeerCertificate = samePublicKey(base.GetCertificate)
	return cfg
}

// ClientTLS presents the replica certificate and accepts only a server
// presenting one with the same public key.
func ClientTLS(base *tls.Config) *tls.Config {
	own := base.GetCertificate
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return own(&tls.ClientHelloInfo{})
		},
		// The chain is checked by samePublicKey instead: peers are pinned.
		InsecureSkipVerify:    true, //nolint:gosec // pinned by VerifyPeerCertificate
		VerifyPeerCertificate: samePublicKey(own),
	}
}

func samePublicKey(own func(*tls.ClientHelloInfo) (*tls.Certificate, error)) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no peer certificate")
		}
		peer, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return fmt.Errorf("peer certificate: %w", err)
		}
		cert, err := own(&tls.ClientHelloInfo{})
		if err != nil {
			return fmt.Errorf("own certificate: %w", err)
		}
		key, err := certs.PublicKeyOf(cert)
		if err != nil {
			return fmt.Errorf("own certificate: %w", err)
		}
		if k, ok := key.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(peer.PublicKey) {
			return errors.New("the peer's certificate is not the replica certificate")
		}
		return nil
	}
}
