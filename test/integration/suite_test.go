// Package integration runs Latchkey as it ships (operator.Setup) against a
// real kube-apiserver, and checks it with clients nobody here wrote:
// kube-apiserver's webhook token authenticator, kubectl and nginx.
package integration

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// lastUsedInterval is short so tests see last use written; production uses a minute.
const lastUsedInterval = time.Second

var (
	env *testenv.Env
	op  *operator.Operator
	// endpoint is the base URL of the manager's webhook server.
	endpoint string
	// httpsClient trusts the webhook server's certificate.
	httpsClient *http.Client
	// stopOperator stops the running operator and waits for it.
	stopOperator func()
)

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevelError)))
	e, err := testenv.Start(testenv.Options{Webhooks: true, TokenWebhook: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env = e
	stopOperator, err = startOperator()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	stopOperator()
	_ = env.Stop()
	os.Exit(code)
}

// startOperator runs everything cmd/main.go runs, serving on the port and
// certificate kube-apiserver and the webhook configuration were given.
func startOperator() (func(), error) {
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: env.WebhookHost(), Port: env.WebhookPort(), CertDir: env.WebhookCertDir,
		}),
		Cache:  operator.CacheOptions(),
		Client: operator.ClientOptions(),
	})
	if err != nil {
		return nil, err
	}
	op, err = operator.Setup(mgr, operator.Options{
		Clock:                   clock.RealClock{},
		Random:                  rand.Reader,
		Registry:                prometheus.NewRegistry(),
		MaxConcurrentReconciles: 4,
		RecordRetention:         time.Hour,
		SecretCheckInterval:     time.Minute,
		Webhooks:                true,
		FenceTTL:                30 * time.Second,
		LastUsedInterval:        lastUsedInterval,
		// Every test calls from 127.0.0.1: a limit this high only stops floods.
		FailedAuthRate:  1000,
		FailedAuthBurst: 1000,
	})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	// cancel stops the manager and waits until it has let go of its port.
	cancel := func() {
		stop()
		<-done
	}
	endpoint = fmt.Sprintf("https://%s:%d", env.WebhookHost(), env.WebhookPort())
	pool, err := certPool(env.WebhookCA)
	if err != nil {
		cancel()
		return nil, err
	}
	httpsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
	}}
	// Wait until the webhook server answers and the index has synced.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := httpsClient.Get(endpoint + "/whoami")
		if err == nil {
			_ = resp.Body.Close()
			if op.Verifier.Synced() {
				return cancel, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	return nil, fmt.Errorf("the webhook server did not come up")
}

// mint creates an ApiKey, waits until it is Active and returns it with its raw key.
func mint(t testing.TB, ns, name string, spec authv1alpha1.ApiKeySpec) (*authv1alpha1.ApiKey, string) {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	g.Expect(env.Client.Create(ctx, key)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(key), key)).To(Succeed())
		g.Expect(key.Status.Phase).To(Equal(authv1alpha1.PhaseActive))
	}).WithTimeout(30 * time.Second).WithPolling(20 * time.Millisecond).Should(Succeed())
	secret := &corev1.Secret{}
	g.Expect(env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: key.SecretName()}, secret)).To(Succeed())
	raw := string(secret.Data[authv1alpha1.SecretKeyAPIKey])
	// The index learns of the record by its own watch; wait for it.
	g.Eventually(func() error { _, err := op.Verifier.Verify(raw); return err }).
		WithTimeout(10 * time.Second).WithPolling(5 * time.Millisecond).Should(Succeed())
	return key, raw
}

func revoke(t testing.TB, key *authv1alpha1.ApiKey) {
	t.Helper()
	base := key.DeepCopy()
	key.Spec.Revoked = true
	NewWithT(t).Expect(env.Client.Patch(context.Background(), key, client.MergeFrom(base))).To(Succeed())
}

// authorize calls /authorize with the key and returns the status code.
func authorize(t testing.TB, raw string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, endpoint+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := httpsClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
