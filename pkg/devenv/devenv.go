// Package devenv runs a complete local Latchkey with no cluster: etcd and
// kube-apiserver (envtest's binaries), Latchkey's CRDs and admission
// webhook, and the operator with its auth endpoints on 127.0.0.1. `make
// dev` runs it; a service's own integration tests can too:
//
//	lk, err := devenv.Start(ctx, devenv.Options{AssetsDir: os.Getenv("KUBEBUILDER_ASSETS")})
//	if err != nil { ... }
//	defer lk.Stop()
//	// lk.Config is an admin rest.Config, lk.Endpoint the auth endpoints' base
//	// URL, lk.HTTPClient trusts their certificate.
package devenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/plugin/clusterext"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
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
	// Tune adjusts the operator's settings before it starts (this
	// module's own tests use it).
	Tune func(*operator.Options)
}

// Latchkey is a running local Latchkey.
type Latchkey struct {
	*controlplane.ControlPlane
	// Endpoint is the base URL of the auth endpoints, such as
	// https://127.0.0.1:40123 (/authorize, /tokenreview, /whoami, /v1/executions).
	Endpoint string
	// HTTPClient trusts the endpoints' certificate.
	HTTPClient *http.Client
	// Operator is what runs inside, for tests that look.
	Operator *operator.Operator
	options  Options
	stop     func()
}

// Start starts etcd, kube-apiserver and the operator, and returns once the
// endpoints answer and the key index has synced.
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
	lk := &Latchkey{ControlPlane: cp, Endpoint: fmt.Sprintf("https://%s:%d", cp.WebhookHost(), cp.WebhookPort()), options: o}
	if err := lk.startOperator(ctx, o); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return lk, nil
}

func (lk *Latchkey) startOperator(ctx context.Context, o Options) error {
	mgr, err := ctrl.NewManager(lk.Config, ctrl.Options{
		Scheme:                 lk.Scheme,
		Logger:                 o.Logger,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		// Admission on its own port, for kube-apiserver's client certificate only.
		WebhookServer: serving.New(lk.ServingOptions()),
		Cache:         operator.CacheOptions(),
		Client:        operator.ClientOptions(),
	})
	if err != nil {
		return err
	}
	// The manager's defaults, but for what a local run needs sooner.
	opts := operator.DefaultOptions()
	opts.SecretCheckInterval = 30 * time.Second
	if o.LastUsedInterval != 0 {
		opts.LastUsedInterval = o.LastUsedInterval
	}
	if o.TokenWebhook {
		// kube-apiserver asks for its own audience, which defaults to its
		// service account issuer: envtest's is its own URL.
		opts.APIServerAudiences = []string{lk.Environment.ControlPlane.APIServer.SecureServing.URL("https", "/").String()}
	}
	if o.Tune != nil {
		o.Tune(&opts)
	}
	if lk.Operator, err = operator.Setup(mgr, opts); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- mgr.Start(runCtx) }()
	lk.stop = func() {
		cancel()
		if err := <-done; err != nil {
			o.Logger.Error(err, "Operator stopped with an error")
		}
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(lk.WebhookCA)
	lk.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return fmt.Errorf("the operator stopped: %w", err)
		default:
		}
		if resp, err := lk.HTTPClient.Get(lk.Endpoint + protocol.PathWhoAmI); err == nil {
			_ = resp.Body.Close()
			if lk.Operator.Verifier.Synced() {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	lk.stop()
	return errors.New("the operator's endpoints did not come up within 60s")
}

// RestartOperator stops the operator and starts a new one on the same
// control plane, as a crash and restart of the manager would.
func (lk *Latchkey) RestartOperator(ctx context.Context) error {
	lk.StopOperator()
	return lk.startOperator(ctx, lk.options)
}

// StopOperator stops the operator and leaves the control plane running, as
// when the manager is down; RestartOperator brings it back.
func (lk *Latchkey) StopOperator() {
	if lk.stop != nil {
		lk.stop()
		lk.stop = nil
	}
}

// Stop stops the operator, then kube-apiserver and etcd; nothing is left running.
func (lk *Latchkey) Stop() error {
	lk.StopOperator()
	return lk.ControlPlane.Stop()
}

// Files are what WriteFiles wrote.
type Files struct {
	Kubeconfig, CA, Endpoint string
	// KeyKubeconfig names the cluster but holds no credentials, for
	// `kubectl --kubeconfig KeyKubeconfig --token=KEY`.
	KeyKubeconfig string
}

// WriteFiles writes an admin kubeconfig, the endpoints' CA and the
// endpoints' base URL into dir, for people and scripts to use. The
// kubeconfig's cluster names the endpoints too (clusterext), for `kubectl
// latchkey whoami`.
func (lk *Latchkey) WriteFiles(dir string) (Files, error) {
	f := Files{
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		CA:         filepath.Join(dir, "ca.crt"),
		Endpoint:   filepath.Join(dir, "endpoint"),

		KeyKubeconfig: filepath.Join(dir, "key-kubeconfig"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	if err := lk.WriteAdminKubeconfig(f.Kubeconfig); err != nil {
		return f, err
	}
	if err := lk.nameEndpoints(f.Kubeconfig); err != nil {
		return f, err
	}
	if err := writeKeyKubeconfig(f.Kubeconfig, f.KeyKubeconfig); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.CA, lk.WebhookCA, 0o600); err != nil {
		return f, err
	}
	return f, os.WriteFile(f.Endpoint, []byte(lk.Endpoint+"\n"), 0o600)
}

// writeKeyKubeconfig writes the admin kubeconfig with no credentials, for
// `kubectl --token=KEY`: with the admin's client certificate beside it, the
// certificate would win and kubectl would speak as the admin.
func writeKeyKubeconfig(admin, file string) error {
	cfg, err := clientcmd.LoadFromFile(admin)
	if err != nil {
		return err
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name] = clientcmdapi.NewAuthInfo()
	}
	return clientcmd.WriteToFile(*cfg, file)
}

// nameEndpoints names the endpoints in every cluster of the kubeconfig.
func (lk *Latchkey) nameEndpoints(kubeconfig string) error {
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		if err := clusterext.Set(c, clusterext.Endpoints{URL: lk.Endpoint, CertificateAuthorityData: lk.WebhookCA}); err != nil {
			return err
		}
	}
	return clientcmd.WriteToFile(*cfg, kubeconfig)
}
