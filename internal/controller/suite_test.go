package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

var env *testenv.Env

// globalLogs holds what is logged outside a test's manager (client-go,
// controller-runtime internals), scanned for key material too.
var globalLogs = &syncBuffer{}

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(globalLogs), zap.UseDevMode(true), zap.Level(zapcore.Level(-10))))
	e, err := testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env = e
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// syncBuffer collects a manager's logs so tests can scan them for key material.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is a manager running the controllers for one test namespace.
type running struct {
	ns   string
	logs *syncBuffer
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
	logs := &syncBuffer{}
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
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 env.Scheme,
		Logger:                 logger,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{ns: {}},
			DefaultTransform:  cache.TransformStripManagedFields(),
		},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		t.Fatalf("creating manager: %v", err)
	}
	if o.maxConcurrent == 0 {
		o.maxConcurrent = 4
	}
	if err := (&ApiKeyReconciler{
		Client:              mgr.GetClient(),
		APIReader:           mgr.GetAPIReader(),
		Recorder:            mgr.GetEventRecorder("latchkey"),
		Clock:               clock.RealClock{},
		Random:              rand.Reader,
		SecretCheckInterval: o.secretCheckInterval,
	}).SetupWithManager(mgr, o.maxConcurrent); err != nil {
		t.Fatal(err)
	}
	if o.retention > 0 {
		if err := (&ApiKeyRecordReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: clock.RealClock{}, Retention: o.retention,
		}).SetupWithManager(mgr); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &running{ns: ns, logs: logs}
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

func waitForPhase(t testing.TB, ns, name string, phase authv1alpha1.Phase) *authv1alpha1.ApiKey {
	t.Helper()
	var key *authv1alpha1.ApiKey
	NewWithT(t).Eventually(func(g Gomega) {
		key = getKey(g, ns, name)
		g.Expect(key.Status.Phase).To(Equal(phase))
		g.Expect(key.Status.ObservedGeneration).To(Equal(key.Generation))
	}).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
	return key
}

// leaks lists where key material shows up outside the Secrets: any of the
// raw keys, or the part of one that its hint hides, in the namespace's
// ApiKeys, events, all records, or the logs.
func leaks(t testing.TB, ns string, raws []string, logs string) []string {
	t.Helper()
	ctx := context.Background()
	var apikeys authv1alpha1.ApiKeyList
	var records authv1alpha1.ApiKeyRecordList
	var events eventsv1.EventList
	var coreEvents corev1.EventList
	for _, l := range []client.ObjectList{&apikeys, &events, &coreEvents} {
		if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.List(ctx, &records); err != nil {
		t.Fatal(err)
	}
	places := map[string]string{"logs": logs, "global logs": globalLogs.String()}
	for name, obj := range map[string]any{"apikeys": apikeys, "records": records, "events": events, "core events": coreEvents} {
		b, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		places[name] = string(b)
	}
	var found []string
	for _, raw := range raws {
		hidden := raw[8 : len(raw)-4]
		for place, text := range places {
			if strings.Contains(text, raw) || strings.Contains(text, hidden) {
				found = append(found, place)
			}
		}
	}
	return found
}
