package endpoints

import (
	"net/http"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

func TestVerificationsAreCountedByEndpointAndResult(t *testing.T) {
	s := &Server{}
	r := newRig(t, s)
	m := metrics.New(prometheus.NewRegistry())
	s.Metrics = m
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.active}})
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.revoked}})
	r.do(t, http.MethodGet, protocol.PathAuthorize, nil, http.Header{"Authorization": {"Bearer " + r.active + "x"}})
	for _, result := range []string{"allowed", "revoked", "malformed"} {
		if n := testutil.ToFloat64(m.Verifications.WithLabelValues("authorize", result)); n != 1 {
			t.Errorf("latchkey_verifications_total{endpoint=authorize,result=%s} = %v, want 1", result, n)
		}
	}
	for _, endpoint := range []string{"authorize", "tokenreview", "whoami"} {
		var h dto.Metric
		if err := m.VerificationDuration.WithLabelValues(endpoint).(prometheus.Histogram).Write(&h); err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		if endpoint == "authorize" {
			want = 3
		}
		if n := h.GetHistogram().GetSampleCount(); n != want {
			t.Errorf("latchkey_verification_duration_seconds{endpoint=%s} observed %d answers, want %d", endpoint, n, want)
		}
	}
	// The revoked key's refusal is counted for its tenant; the malformed
	// one has no tenant to count it for.
	r.uses.mu.Lock()
	defer r.uses.mu.Unlock()
	if !slices.Equal(r.uses.denied, []string{"tenant-a"}) {
		t.Errorf("refusals counted for %q, want tenant-a's once", r.uses.denied)
	}
}
