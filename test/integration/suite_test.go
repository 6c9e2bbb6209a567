// Package integration runs Latchkey as it ships (operator.Setup) against a
// real kube-apiserver, and checks it with clients nobody here wrote:
// kube-apiserver's webhook token authenticator, kubectl and nginx.
package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/pkg/devenv"
)

// lastUsedInterval is short so tests see last use written; production uses a minute.
const lastUsedInterval = time.Second

var (
	env *testenv.Env
	lk  *devenv.Latchkey
	op  *operator.Operator
	// endpoint is the base URL of the manager's webhook server.
	endpoint string
	// httpsClient trusts the webhook server's certificate.
	httpsClient *http.Client
)

// TestMain runs Latchkey as make dev does (pkg/devenv): a control plane
// whose kube-apiserver sends TokenReviews to the operator, and the operator
// as cmd/main.go sets it up.
func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevelError)))
	assets, err := testenv.Assets()
	if err == nil {
		lk, err = devenv.Start(context.Background(), devenv.Options{
			AssetsDir: assets, TokenWebhook: true, LastUsedInterval: lastUsedInterval,
			Logger: ctrl.Log,
			Tune: func(o *operator.Options) {
				o.RecordRetention = time.Hour
				// Every test calls from 127.0.0.1: a limit this high only stops floods.
				o.FailedAuthRate, o.FailedAuthBurst = 1000, 1000
			},
		})
	}
	if err == nil {
		env, err = testenv.Wrap(lk.ControlPlane)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if lk != nil {
			_ = lk.Stop()
		}
		os.Exit(1)
	}
	useOperator()
	code := m.Run()
	_ = lk.Stop()
	os.Exit(code)
}

// useOperator points the tests at the running operator.
func useOperator() {
	op, endpoint = lk.Operator, lk.Endpoint
	httpsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: lk.HTTPClient.Transport.(*http.Transport).TLSClientConfig, MaxIdleConnsPerHost: 64,
	}}
}

// restartOperator stops the operator and starts a new one, as a crash and
// restart of the manager would.
func restartOperator(t testing.TB) {
	t.Helper()
	if err := lk.RestartOperator(context.Background()); err != nil {
		t.Fatal(err)
	}
	useOperator()
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
