// Command manager runs the Latchkey operator: the ApiKey, ApiKeyRecord and
// Usage controllers, the verification endpoints and the webhook server.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/controller"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/scheme"
	"github.com/latchkey-dev/latchkey/internal/serving"
)

var setupLog = ctrl.Log.WithName("setup")

// certFiles name a certificate and key in a directory.
type certFiles struct{ dir, cert, key string }

// config is what the flags say: the operator's options, starting from
// operator.DefaultOptions, and how the manager around it is served.
type config struct {
	operator operator.Options

	metricsAddr, probeAddr, pprofAddr          string
	metricsCert, webhookCert                   certFiles
	leaderElect, secureMetrics, enableHTTP2    bool
	webhookPort, admissionPort                 int
	admissionClientCA, admissionClientNames    string
	maxConns, maxAddrConns                     int
	kubeAPIQPS                                 float64
	kubeAPIBurst                               int
	trustedProxies                             string
	tokenAudiences, apiServerAudiences         string
	keyHeaders, fencePeers                     string
	certSecretName, serviceName, webhookConfig string
	zap                                        zap.Options
}

func main() {
	cfg := parseFlags()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&cfg.zap)))
	if err := run(cfg); err != nil {
		setupLog.Error(err, "The manager stopped")
		os.Exit(1)
	}
}

