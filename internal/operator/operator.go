// Package operator wires Latchkey into a controller-runtime manager: the
// controllers, the key index and its endpoints, and the admission webhook.
// cmd/main.go and the integration tests share it, so tests run what ships.
package operator

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/controller"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/extauthz"
	"github.com/latchkey-dev/latchkey/internal/fencing"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/internal/usage/activity"
	"github.com/latchkey-dev/latchkey/internal/usage/store"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	webhookv1alpha1 "github.com/latchkey-dev/latchkey/webhook/v1alpha1"
)

// Options are the operator's settings; cmd/main.go fills them from flags.
type Options struct {
	Clock  clock.Clock
	Random io.Reader
	// Registry receives Latchkey's metrics (package metrics lists them).
	Registry prometheus.Registerer

	MaxConcurrentReconciles int
	RecordRetention         time.Duration
	// MaxDeletedRecordsPerTenant bounds the records of deleted keys kept per
	// namespace; 0 means controller.DefaultMaxDeletedRecordsPerTenant.
	MaxDeletedRecordsPerTenant int
	SecretCheckInterval        time.Duration
	// SecretChecksPerSecond bounds the Secret GETs of all keys' periodic
	// checks together; 0 means controller.DefaultSecretChecksPerSecond.
	SecretChecksPerSecond float64
	// ServiceAccount is the manager's, namespace:name; empty means the
	// installed default.
	ServiceAccount string
	// ExpiryWarning is how long before spec.expiresAt a key is
	// ExpiringSoon; 0 means controller.DefaultExpiryWarning.
	ExpiryWarning time.Duration

	// Webhooks registers the admission webhook (off for `make run`).
	Webhooks         bool
	FenceTTL         time.Duration
	LastUsedInterval time.Duration
	// LastUseWritesPerSecond bounds the keys whose last use a replica
	// writes per second, whatever the number of keys in use.
	LastUseWritesPerSecond float64
	// MaxFences bounds the fence table; 0 means verifier.DefaultMaxFences.
	MaxFences int
	// FailedAuthRate and FailedAuthBurst limit failed verifications per
	// client address; a rate of 0 disables the limit.
	FailedAuthRate  float64
	FailedAuthBurst int
	// FailedAuthGlobalRate and FailedAuthGlobalBurst limit them from all
	// addresses together; a rate of 0 disables that limit.
	FailedAuthGlobalRate  float64
	FailedAuthGlobalBurst int
	TrustedProxies        []netip.Prefix
	// ClientAddressHeader is the one header trusted proxies name the client
	// in; empty means X-Real-IP.
	ClientAddressHeader string
	// TokenAudiences are the audiences keys are valid for in TokenReviews
	// (empty: endpoints.DefaultAudience); APIServerAudiences are
	// kube-apiserver's own, for which keys are valid only when set.
	TokenAudiences     []string
	APIServerAudiences []string

	// ExtAuthzBindAddress is where Envoy's ext_authz is served over gRPC;
	// "0" turns it off. ExtAuthzInsecure serves it in plaintext.
	ExtAuthzBindAddress string
	ExtAuthzInsecure    bool
	// ServingTLS and ServingCertDir are the webhook server's TLS options
	// and certificate directory, which the gRPC listener and the peer
	// listener serve too.
	ServingTLS     []func(*tls.Config)
	ServingCertDir string

	// ReplicaName names this replica's serving lease in ReplicaNamespace
	// (docs/replicas.md). ServingLease is how long a renewal lets it
	// serve; 0 turns fencing every replica off. FenceTimeout bounds each
	// call to a peer; peers are served on FenceBindAddress ("0": not at
	// all) and found at FencePeers, or, when it is empty and
	// WebhookService is set, from that Service's EndpointSlices.
	ReplicaName, ReplicaNamespace string
	ServingLease, FenceTimeout    time.Duration
	FenceBindAddress              string
	FencePeers                    []string
	WebhookService                string
	// KeyHeaders are read for a key after "Authorization: Bearer" (nil:
	// endpoints.DefaultKeyHeaders), and KeyQueryParam, when set, last, on
	// every verification endpoint; KeepCredential leaves the key in the
	// request Envoy passes upstream.
	KeyHeaders     []string
	KeyQueryParam  string
	KeepCredential bool
}

