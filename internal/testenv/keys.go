package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// Mint creates key, waits until it is Active for its generation, and
// returns the raw key delivered to its Secret once usable accepts it (nil:
// at once) — a verifier's index learns of the record by its own watch.
func (e *Env) Mint(tb testing.TB, key *authv1alpha1.ApiKey, usable func(raw string) error) string {
	tb.Helper()
	gomega.NewWithT(tb).Expect(e.Client.Create(context.Background(), key)).To(gomega.Succeed())
	*key = *e.WaitForPhase(tb, key.Namespace, key.Name, authv1alpha1.PhaseActive)
	raw := e.RawKey(tb, key)
	if usable != nil {
		gomega.NewWithT(tb).Eventually(func() error { return usable(raw) }).
			WithTimeout(10*time.Second).WithPolling(5*time.Millisecond).Should(gomega.Succeed(), "the minted key never became usable")
	}
	return raw
}

// WaitForPhase waits until the ApiKey is in phase for its current
// generation, and returns it.
func (e *Env) WaitForPhase(tb testing.TB, ns, name string, phase authv1alpha1.Phase) *authv1alpha1.ApiKey {
	tb.Helper()
	key := &authv1alpha1.ApiKey{}
	gomega.NewWithT(tb).Eventually(func(g gomega.Gomega) {
		g.Expect(e.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, key)).To(gomega.Succeed())
		g.Expect(key.Status.Phase).To(gomega.Equal(phase))
		g.Expect(key.Status.ObservedGeneration).To(gomega.Equal(key.Generation))
	}).WithTimeout(60 * time.Second).WithPolling(20 * time.Millisecond).Should(gomega.Succeed())
	return key
}

// RawKey is the key delivered to the ApiKey's Secret.
func (e *Env) RawKey(tb testing.TB, key *authv1alpha1.ApiKey) string {
	tb.Helper()
	s := &corev1.Secret{}
	if err := e.Client.Get(context.Background(), types.NamespacedName{Namespace: key.Namespace, Name: key.SecretName()}, s); err != nil {
		tb.Fatalf("reading the key's Secret: %v", err)
	}
	return string(s.Data[authv1alpha1.SecretKeyAPIKey])
}

// Objects are, as JSON by kind, the objects besides Secrets that a key
// could leak into: ApiKeys, Usages, ledgers, events and ConfigMaps in ns
// ("" for every namespace), and every ApiKeyRecord.
func (e *Env) Objects(ctx context.Context, ns string) (map[string]string, error) {
	out := map[string]string{}
	for name, l := range map[string]client.ObjectList{
		"ApiKeys": &authv1alpha1.ApiKeyList{}, "ApiKeyRecords": &authv1alpha1.ApiKeyRecordList{},
		"Usages": &authv1alpha1.UsageList{}, "UsageLedgers": &authv1alpha1.UsageLedgerList{},
		"events": &eventsv1.EventList{}, "core events": &corev1.EventList{}, "ConfigMaps": &corev1.ConfigMapList{},
	} {
		var opts []client.ListOption
		if _, cluster := l.(*authv1alpha1.ApiKeyRecordList); !cluster && ns != "" {
			opts = append(opts, client.InNamespace(ns))
		}
		if err := e.Client.List(ctx, l, opts...); err != nil {
			return nil, err
		}
		b, err := json.Marshal(l)
		if err != nil {
			return nil, err
		}
		out[name] = string(b)
	}
	return out, nil
}

// KeyMaterial lists the places whose text holds any of the raw keys, or
// the part of one that its hint hides, once for each key found there.
func KeyMaterial(raws []string, places map[string]string) []string {
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

// Logs collects what a logger writes, for a test to scan for key material.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
