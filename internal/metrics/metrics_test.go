package metrics

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestEveryMetricIsExportedWithItsLabels pins the names and labels the
// package doc lists: dashboards and alerts depend on them.
func TestEveryMetricIsExportedWithItsLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Verified("authorize", "allowed")
	m.Answered("authorize", time.Millisecond)
	m.LastUseWritten("written")
	m.LedgerWritten("conflict")
	m.ConnectionRefused("verification", "per_address")
	m.ReadIndex(func() int { return 3 }, func() int { return 1 })
	m.ReadRefusalsHeld(func() int { return 0 })
	m.ReadConnections("verification", func() int { return 2 })
	m.ReadConnections("admission", func() int { return 0 })
	m.ReadKeysExpiringSoon(func() map[string]int { return map[string]int{"tenant": 2} })

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range families {
		pairs := f.GetMetric()[0].GetLabel()
		labels := make([]string, 0, len(pairs))
		for _, l := range pairs {
			labels = append(labels, l.GetName())
		}
		slices.Sort(labels)
		got[f.GetName()] = strings.Join(labels, ",")
	}
	want := map[string]string{
		"latchkey_verifications_total":               "endpoint,result",
		"latchkey_verification_duration_seconds":     "endpoint",
		"latchkey_index_keys":                        "",
		"latchkey_fences":                            "",
		"latchkey_refusals_held":                     "",
		"latchkey_last_used_writes_total":            "result",
		"latchkey_usage_ledger_writes_total":         "result",
		"latchkey_serving_connections":               "listener",
		"latchkey_serving_connections_refused_total": "cap,listener",
		"latchkey_keys_expiring_soon":                "namespace",
	}
	for name, labels := range want {
		if l, ok := got[name]; !ok || l != labels {
			t.Errorf("%s: exported %v with labels %q, want labels %q", name, ok, l, labels)
		}
	}
	if len(got) != len(want) {
		t.Errorf("exported %v, want exactly %v", got, want)
	}
}

func TestNilMetricsRecordNothing(_ *testing.T) {
	var m *Metrics
	m.Verified("authorize", "allowed")
	m.Answered("authorize", time.Millisecond)
	m.LastUseWritten("written")
	m.LedgerWritten("written")
	m.ConnectionRefused("verification", "total")
	m.ReadIndex(nil, nil)
	m.ReadRefusalsHeld(nil)
	m.ReadConnections("verification", nil)
}

// A verification counts itself on the request path: no label lookup there
// allocates.
func TestCountingAVerificationNeverAllocates(t *testing.T) {
	m := New(prometheus.NewRegistry())
	if n := testing.AllocsPerRun(1000, func() {
		m.Verified("authorize", "allowed")
		m.Answered("authorize", time.Millisecond)
	}); n != 0 {
		t.Fatalf("%v allocations per verification counted", n)
	}
}