// DefaultOptions are the operator's settings as the manager ships them:
// cmd/main.go's flags start from them, and pkg/devenv and the tests change
// only what they must.
func DefaultOptions() Options {
	return Options{
		Clock:                      clock.RealClock{},
		Random:                     rand.Reader,
		Registry:                   prometheus.NewRegistry(),
		MaxConcurrentReconciles:    controller.DefaultMaxConcurrentReconciles,
		RecordRetention:            controller.DefaultRecordRetention,
		MaxDeletedRecordsPerTenant: controller.DefaultMaxDeletedRecordsPerTenant,
		SecretCheckInterval:        controller.DefaultSecretCheckInterval,
		SecretChecksPerSecond:      controller.DefaultSecretChecksPerSecond,
		ExpiryWarning:              controller.DefaultExpiryWarning,
		Webhooks:                   true,
		FenceTTL:                   verifier.DefaultFenceTTL,
		MaxFences:                  verifier.DefaultMaxFences,
		LastUsedInterval:           activity.DefaultLastUsedInterval,
		LastUseWritesPerSecond:     activity.DefaultLastUseWritesPerSecond,
		FailedAuthRate:             endpoints.DefaultFailureRate,
		FailedAuthBurst:            endpoints.DefaultFailureBurst,
		FailedAuthGlobalRate:       endpoints.DefaultGlobalFailureRate,
		FailedAuthGlobalBurst:      endpoints.DefaultGlobalFailureBurst,
		ClientAddressHeader:        endpoints.DefaultClientAddressHeader,
		TokenAudiences:             []string{endpoints.DefaultAudience},
		ExtAuthzBindAddress:        extauthz.DefaultBindAddress,
		ReplicaNamespace:           "default",
		ServingLease:               fencing.DefaultServingLease,
		FenceTimeout:               fencing.DefaultFenceTimeout,
		FenceBindAddress:           fencing.DefaultBindAddress,
	}
}

// Operator is what Setup wired, for callers that look inside (tests).
type Operator struct {
	Verifier *verifier.Verifier
	Activity *activity.Recorder
	Metrics  *metrics.Metrics
	// ExtAuthz is the gRPC listener, nil when it is off.
	ExtAuthz *extauthz.Listener
	// Replica fences every replica, nil when that is off.
	Replica *fencing.Replica
}