// parseFlags reads the command line into a config.
func parseFlags() *config {
	cfg := &config{operator: operator.DefaultOptions(), zap: zap.Options{Development: true}}
	o := &cfg.operator
	limits := serving.DefaultLimits()
	flag.StringVar(&cfg.metricsAddr, "metrics-bind-address", "0", "The address the metrics endpoint binds to. "+
		"Use :8443 for HTTPS or :8080 for HTTP, or leave as 0 to disable the metrics service.")
	flag.StringVar(&cfg.probeAddr, "health-probe-bind-address", ":8081", "The address the probe endpoint binds to.")
	flag.StringVar(&cfg.pprofAddr, "pprof-bind-address", "", "The address Go's profiling endpoints (/debug/pprof) bind to, "+
		"for an operator profiling the manager; empty (the default) serves none. Bind it to loopback: it is unauthenticated.")
	flag.BoolVar(&cfg.leaderElect, "leader-elect", false,
		"Enable leader election for controller manager. Enabling this will ensure there is only one active controller manager.")
	flag.BoolVar(&cfg.secureMetrics, "metrics-secure", true,
		"If set, the metrics endpoint is served securely via HTTPS. Use --metrics-secure=false to use HTTP instead.")
	flag.StringVar(&cfg.webhookCert.dir, "webhook-cert-path", "", "The directory that contains the webhook certificate.")
	flag.StringVar(&cfg.webhookCert.cert, "webhook-cert-name", "tls.crt", "The name of the webhook certificate file.")
	flag.StringVar(&cfg.webhookCert.key, "webhook-cert-key", "tls.key", "The name of the webhook key file.")
	flag.StringVar(&cfg.metricsCert.dir, "metrics-cert-path", "", "The directory that contains the metrics server certificate.")
	flag.StringVar(&cfg.metricsCert.cert, "metrics-cert-name", "tls.crt", "The name of the metrics server certificate file.")
	flag.StringVar(&cfg.metricsCert.key, "metrics-cert-key", "tls.key", "The name of the metrics server key file.")
	flag.BoolVar(&cfg.enableHTTP2, "enable-http2", false,
		"If set, HTTP/2 will be enabled for the metrics and webhook servers")
	flag.IntVar(&cfg.webhookPort, "webhook-port", serving.DefaultVerificationPort,
		"The port the verification endpoints (/tokenreview, /authorize, /whoami, /v1/executions) listen on.")
	flag.IntVar(&cfg.admissionPort, "admission-port", serving.DefaultAdmissionPort,
		"The port the admission webhook listens on, apart from the verification endpoints: only kube-apiserver may call it.")
	flag.StringVar(&cfg.admissionClientCA, "admission-client-ca", "",
		"A PEM CA file: the admission port requires a client certificate it signed (kube-apiserver's, from its AdmissionConfiguration). "+
			"Empty serves admission unauthenticated, relying on the NetworkPolicy alone.")
	flag.StringVar(&cfg.admissionClientNames, "admission-client-names", "",
		"Comma-separated names (common name or DNS SAN) of the only client certificates the admission port accepts; empty accepts any the CA signed.")
	flag.IntVar(&cfg.maxConns, "max-connections", limits.MaxConns,
		"Connections the verification port holds open at once; past it new ones are closed at accept.")
	flag.IntVar(&cfg.maxAddrConns, "max-connections-per-address", limits.MaxConnsPerAddress,
		"Connections the verification port holds open at once from one client address (IPv6: one /64); --trusted-proxies are exempt.")
	flag.IntVar(&o.MaxFences, "max-fences", o.MaxFences,
		"Keys fenced at once (revocations admitted, not yet seen persisted); past it a revocation is refused with 503 until fences end.")
	flag.DurationVar(&o.RecordRetention, "record-retention", o.RecordRetention,
		"How long the revoked record of a deleted ApiKey is kept for audit.")
	flag.IntVar(&o.MaxDeletedRecordsPerTenant, "max-deleted-records-per-namespace", o.MaxDeletedRecordsPerTenant,
		"How many records of deleted ApiKeys a namespace keeps for audit at most; past it the longest revoked are deleted before their retention ends.")
	flag.DurationVar(&o.SecretCheckInterval, "secret-check-interval", o.SecretCheckInterval,
		"How often an Active key's Secret is checked for deletion at most (Secrets are read by name, never watched).")
	flag.Float64Var(&o.SecretChecksPerSecond, "secret-checks-per-second", o.SecretChecksPerSecond,
		"Secret reads a second all keys' periodic checks may make together (bursts of at most its ceiling), whatever the number of keys: "+
			"past --secret-check-interval × this many keys, each is checked about every keys/this seconds. Creates and spec edits are checked at once, outside it.")
	flag.DurationVar(&o.ExpiryWarning, "expiry-warning", o.ExpiryWarning,
		"How long before its spec.expiresAt a key is ExpiringSoon (a condition, a KeyExpiringSoon Warning Event, latchkey_keys_expiring_soon).")
	flag.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", o.MaxConcurrentReconciles, "How many ApiKeys are reconciled at once.")
	flag.Float64Var(&cfg.kubeAPIQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "Queries per second to the API server.")
	flag.IntVar(&cfg.kubeAPIBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "Burst of queries to the API server.")
	flag.DurationVar(&o.FenceTTL, "fence-ttl", o.FenceTTL,
		"How long a key stays fenced after its revocation is admitted, if the revocation is never seen persisted.")
	flag.DurationVar(&o.LastUsedInterval, "last-used-interval", o.LastUsedInterval,
		"How often keys' last use is written to their status (at most one write per key per interval).")
	flag.Float64Var(&o.LastUseWritesPerSecond, "last-use-writes-per-second", o.LastUseWritesPerSecond,
		"Keys whose last use this replica writes per second at most (two status patches each), averaged over an interval: "+
			"with more keys in use, each is written less often, so that last use costs the API server the same whatever the number of keys.")
	flag.Float64Var(&o.FailedAuthRate, "failed-auth-rate", o.FailedAuthRate,
		"Failed verifications at /authorize and /whoami allowed per second per client address before 429 (0 disables the limit).")
	flag.IntVar(&o.FailedAuthBurst, "failed-auth-burst", o.FailedAuthBurst, "Burst of failed verifications allowed per client address.")
	flag.Float64Var(&o.FailedAuthGlobalRate, "failed-auth-global-rate", o.FailedAuthGlobalRate,
		"Failed verifications at /authorize and /whoami allowed per second from all client addresses together before 429 (0 disables the limit).")
	flag.IntVar(&o.FailedAuthGlobalBurst, "failed-auth-global-burst", o.FailedAuthGlobalBurst, "Burst of failed verifications allowed from all client addresses together.")
	flag.StringVar(&cfg.trustedProxies, "trusted-proxies", "",
		"Comma-separated CIDRs of proxies whose --client-address-header names the client, for rate limiting.")
	flag.StringVar(&o.ClientAddressHeader, "client-address-header", o.ClientAddressHeader,
		"The one header in which trusted proxies name the client, such as X-Real-IP or X-Forwarded-For (its last hop, the one the proxy appended); any other is ignored.")
	flag.StringVar(&cfg.tokenAudiences, "token-audiences", strings.Join(o.TokenAudiences, ","),
		"Comma-separated audiences keys are valid for in TokenReviews from services; a review for any other audience refuses a key.")
	flag.StringVar(&cfg.apiServerAudiences, "apiserver-audiences", "",
		"Comma-separated audiences of kube-apiserver (its --api-audiences, by default its --service-account-issuer) when it authenticates keys "+
			"with --authentication-token-webhook-config-file; empty: keys are not valid for the Kubernetes API.")
	flag.StringVar(&cfg.certSecretName, "cert-secret-name", "latchkey-webhook-server-cert",
		"Without --webhook-cert-path: the Secret in the manager's namespace (POD_NAMESPACE) where it keeps and renews its own serving certificate.")
	flag.StringVar(&cfg.serviceName, "webhook-service-name", "latchkey-webhook-service", "The Service in front of the webhook server.")
	flag.StringVar(&cfg.webhookConfig, "webhook-configuration-name", "latchkey-validating-webhook-configuration",
		"The ValidatingWebhookConfiguration to inject the self-managed CA into.")
	flag.StringVar(&o.ExtAuthzBindAddress, "ext-authz-bind-address", o.ExtAuthzBindAddress,
		"The address Envoy's ext_authz (gRPC envoy.service.auth.v3.Authorization/Check) is served on, with the webhook server's certificate; 0 turns it off.")
	flag.BoolVar(&o.ExtAuthzInsecure, "ext-authz-insecure", o.ExtAuthzInsecure,
		"Serve ext_authz in plaintext (h2c), for a mesh whose sidecars already encrypt with mTLS.")
	flag.StringVar(&cfg.keyHeaders, "key-headers", strings.Join(endpoints.DefaultKeyHeaders, ","),
		"Comma-separated headers a key is read from when Authorization holds no bearer key (/authorize, /whoami, /v1/executions and ext_authz); empty: Authorization only.")
	flag.StringVar(&o.KeyQueryParam, "key-query-param", o.KeyQueryParam,
		"A query parameter a key is read from last (off by default: a key in a URL ends up in access logs); ext_authz has Envoy remove it upstream.")
	flag.StringVar(&o.ReplicaName, "replica-name", replicaName(),
		"This replica's name, unique among the replicas: its serving lease is latchkey-replica-NAME (default POD_NAME, else the host name and process ID).")
	flag.DurationVar(&o.ServingLease, "serving-lease", o.ServingLease,
		"How long a renewal of the serving lease lets this replica answer keys (renewed every quarter of it); a revocation waits at most "+
			"--fence-timeout plus this for a replica it cannot reach (docs/replicas.md). 0 turns fencing every replica off: for one replica that must answer through API server outages.")
	flag.DurationVar(&o.FenceTimeout, "fence-timeout", o.FenceTimeout, "How long each call to a peer replica (a fence, a catch-up) may take.")
	flag.StringVar(&o.FenceBindAddress, "fence-bind-address", o.FenceBindAddress,
		"The address peer replicas fence this one on (TLS with the webhook certificate, which callers must present too); 0 serves none.")
	flag.StringVar(&cfg.fencePeers, "fence-peers", "",
		"Comma-separated URLs of the peer replicas' fence endpoints, out of a cluster; empty: the EndpointSlices of --webhook-service-name, on its port named fence.")
	flag.BoolVar(&o.KeepCredential, "keep-credential", o.KeepCredential,
		"Leave the key in the request the gateway passes upstream; by default ext_authz has Envoy remove the header it came in.")
	cfg.zap.BindFlags(flag.CommandLine)
	flag.Parse()
	return cfg
}

