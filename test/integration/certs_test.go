package integration

import (
	"crypto/x509"
	"errors"

	"go.uber.org/zap/zapcore"
)

const zapLevelError = zapcore.ErrorLevel

func certPool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate in the webhook's CA data")
	}
	return pool, nil
}
