// Command manager runs the Latchkey operator: the ApiKey, ApiKeyRecord and
// Usage controllers, the verification endpoints and the webhook server.
package main

import (
	"crypto/rand"
	"crypto/tls"
	"flag"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/controller"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/scheme"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/internal/usage/activity"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var setupLog = ctrl.Log.WithName("setup")

func main() {
	var (
		metricsAddr, probeAddr                             string
		metricsCertPath, metricsCertName, metricsCertKey   string
		webhookCertPath, webhookCertName, webhookCertKey   string
		enableLeaderElection, secureMetrics, enableHTTP2   bool
		webhookPort, maxConcurrentReconciles, kubeAPIBurst int
		kubeAPIQPS                                         float64
		recordRetention, secretCheckInterval               time.Duration
		maxDeletedRecords                                  int
		fenceTTL, lastUsedInterval                         time.Duration
		failureRate, globalFailureRate                     float64
		failureBurst, globalFailureBurst                   int
		trustedProxies, clientAddressHeader                string
		tokenAudiences, apiServerAudiences                 string
		certSecretName, webhookServiceName, webhookConfig  string
		admissionPort, maxFences, maxConns, maxAddrConns   int
		admissionClientCA, admissionClientNames            string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "The address the metrics endpoint binds to. "+
		"Use :8443 for HTTPS or :8080 for HTTP, or leave as 0 to disable the metrics service.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "The address the probe endpoint binds to.")
	flag.BoolVar(&enableLeaderElection, "leader-elect", false,
		"Enable leader election for controller manager. Enabling this will ensure there is only one active controller manager.")
	flag.BoolVar(&secureMetrics, "metrics-secure", true,
		"If set, the metrics endpoint is served securely via HTTPS. Use --metrics-secure=false to use HTTP instead.")
	flag.StringVar(&webhookCertPath, "webhook-cert-path", "", "The directory that contains the webhook certificate.")
	flag.StringVar(&webhookCertName, "webhook-cert-name", "tls.crt", "The name of the webhook certificate file.")
	flag.StringVar(&webhookCertKey, "webhook-cert-key", "tls.key", "The name of the webhook key file.")
	flag.StringVar(&metricsCertPath, "metrics-cert-path", "", "The directory that contains the metrics server certificate.")
	flag.StringVar(&metricsCertName, "metrics-cert-name", "tls.crt", "The name of the metrics server certificate file.")
	flag.StringVar(&metricsCertKey, "metrics-cert-key", "tls.key", "The name of the metrics server key file.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false,
		"If set, HTTP/2 will be enabled for the metrics and webhook servers")
	flag.IntVar(&webhookPort, "webhook-port", serving.DefaultVerificationPort,
		"The port the verification endpoints (/tokenreview, /authorize, /whoami, /v1/executions) listen on.")
	flag.IntVar(&admissionPort, "admission-port", serving.DefaultAdmissionPort,
		"The port the admission webhook listens on, apart from the verification endpoints: only kube-apiserver may call it.")
	flag.StringVar(&admissionClientCA, "admission-client-ca", "",
		"A PEM CA file: the admission port requires a client certificate it signed (kube-apiserver's, from its AdmissionConfiguration). "+
			"Empty serves admission unauthenticated, relying on the NetworkPolicy alone.")
	flag.StringVar(&admissionClientNames, "admission-client-names", "",
		"Comma-separated names (common name or DNS SAN) of the only client certificates the admission port accepts; empty accepts any the CA signed.")
	flag.IntVar(&maxConns, "max-connections", serving.DefaultMaxConns,
		"Connections the verification port holds open at once; past it new ones are closed at accept.")
	flag.IntVar(&maxAddrConns, "max-connections-per-address", serving.DefaultMaxConnsPerAddress,
		"Connections the verification port holds open at once from one client address (IPv6: one /64); --trusted-proxies are exempt.")
	flag.IntVar(&maxFences, "max-fences", verifier.DefaultMaxFences,
		"Keys fenced at once (revocations admitted, not yet seen persisted); past it a revocation is refused with 503 until fences end.")
	flag.DurationVar(&recordRetention, "record-retention", controller.DefaultRecordRetention,
		"How long the revoked record of a deleted ApiKey is kept for audit.")
	flag.IntVar(&maxDeletedRecords, "max-deleted-records-per-namespace", controller.DefaultMaxDeletedRecordsPerTenant,
		"How many records of deleted ApiKeys a namespace keeps for audit at most; past it the longest revoked are deleted before their retention ends.")
	flag.DurationVar(&secretCheckInterval, "secret-check-interval", controller.DefaultSecretCheckInterval,
		"How often an Active key's Secret is checked for deletion (Secrets are read by name, never watched).")
	flag.IntVar(&maxConcurrentReconciles, "max-concurrent-reconciles", controller.DefaultMaxConcurrentReconciles, "How many ApiKeys are reconciled at once.")
	flag.Float64Var(&kubeAPIQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "Queries per second to the API server.")
	flag.IntVar(&kubeAPIBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "Burst of queries to the API server.")
	flag.DurationVar(&fenceTTL, "fence-ttl", verifier.DefaultFenceTTL,
		"How long a key stays fenced after its revocation is admitted, if the revocation is never seen persisted.")
	flag.DurationVar(&lastUsedInterval, "last-used-interval", activity.DefaultLastUsedInterval,
		"How often keys' last use is written to their status (at most one write per key per interval).")
	flag.Float64Var(&failureRate, "failed-auth-rate", 10,
		"Failed verifications at /authorize and /whoami allowed per second per client address before 429 (0 disables the limit).")
	flag.IntVar(&failureBurst, "failed-auth-burst", 50, "Burst of failed verifications allowed per client address.")
	flag.Float64Var(&globalFailureRate, "failed-auth-global-rate", endpoints.DefaultGlobalFailureRate,
		"Failed verifications at /authorize and /whoami allowed per second from all client addresses together before 429 (0 disables the limit).")
	flag.IntVar(&globalFailureBurst, "failed-auth-global-burst", endpoints.DefaultGlobalFailureBurst, "Burst of failed verifications allowed from all client addresses together.")
	flag.StringVar(&trustedProxies, "trusted-proxies", "",
		"Comma-separated CIDRs of proxies whose --client-address-header names the client, for rate limiting.")
	flag.StringVar(&clientAddressHeader, "client-address-header", endpoints.DefaultClientAddressHeader,
		"The one header in which trusted proxies name the client, such as X-Real-IP or X-Forwarded-For (its last hop, the one the proxy appended); any other is ignored.")
	flag.StringVar(&tokenAudiences, "token-audiences", endpoints.DefaultAudience,
		"Comma-separated audiences keys are valid for in TokenReviews from services; a review for any other audience refuses a key.")
	flag.StringVar(&apiServerAudiences, "apiserver-audiences", "",
		"Comma-separated audiences of kube-apiserver (its --api-audiences, by default its --service-account-issuer) when it authenticates keys "+
			"with --authentication-token-webhook-config-file; empty: keys are not valid for the Kubernetes API.")
	flag.StringVar(&certSecretName, "cert-secret-name", "latchkey-webhook-server-cert",
		"Without --webhook-cert-path: the Secret in the manager's namespace (POD_NAMESPACE) where it keeps and renews its own serving certificate.")
	flag.StringVar(&webhookServiceName, "webhook-service-name", "latchkey-webhook-service", "The Service in front of the webhook server.")
	flag.StringVar(&webhookConfig, "webhook-configuration-name", "latchkey-validating-webhook-configuration",
		"The ValidatingWebhookConfiguration to inject the self-managed CA into.")
	opts := zap.Options{Development: true}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		// HTTP/2 is off by default: see CVE-2023-44487 (Rapid Reset) and CVE-2023-39325.
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}

	var webhookCertWatcher, metricsCertWatcher *certwatcher.CertWatcher
	var rotator *certs.Rotator
	webhookTLSOpts := tlsOpts
	if ns := os.Getenv("POD_NAMESPACE"); webhookCertPath == "" && ns != "" {
		// In a cluster with no certificate given (cert-manager), the manager
		// makes, renews and serves its own.
		rotator = &certs.Rotator{
			Clock: clock.RealClock{}, Namespace: ns, SecretName: certSecretName,
			ServiceName: webhookServiceName, WebhookConfigName: webhookConfig,
		}
		webhookTLSOpts = append(webhookTLSOpts, func(c *tls.Config) { c.GetCertificate = rotator.GetCertificate })
	}
	if webhookCertPath != "" {
		var err error
		webhookCertWatcher, err = certwatcher.New(
			filepath.Join(webhookCertPath, webhookCertName), filepath.Join(webhookCertPath, webhookCertKey))
		if err != nil {
			setupLog.Error(err, "Failed to initialize webhook certificate watcher")
			os.Exit(1)
		}
		webhookTLSOpts = append(webhookTLSOpts, func(c *tls.Config) { c.GetCertificate = webhookCertWatcher.GetCertificate })
	}
	trusted := make([]netip.Prefix, 0, len(splitList(trustedProxies)))
	for _, cidr := range splitList(trustedProxies) {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			setupLog.Error(err, "Invalid --trusted-proxies")
			os.Exit(1)
		}
		trusted = append(trusted, p)
	}
	limits := serving.DefaultLimits()
	limits.MaxConns, limits.MaxConnsPerAddress = maxConns, maxAddrConns
	webhookServer := serving.New(serving.Options{
		VerificationPort: webhookPort, AdmissionPort: admissionPort, TLSOpts: webhookTLSOpts,
		AdmissionClientCA: admissionClientCA, AdmissionClientNames: splitList(admissionClientNames),
		Verification: limits, UncappedAddresses: trusted,
	})

	metricsServerOptions := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: secureMetrics,
		TLSOpts:       tlsOpts,
	}
	if secureMetrics {
		metricsServerOptions.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	if metricsCertPath != "" {
		var err error
		metricsCertWatcher, err = certwatcher.New(
			filepath.Join(metricsCertPath, metricsCertName), filepath.Join(metricsCertPath, metricsCertKey))
		if err != nil {
			setupLog.Error(err, "Failed to initialize metrics certificate watcher")
			os.Exit(1)
		}
		metricsServerOptions.TLSOpts = append(metricsServerOptions.TLSOpts,
			func(c *tls.Config) { c.GetCertificate = metricsCertWatcher.GetCertificate })
	}

	restConfig := ctrl.GetConfigOrDie()
	restConfig.QPS = float32(kubeAPIQPS)
	restConfig.Burst = kubeAPIBurst
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsServerOptions,
		WebhookServer:          webhookServer,
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         enableLeaderElection,
		LeaderElectionID:       "latchkey.auth.latchkey.dev",
		// In a cluster the namespace comes from the ServiceAccount; elsewhere from POD_NAMESPACE.
		LeaderElectionNamespace: os.Getenv("POD_NAMESPACE"),
		Cache:                   operator.CacheOptions(),
		Client:                  operator.ClientOptions(),
	})
	if err != nil {
		setupLog.Error(err, "Failed to create manager")
		os.Exit(1)
	}

	// The ServiceAccount, for the command a namespace runs to opt in to key
	// delivery; the Deployment passes both through the downward API.
	serviceAccount := ""
	if ns, name := os.Getenv("POD_NAMESPACE"), os.Getenv("SERVICE_ACCOUNT_NAME"); ns != "" && name != "" {
		serviceAccount = ns + ":" + name
	}
	if _, err := operator.Setup(mgr, operator.Options{
		Clock:                      clock.RealClock{},
		Random:                     rand.Reader,
		Registry:                   ctrlmetrics.Registry,
		MaxConcurrentReconciles:    maxConcurrentReconciles,
		RecordRetention:            recordRetention,
		MaxDeletedRecordsPerTenant: maxDeletedRecords,
		SecretCheckInterval:        secretCheckInterval,
		ServiceAccount:             serviceAccount,
		Webhooks:                   os.Getenv("ENABLE_WEBHOOKS") != "false",
		FenceTTL:                   fenceTTL,
		MaxFences:                  maxFences,
		LastUsedInterval:           lastUsedInterval,
		FailedAuthRate:             failureRate,
		FailedAuthBurst:            failureBurst,
		FailedAuthGlobalRate:       globalFailureRate,
		FailedAuthGlobalBurst:      globalFailureBurst,
		TrustedProxies:             trusted,
		ClientAddressHeader:        clientAddressHeader,
		TokenAudiences:             splitList(tokenAudiences),
		APIServerAudiences:         splitList(apiServerAudiences),
	}); err != nil {
		setupLog.Error(err, "Failed to set up Latchkey")
		os.Exit(1)
	}

	if rotator != nil {
		// A direct client: the certificate's Secret is read by name, never cached.
		if rotator.Client, err = client.New(restConfig, client.Options{Scheme: mgr.GetScheme()}); err != nil {
			setupLog.Error(err, "Failed to create a client for the certificate rotator")
			os.Exit(1)
		}
		if err := mgr.Add(rotator); err != nil {
			setupLog.Error(err, "Failed to add the certificate rotator")
			os.Exit(1)
		}
		if err := mgr.AddReadyzCheck("serving-certificate", func(*http.Request) error { return rotator.Ready() }); err != nil {
			setupLog.Error(err, "Failed to set up ready check")
			os.Exit(1)
		}
	}
	for _, w := range []*certwatcher.CertWatcher{webhookCertWatcher, metricsCertWatcher} {
		if w == nil {
			continue
		}
		if err := mgr.Add(w); err != nil {
			setupLog.Error(err, "Failed to add certificate watcher to manager")
			os.Exit(1)
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "Failed to set up ready check")
		os.Exit(1)
	}

	setupLog.Info("Starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Failed to run manager")
		os.Exit(1)
	}
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
