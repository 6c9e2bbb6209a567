package controller

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var env *testenv.Env

// globalLogs holds what is logged outside a test's manager (client-go,
// controller-runtime internals), scanned for key material too.
var globalLogs = &testenv.Logs{}

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(globalLogs), zap.UseDevMode(true), zap.Level(zapcore.Level(-10))))
	testenv.Main(m, testenv.Options{}, func(e *testenv.Env) error { env = e; return nil })
}

// running is a manager running the controllers for one test namespace.
type running struct {
	ns         string
	logs       *testenv.Logs
	reconciler *ApiKeyReconciler
}

type managerOptions struct {
	secretCheckInterval time.Duration
	retention           time.Duration
	maxConcurrent       int
	// defaultRateLimits uses cmd/main.go's client rate limits instead of
	// the test client's generous ones.
	defaultRateLimits bool
	// asManager runs with only the generated RBAC roles, as its
	// ServiceAccount, with the key-delivery role bound in ns unless optedOut.
	asManager, optedOut bool
}

// startManager runs the controllers, as cmd/main.go wires them, with a cache
// limited to ns, and logs at the most verbose level into a buffer.
func startManager(t testing.TB, ns string, o managerOptions) *running {
	t.Helper()
	logs := &testenv.Logs{}
	logger := zap.New(zap.WriteTo(logs), zap.UseDevMode(true), zap.Level(zapcore.Level(-10)))
	cfg := rest.CopyConfig(env.Config)
	if o.asManager {
		var tenants []string
		if !o.optedOut {
			tenants = append(tenants, ns)
		}
		cfg = asManager(t, tenants...)
	}
	if o.defaultRateLimits {
		cfg.QPS, cfg.Burst = DefaultKubeAPIQPS, DefaultKubeAPIBurst
	}
	if o.maxConcurrent == 0 {
		o.maxConcurrent = 4
	}
	var reconciler *ApiKeyReconciler
	stop, err := env.StartManager(cfg, ctrl.Options{
		Logger: logger,
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{ns: {}},
			DefaultTransform:  cache.TransformStripManagedFields(),
		},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	}, func(mgr ctrl.Manager) error {
		index := verifier.New(clock.RealClock{}, 0)
		watchClient, err := verifier.NewWatchClient(mgr.GetConfig(), mgr.GetHTTPClient(), mgr.GetRESTMapper())
		if err != nil {
			return err
		}
		if err := mgr.Add(verifier.Watching{Verifier: index, Client: watchClient, Namespace: ns}); err != nil {
			return err
		}
		reconciler = &ApiKeyReconciler{
			Client:              mgr.GetClient(),
			Index:               index,
			APIReader:           mgr.GetAPIReader(),
			Recorder:            mgr.GetEventRecorder("latchkey"),
			Clock:               clock.RealClock{},
			Random:              rand.Reader,
			SecretCheckInterval: o.secretCheckInterval,
		}
		if err := reconciler.SetupWithManager(mgr, o.maxConcurrent); err != nil {
			return err
		}
		if o.retention == 0 {
			return nil
		}
		return (&ApiKeyRecordReconciler{
			Client: mgr.GetClient(), Index: index, APIReader: mgr.GetAPIReader(), Clock: clock.RealClock{}, Retention: o.retention,
		}).SetupWithManager(mgr)
	})
	if err != nil {
		t.Fatalf("starting the manager: %v", err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return &running{ns: ns, logs: logs, reconciler: reconciler}
}

// watchedIndex is a key index fed by a watch of ns's ApiKeys and records,
// synced, for a reconciler a test calls itself.
func watchedIndex(t testing.TB, ns string) *verifier.Verifier {
	t.Helper()
	c, err := verifier.NewWatchClient(env.Config, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	index := verifier.New(clock.RealClock{}, 0)
	index.WatchNamespace(ctx, c, ns)
	NewWithT(t).Eventually(index.Synced).Should(BeTrue())
	return index
}

// newKey returns an ApiKey in ns with the given spec.
func newKey(ns, name string, spec authv1alpha1.ApiKeySpec) *authv1alpha1.ApiKey {
	k := &authv1alpha1.ApiKey{Spec: spec}
	k.Namespace, k.Name = ns, name
	return k
}

func getKey(g Gomega, ns, name string) *authv1alpha1.ApiKey {
	k := &authv1alpha1.ApiKey{}
	g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, k)).To(Succeed())
	return k
}

func getSecret(g Gomega, ns, name string) *corev1.Secret {
	s := &corev1.Secret{}
	g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
	return s
}

// getRecord returns the key's one delivered record, found by the key's UID
// as the controller finds it (a selectable field of the CRD).
func getRecord(g Gomega, key *authv1alpha1.ApiKey) *authv1alpha1.ApiKeyRecord {
	var list authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(context.Background(), &list, client.MatchingFields{IndexRecordKeyUID: string(key.UID)})).To(Succeed())
	g.Expect(list.Items).To(HaveLen(1))
	g.Expect(list.Items[0].Spec.Pending).To(BeFalse())
	return &list.Items[0]
}

// recordsOf lists the records whose tenant is ns and key name is name.
func recordsOf(g Gomega, ns, name string) []authv1alpha1.ApiKeyRecord {
	var list authv1alpha1.ApiKeyRecordList
	g.Expect(env.Client.List(context.Background(), &list, client.MatchingLabels{
		authv1alpha1.LabelTenant: ns, authv1alpha1.LabelKeyName: name,
	})).To(Succeed())
	return list.Items
}

// leaks lists where key material shows up outside the Secrets: any of the
// raw keys, or the part of one that its hint hides, in the namespace's
// objects, all records, or the logs.
func leaks(t testing.TB, ns string, raws []string, logs string) []string {
	t.Helper()
	places, err := env.Objects(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	places["logs"], places["global logs"] = logs, globalLogs.String()
	return testenv.KeyMaterial(raws, places)
}
