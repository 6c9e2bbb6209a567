// Package integration runs Latchkey as it ships (operator.Setup) against a
// real kube-apiserver, and checks it with clients nobody here wrote:
// kube-apiserver's webhook token authenticator, kubectl and nginx.
package integration

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
)

// lastUsedInterval is short so tests see last use written; production uses a minute.
const lastUsedInterval = time.Second

var (
	env *testenv.Env
	lk  *inprocess.Latchkey
	op  *operator.Operator
	// endpoint is the base URL of the manager's webhook server.
	endpoint string
	// httpsClient trusts the webhook server's certificate.
	httpsClient *http.Client
)

// TestMain runs Latchkey as make dev does: a control plane whose
// kube-apiserver sends TokenReviews to the operator, and the operator as
// cmd/main.go sets it up.
func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevelError)))
	inprocess.Main(m, inprocess.Options{
		TokenWebhook: true,
		Logger:       ctrl.Log,
		Tune: func(o *operator.Options) {
			o.LastUsedInterval = lastUsedInterval
			o.RecordRetention = time.Hour
			// Every test calls from 127.0.0.1: a limit this high only stops floods.
			o.FailedAuthRate, o.FailedAuthBurst = 1000, 1000
		},
	}, func(l *inprocess.Latchkey) {
		lk, env = l, l.Env
		useOperator()
	})
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

// mint creates an ApiKey, waits until it is Active and indexed, and returns it with its raw key.
func mint(t testing.TB, ns, name string, spec authv1alpha1.ApiKeySpec) (*authv1alpha1.ApiKey, string) {
	t.Helper()
	return lk.Mint(t, ns, name, spec)
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
	return authorizeWith(t, raw, nil)
}

// authorizeWith is authorize with more headers.
func authorizeWith(t testing.TB, raw string, h http.Header) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, endpoint+"/authorize", nil)
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := httpsClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