// run builds the manager, sets Latchkey up in it and runs it until a signal.
func run(cfg *config) error {
	trusted, err := parsePrefixes(cfg.trustedProxies)
	if err != nil {
		return fmt.Errorf("invalid --trusted-proxies: %w", err)
	}
	o := &cfg.operator
	o.Registry = ctrlmetrics.Registry
	o.Webhooks = os.Getenv("ENABLE_WEBHOOKS") != "false"
	o.TrustedProxies = trusted
	o.TokenAudiences = splitList(cfg.tokenAudiences)
	o.FencePeers = splitList(cfg.fencePeers)
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		o.ReplicaNamespace = ns
		if len(o.FencePeers) == 0 {
			o.WebhookService = cfg.serviceName
		}
	}
	o.APIServerAudiences = splitList(cfg.apiServerAudiences)
	// The ServiceAccount, for the command a namespace runs to opt in to key
	// delivery; the Deployment passes both through the downward API.
	if ns, name := os.Getenv("POD_NAMESPACE"), os.Getenv("SERVICE_ACCOUNT_NAME"); ns != "" && name != "" {
		o.ServiceAccount = ns + ":" + name
	}

	tlsOpts := baseTLS(cfg.enableHTTP2)
	webhookCert, rotator, err := servingCertificate(cfg)
	if err != nil {
		return err
	}
	metricsCert, err := watchCertificate(cfg.metricsCert)
	if err != nil {
		return err
	}
	restConfig := ctrl.GetConfigOrDie()
	restConfig.QPS = float32(cfg.kubeAPIQPS)
	restConfig.Burst = cfg.kubeAPIBurst
	webhookTLS := append([]func(*tls.Config){}, tlsOpts...)
	switch {
	case webhookCert != nil:
		webhookTLS = append(webhookTLS, func(c *tls.Config) { c.GetCertificate = webhookCert.GetCertificate })
	case rotator != nil:
		webhookTLS = append(webhookTLS, func(c *tls.Config) { c.GetCertificate = rotator.GetCertificate })
	}
	o.ServingTLS, o.ServingCertDir = webhookTLS, cfg.webhookCert.dir
	o.KeyHeaders = append([]string{}, splitList(cfg.keyHeaders)...)
	mgr, err := newManager(cfg, restConfig, tlsOpts, webhookTLS, metricsCert, trusted)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if _, err := operator.Setup(mgr, *o); err != nil {
		return fmt.Errorf("setting Latchkey up: %w", err)
	}
	if err := addCertificates(mgr, restConfig, rotator, webhookCert, metricsCert); err != nil {
		return err
	}
	if err := errors.Join(mgr.AddHealthzCheck("healthz", healthz.Ping), mgr.AddReadyzCheck("readyz", healthz.Ping)); err != nil {
		return fmt.Errorf("setting up probes: %w", err)
	}
	setupLog.Info("Starting manager")
	return mgr.Start(ctrl.SetupSignalHandler())
}

