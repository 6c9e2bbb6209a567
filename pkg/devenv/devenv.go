// Package devenv runs a complete local Latchkey with no cluster: etcd and
// kube-apiserver (envtest's binaries), Latchkey's CRDs and admission
// webhook, and the operator with its auth endpoints on 127.0.0.1. `make
// dev` runs it; a service's own integration tests can too:
//
//	lk, err := devenv.Start(ctx, devenv.Options{AssetsDir: os.Getenv("KUBEBUILDER_ASSETS")})
//	if err != nil { ... }
//	defer lk.Stop()
//	// lk.Config is an admin rest.Config, lk.Endpoint the auth endpoints' base
//	// URL, lk.HTTPClient trusts their certificate; lk.WriteFiles writes a
//	// kubeconfig and the CA for other programs.
package devenv

import (
	"context"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"

	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// Options configure a local Latchkey.
type Options struct {
	// AssetsDir holds kube-apiserver, etcd and kubectl (`make envtest`);
	// default KUBEBUILDER_ASSETS.
	AssetsDir string
	// TokenWebhook also points kube-apiserver's webhook token
	// authenticator at Latchkey, so keys work as kubectl tokens.
	TokenWebhook bool
	// LastUsedInterval overrides how often last use and counts are written
	// (default a minute; tests may want a second).
	LastUsedInterval time.Duration
	// Logger receives the operator's logs; default: discarded.
	Logger logr.Logger
}

// Latchkey is a running local Latchkey.
type Latchkey struct {
	*controlplane.ControlPlane
	// Endpoint is the base URL of the auth endpoints, such as
	// https://127.0.0.1:40123 (/authorize, /tokenreview, /whoami, /v1/executions).
	Endpoint string
	// HTTPClient trusts the endpoints' certificate.
	HTTPClient *http.Client
	operator   *operator.Local
}

// Start starts etcd, kube-apiserver and the operator with the manager's
// defaults, and returns once the endpoints answer and the key index has
// synced.
func Start(ctx context.Context, o Options) (*Latchkey, error) {
	if o.AssetsDir == "" {
		o.AssetsDir = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if o.Logger.GetSink() == nil {
		o.Logger = logr.Discard()
	}
	cp, err := controlplane.Start(controlplane.Options{AssetsDir: o.AssetsDir, Webhooks: true, TokenWebhook: o.TokenWebhook})
	if err != nil {
		return nil, err
	}
	opts := operator.DefaultOptions()
	if o.LastUsedInterval != 0 {
		opts.LastUsedInterval = o.LastUsedInterval
	}
	local, err := operator.StartLocal(ctx, cp, o.Logger, opts)
	if err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return &Latchkey{ControlPlane: cp, Endpoint: cp.Endpoint(), HTTPClient: cp.HTTPClient(), operator: local}, nil
}

// Stop stops the operator, then kube-apiserver and etcd; nothing is left running.
func (lk *Latchkey) Stop() error {
	lk.operator.Stop()
	return lk.ControlPlane.Stop()
}
