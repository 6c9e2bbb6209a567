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
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
)

// TestNoKeyLeaks (case 9) runs the whole life of keys (mint, verify with
// every endpoint, fail, revoke, delete, report usage, bad requests) with
// the most verbose logging, then looks for any raw key the suite minted, or
// the part of one its hint hides, in the logs, events, every object but
// Secrets, the metrics and every HTTP answer. TestMain scans again once
// every case has run (scanAfterAllCases), whatever order they ran in.
func TestNoKeyLeaks(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	call := func(method, path, key, body string) {
		req, _ := http.NewRequest(method, lk.Endpoint+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		if key != "" && strings.HasPrefix(path, "/authorize/") {
			// Every place a key is read from: X-API-Key and the query.
			req.Header.Del("Authorization")
			req.Header.Set("X-API-Key", key)
			req.URL.RawQuery = "api_key=" + key
		}
		resp, err := lk.HTTPClient.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		fmt.Fprintf(&answers, "%d %v %s\n", resp.StatusCode, resp.Header, b)
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
		call(http.MethodPost, "/authorize/api/v1/things", k, "")
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

	matches, figure, err := scanForKeyMaterial()
	g.Expect(err).NotTo(HaveOccurred())
	for _, place := range matches {
		t.Errorf("key material of a minted key found in %s", place)
	}
	record(t, "09 no key material anywhere", figure)
}

// answers holds every HTTP answer the leak case got, for the scan.
var answers bytes.Buffer

// scanAfterAllCases scans for key material once every case has run, notes
// it in the table, and says whether none was found.
func scanAfterAllCases() bool {
	matches, figure, err := scanForKeyMaterial()
	if err != nil {
		figure = err.Error()
	}
	for _, place := range matches {
		fmt.Fprintf(os.Stderr, "key material of a minted key found in %s after all cases\n", place)
	}
	ok := err == nil && len(matches) == 0
	resultsMu.Lock()
	results["09 no key material anywhere, after all cases"] = result{figure: figure, pass: ok}
	resultsMu.Unlock()
	return ok
}

// scanForKeyMaterial looks for every key the suite minted in the operator's
// logs, the leak case's HTTP answers, the metrics and every kind of object
// a key could leak into.
func scanForKeyMaterial() (matches []string, figure string, err error) {
	logged, err := os.ReadFile(logs.Name())
	if err != nil {
		return nil, "", err
	}
	places, err := env.Objects(context.Background(), "")
	if err != nil {
		return nil, "", err
	}
	kinds := len(places)
	places["operator logs"], places["HTTP answers"] = string(logged), answers.String()
	var metrics bytes.Buffer
	for _, reg := range []prometheus.Gatherer{registry, ctrlmetrics.Registry} {
		families, err := reg.Gather()
		if err != nil {
			return nil, "", err
		}
		for _, f := range families {
			_, _ = expfmt.MetricFamilyToText(&metrics, f)
		}
	}
	places["metrics"] = metrics.String()
	mintedMu.Lock()
	keys := make([]string, 0, len(minted))
	for k := range minted {
		keys = append(keys, k)
	}
	mintedMu.Unlock()
	matches = testenv.KeyMaterial(keys, places)
	return matches, fmt.Sprintf("%d matches for %d minted keys in %d KiB of debug logs, %d HTTP answers, metrics and %d kinds of objects (all but Secrets)",
		len(matches), len(keys), len(logged)/1024, strings.Count(answers.String(), "\n"), kinds), nil
}
