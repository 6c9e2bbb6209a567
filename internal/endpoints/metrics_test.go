package endpoints

import (
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

func TestMetricsAreExported(t *testing.T) {
	s := &Server{}
	r := newRig(t, s)
	reg := prometheus.NewRegistry()
	s.Metrics = NewMetrics(reg, s.Verifier, s.Limiter)
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.active}})
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.revoked}})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{
		"latchkey_verifications_total", "latchkey_verification_duration_seconds",
		"latchkey_index_keys", "latchkey_fences", "latchkey_refusals_held",
	} {
		if !got[name] {
			t.Errorf("metric %s is not exported", name)
		}
	}
}