// baseTLS is the TLS every listener shares.
func baseTLS(enableHTTP2 bool) []func(*tls.Config) {
	if enableHTTP2 {
		return nil
	}
	// HTTP/2 is off by default: see CVE-2023-44487 (Rapid Reset) and CVE-2023-39325.
	return []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
}

// servingCertificate is where the webhook server's certificate comes from:
// files (cert-manager's) when given, else, in a cluster, a certificate the
// manager makes, renews and serves itself.
func servingCertificate(cfg *config) (*certwatcher.CertWatcher, *certs.Rotator, error) {
	if cfg.webhookCert.dir != "" {
		w, err := watchCertificate(cfg.webhookCert)
		return w, nil, err
	}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		return nil, nil, nil
	}
	return nil, &certs.Rotator{
		Clock: clock.RealClock{}, Namespace: ns, SecretName: cfg.certSecretName,
		ServiceName: cfg.serviceName, WebhookConfigName: cfg.webhookConfig,
	}, nil
}

// watchCertificate watches the certificate files f names, or returns nil
// when it names none.
func watchCertificate(f certFiles) (*certwatcher.CertWatcher, error) {
	if f.dir == "" {
		return nil, nil
	}
	w, err := certwatcher.New(filepath.Join(f.dir, f.cert), filepath.Join(f.dir, f.key))
	if err != nil {
		return nil, fmt.Errorf("watching the certificate in %s: %w", f.dir, err)
	}
	return w, nil
}