// Setup adds everything Latchkey runs to mgr.
func Setup(mgr ctrl.Manager, o Options) (*Operator, error) {
	replica, err := newReplica(mgr, o)
	if err != nil {
		return nil, err
	}
	vopts := []verifier.Option{verifier.WithMaxFences(o.MaxFences)}
	var fence webhookv1alpha1.RevocationFence
	if replica != nil {
		vopts = append(vopts, verifier.WithGate(replica))
		fence = replica
	}
	v := verifier.New(o.Clock, o.FenceTTL, vopts...)
	if fence == nil {
		fence = v
	}
	apiKeys := &controller.ApiKeyReconciler{
		Client:                mgr.GetClient(),
		Index:                 v,
		APIReader:             mgr.GetAPIReader(),
		Recorder:              mgr.GetEventRecorder("latchkey"),
		Clock:                 o.Clock,
		Random:                o.Random,
		SecretCheckInterval:   o.SecretCheckInterval,
		SecretChecksPerSecond: o.SecretChecksPerSecond,
		ServiceAccount:        o.ServiceAccount,
		ExpiryWarning:         o.ExpiryWarning,
	}
	if err := apiKeys.SetupWithManager(mgr, o.MaxConcurrentReconciles); err != nil {
		return nil, fmt.Errorf("apikey controller: %w", err)
	}
	if err := (&controller.ApiKeyRecordReconciler{
		Client:    mgr.GetClient(),
		Index:     v,
		APIReader: mgr.GetAPIReader(),
		Clock:     o.Clock,
		Retention: o.RecordRetention,

		MaxDeletedPerTenant: o.MaxDeletedRecordsPerTenant,
	}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("apikeyrecord controller: %w", err)
	}

	if err := (&controller.UsageReconciler{Client: mgr.GetClient(), Index: v, Clock: o.Clock}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("usage controller: %w", err)
	}

	// kube-apiserver gzips responses over 128 KB for a client that accepts
	// it. The index's first lists, every ApiKey and record at once, are what
	// a restarted replica waits on to serve: gzip there is CPU on both ends
	// of that wait, to save bytes that cross the cluster's network once a
	// start.
	watchConfig := rest.CopyConfig(mgr.GetConfig())
	watchConfig.DisableCompression = true
	watchHTTP, err := rest.HTTPClientFor(watchConfig)
	if err != nil {
		return nil, fmt.Errorf("watching keys: %w", err)
	}
	watchClient, err := verifier.NewWatchClient(watchConfig, watchHTTP, mgr.GetRESTMapper())
	if err != nil {
		return nil, fmt.Errorf("watching keys: %w", err)
	}
	if err := mgr.Add(verifier.Watching{Verifier: v, Client: watchClient, AfterListPoint: replica != nil}); err != nil {
		return nil, err
	}
	if replica != nil {
		replica.Verifier = v
		if err := errors.Join(mgr.Add(replica), mgr.AddReadyzCheck("serving-lease", func(*http.Request) error { return replica.Ready() })); err != nil {
			return nil, err
		}
	}
	if err := mgr.Add(&verifier.FenceConfirmer{Verifier: v, Reader: mgr.GetAPIReader(), Clock: o.Clock}); err != nil {
		return nil, err
	}
	m := metrics.New(o.Registry)
	m.ReadIndex(v.Size, v.Fences)
	m.ReadKeysExpiringSoon(apiKeys.ExpiringSoonByNamespace)
	if s, ok := mgr.GetWebhookServer().(*serving.Server); ok {
		s.UseMetrics(m)
	}
	limiter := endpoints.NewFailureLimiter(o.FailedAuthRate, o.FailedAuthBurst, o.TrustedProxies,
		endpoints.WithGlobalBudget(o.FailedAuthGlobalRate, o.FailedAuthGlobalBurst),
		endpoints.WithClientAddressHeader(o.ClientAddressHeader))
	m.ReadRefusalsHeld(limiter.Held)
	ledgers := &store.Store{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Clock: o.Clock, Metrics: m}
	recorder := activity.New(mgr.GetClient(), ledgers, o.Clock, o.LastUsedInterval, m, activity.WithWritesPerSecond(o.LastUseWritesPerSecond))
	if err := mgr.Add(recorder); err != nil {
		return nil, err
	}
	keyPlaces, err := endpoints.NewKeyPlaces(o.KeyHeaders, o.KeyQueryParam)
	if err != nil {
		return nil, err
	}
	es := &endpoints.Server{
		Keys:               keyPlaces,
		Verifier:           v,
		Activity:           recorder,
		Reports:            ledgers,
		Limiter:            limiter,
		Audiences:          o.TokenAudiences,
		APIServerAudiences: o.APIServerAudiences,
		Clock:              o.Clock,
		Metrics:            m,
	}
	es.Register(mgr.GetWebhookServer().Register)
	ext, err := addExtAuthz(mgr, es, o, v.Synced)
	if err != nil {
		return nil, err
	}

	if o.Webhooks {
		if err := (&webhookv1alpha1.ApiKeyValidator{Clock: o.Clock, Fence: fence, Keys: v}).SetupWebhookWithManager(mgr); err != nil {
			return nil, fmt.Errorf("apikey webhook: %w", err)
		}
	}
	if err := mgr.AddReadyzCheck("verifier", func(*http.Request) error {
		if !v.Synced() {
			return errors.New("the key index is not synced yet")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return &Operator{Verifier: v, Activity: recorder, Metrics: m, ExtAuthz: ext, Replica: replica}, nil
}

// newReplica is this replica's part in fencing every replica, nil when
// o turns it off.
func newReplica(mgr ctrl.Manager, o Options) (*fencing.Replica, error) {
	if o.ServingLease <= 0 {
		return nil, nil
	}
	r := &fencing.Replica{
		Name: o.ReplicaName, Namespace: o.ReplicaNamespace,
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(),
		Lease: o.ServingLease, FenceTimeout: o.FenceTimeout, BindAddress: o.FenceBindAddress,
		TLSOpts: o.ServingTLS, CertDir: o.ServingCertDir, Clock: clock.RealClock{},
	}
	if r.Name == "" {
		return nil, errors.New("fencing every replica needs a replica name (--replica-name, or POD_NAME)")
	}
	if errs := validation.IsDNS1123Subdomain(fencing.LeasePrefix + r.Name); len(errs) > 0 {
		return nil, fmt.Errorf("invalid --replica-name %q: it names the Lease %s%s: %s", r.Name, fencing.LeasePrefix, r.Name, strings.Join(errs, "; "))
	}
	if o.FenceTimeout <= 0 || o.ServingLease < time.Second {
		return nil, fmt.Errorf("--fence-timeout must be positive and --serving-lease at least 1s (or 0, off); got %s and %s", o.FenceTimeout, o.ServingLease)
	}
	if bound := r.Bound() + time.Second; bound > fencing.AdmissionTimeout {
		return nil, fmt.Errorf("--fence-timeout (%s) and --serving-lease (%s) let a revocation wait %s, past the admission webhook's %s",
			o.FenceTimeout, o.ServingLease, bound, fencing.AdmissionTimeout)
	}
	switch {
	case len(o.FencePeers) > 0:
		r.Peers = fencing.StaticPeers(o.FencePeers)
	case o.WebhookService != "":
		r.Peers = fencing.EndpointSlicePeers{Reader: mgr.GetAPIReader(), Namespace: o.ReplicaNamespace, Service: o.WebhookService, Self: o.ReplicaName}
	default:
		r.Peers = fencing.StaticPeers(nil)
	}
	return r, nil
}

// addExtAuthz serves es as Envoy's ext_authz on its own listener, unless
// it is off.
func addExtAuthz(mgr ctrl.Manager, es *endpoints.Server, o Options, ready func() bool) (*extauthz.Listener, error) {
	if o.ExtAuthzBindAddress == "0" || o.ExtAuthzBindAddress == "" {
		return nil, nil
	}
	l := &extauthz.Listener{
		Address:  o.ExtAuthzBindAddress,
		Server:   extauthz.New(es, extauthz.Options{KeepCredential: o.KeepCredential}),
		Insecure: o.ExtAuthzInsecure,
		TLSOpts:  o.ServingTLS,
		CertDir:  o.ServingCertDir,
		Ready:    ready,
	}
	return l, mgr.Add(l)
}

// CacheOptions keep the manager's cache small. It holds no ApiKey and no
// record: the key index keeps what it reads of them from watches of its
// own, and the controllers read the one a pass is for from the API server
// (ClientOptions). No managed fields are kept of what it does hold.
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			// Only ledger states are summarised; batch-key segments (up to
			// 160 kB each) are read from the API server when needed.
			&authv1alpha1.UsageLedger{}: {Label: labels.SelectorFromSet(labels.Set{authv1alpha1.LabelLedger: authv1alpha1.LedgerPartState})},
		},
	}
}

// ClientOptions never cache Secrets, ApiKeys or records: a Secret cache
// would list and watch every Secret in the cluster, and a cache of ApiKeys
// and records would hold each whole, beside the key index. They are read
// by name.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{
		&corev1.Secret{}, &authv1alpha1.ApiKey{}, &authv1alpha1.ApiKeyRecord{},
	}}}
}
