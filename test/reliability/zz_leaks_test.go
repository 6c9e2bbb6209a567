package reliability

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
)

// TestNoKeyLeaks (case 9) runs the whole life of keys (mint, verify with
// every endpoint, fail, revoke, delete, report usage, bad requests) with
// the most verbose logging, then looks for any raw key, or the part of one
// its hint hides, in the logs, events, every object but Secrets, the
// metrics and every HTTP answer. It runs last (file order), so it also
// scans what the other cases left.
func TestNoKeyLeaks(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	var bodies bytes.Buffer
	call := func(method, path, key, body string) {
		req, _ := http.NewRequest(method, lk.Endpoint+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := lk.HTTPClient.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		fmt.Fprintf(&bodies, "%d %v %s\n", resp.StatusCode, resp.Header, b)
	}
	key, raw := mint(t, ns, "life")
	_, other := mint(t, ns, "other")
	review := func(token string) string {
		b, _ := json.Marshal(map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": map[string]any{"token": token}})
		return string(b)
	}
	now := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	for _, k := range []string{raw, other, verifiertest.BadChecksum(raw), "lk_" + raw[3:]} {
		call(http.MethodGet, "/authorize", k, "")
		call(http.MethodGet, "/whoami", k, "")
		call(http.MethodPost, "/tokenreview", "", review(k))
		call(http.MethodPost, "/tokenreview", "", `{"apiVersion":"`+k+`","kind":"TokenReview","spec":{"token":"`+k+`"}}`)
		call(http.MethodPost, "/v1/executions", k, `{"idempotencyKey":"i-`+k[:8]+`","executions":[{"id":"a","state":"succeeded","startedAt":"`+now+`","finishedAt":"`+now+`"}]}`)
		call(http.MethodPost, "/v1/executions", k, `{"idempotencyKey":"`+k+`","executions":[{"id":"`+k+`","state":"`+k+`","startedAt":"`+now+`"}]}`)
	}
	call(http.MethodGet, "/authorize", "", "")
	base := key.DeepCopy()
	key.Spec.Revoked = true
	g.Expect(env.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
	call(http.MethodGet, "/authorize", raw, "")
	g.Expect(env.Client.Delete(ctx, key)).To(Succeed())
	time.Sleep(2 * time.Second)

	logged, err := os.ReadFile(logs.Name())
	g.Expect(err).NotTo(HaveOccurred())
	places := map[string]string{"operator logs": string(logged), "HTTP answers": bodies.String()}
	listed := make([]string, 0, 7)
	for _, l := range []client.ObjectList{
		&authv1alpha1.ApiKeyList{}, &authv1alpha1.ApiKeyRecordList{}, &authv1alpha1.UsageList{}, &authv1alpha1.UsageLedgerList{},
		&eventsv1.EventList{}, &corev1.EventList{}, &corev1.ConfigMapList{},
	} {
		g.Expect(env.Client.List(ctx, l)).To(Succeed())
		b, _ := json.Marshal(l)
		places[fmt.Sprintf("%T", l)] = string(b)
		listed = append(listed, fmt.Sprintf("%T", l))
	}
	var metrics bytes.Buffer
	for _, reg := range []prometheus.Gatherer{registry, ctrlmetrics.Registry} {
		families, err := reg.Gather()
		g.Expect(err).NotTo(HaveOccurred())
		for _, f := range families {
			_, _ = expfmt.MetricFamilyToText(&metrics, f)
		}
	}
	places["metrics"] = metrics.String()

	mintedMu.Lock()
	keys := append([]string(nil), minted...)
	mintedMu.Unlock()
	matches := 0
	for _, k := range keys {
		hidden := k[8 : len(k)-4]
		for place, text := range places {
			if strings.Contains(text, k) || strings.Contains(text, hidden) {
				matches++
				t.Errorf("key material of a minted key found in %s", place)
			}
		}
	}
	record(t, "09 no key material anywhere", fmt.Sprintf("%d matches for %d minted keys in %d KiB of debug logs, %d HTTP answers, metrics and %d kinds of objects (all but Secrets)",
		matches, len(keys), len(places["operator logs"])/1024, strings.Count(bodies.String(), "\n"), len(listed)))
}