// newManager makes the manager with Latchkey's own webhook server, serving
// with webhookTLS, and the metrics server.
func newManager(cfg *config, restConfig *rest.Config, tlsOpts, webhookTLS []func(*tls.Config), metricsCert *certwatcher.CertWatcher, trusted []netip.Prefix) (manager.Manager, error) {
	limits := serving.DefaultLimits()
	limits.MaxConns, limits.MaxConnsPerAddress = cfg.maxConns, cfg.maxAddrConns
	webhookServer := serving.New(serving.Options{
		VerificationPort: cfg.webhookPort, AdmissionPort: cfg.admissionPort, TLSOpts: webhookTLS,
		AdmissionClientCA: cfg.admissionClientCA, AdmissionClientNames: splitList(cfg.admissionClientNames),
		Verification: limits, UncappedAddresses: trusted,
	})

	metricsOpts := metricsserver.Options{BindAddress: cfg.metricsAddr, SecureServing: cfg.secureMetrics, TLSOpts: tlsOpts}
	if cfg.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	if metricsCert != nil {
		metricsOpts.TLSOpts = append(append([]func(*tls.Config){}, tlsOpts...),
			func(c *tls.Config) { c.GetCertificate = metricsCert.GetCertificate })
	}
	return ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsOpts,
		WebhookServer:          webhookServer,
		HealthProbeBindAddress: cfg.probeAddr,
		PprofBindAddress:       cfg.pprofAddr,
		LeaderElection:         cfg.leaderElect,
		LeaderElectionID:       "latchkey.auth.latchkey.dev",
		// In a cluster the namespace comes from the ServiceAccount; elsewhere from POD_NAMESPACE.
		LeaderElectionNamespace: os.Getenv("POD_NAMESPACE"),
		Cache:                   operator.CacheOptions(),
		Client:                  operator.ClientOptions(),
	})
}

// addCertificates runs what keeps the serving certificates current: the
// rotator (whose certificate the webhook server then serves) or the file
// watchers.
func addCertificates(mgr manager.Manager, restConfig *rest.Config, rotator *certs.Rotator, watchers ...*certwatcher.CertWatcher) error {
	if rotator != nil {
		// A direct client: the certificate's Secret is read by name, never cached.
		var err error
		if rotator.Client, err = client.New(restConfig, client.Options{Scheme: mgr.GetScheme()}); err != nil {
			return fmt.Errorf("creating a client for the certificate rotator: %w", err)
		}
		if err := mgr.Add(rotator); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("serving-certificate", func(*http.Request) error { return rotator.Ready() }); err != nil {
			return err
		}
	}
	for _, w := range watchers {
		if w == nil {
			continue
		}
		if err := mgr.Add(w); err != nil {
			return fmt.Errorf("adding a certificate watcher: %w", err)
		}
	}
	return nil
}

// replicaName is the pod's name; out of a cluster, the host's and the
// process's, so that managers side by side never share a lease.
func replicaName() string {
	if name := os.Getenv("POD_NAME"); name != "" {
		return name
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", strings.ToLower(host), os.Getpid())
}

func parsePrefixes(list string) ([]netip.Prefix, error) {
	parts := splitList(list)
	out := make([]netip.Prefix, 0, len(parts))
	for _, cidr := range parts {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
