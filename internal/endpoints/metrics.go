package endpoints

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/latchkey-dev/latchkey/internal/verifier"
)

const labelResult = "result"

// Metrics are the verification metrics Latchkey exports.
type Metrics struct {
	Verifications *prometheus.CounterVec
	Latency       *prometheus.HistogramVec
	LastUsedWrite *prometheus.CounterVec
	LedgerWrites  *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them, with gauges reading v
// and l.
func NewMetrics(reg prometheus.Registerer, v *verifier.Verifier, l *FailureLimiter) *Metrics {
	m := &Metrics{
		Verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_verifications_total",
			Help: "Key verifications by endpoint and result.",
		}, []string{"endpoint", labelResult}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "latchkey_verification_duration_seconds",
			Help:    "Time to answer a verification request, by endpoint.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"endpoint"}),
		LastUsedWrite: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_last_used_writes_total",
			Help: "Writes of keys' last use to the API server, by result (written, gone, failed).",
		}, []string{labelResult}),
		LedgerWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_usage_ledger_writes_total",
			Help: "Writes of tenants' usage ledgers (execution reports and verification counts), by result (written, conflict, failed).",
		}, []string{labelResult}),
	}
	reg.MustRegister(m.Verifications, m.Latency, m.LastUsedWrite, m.LedgerWrites,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "latchkey_index_keys",
			Help: "Key records in the verifier's in-memory index.",
		}, func() float64 { return float64(v.Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "latchkey_fences",
			Help: "Keys fenced by admitted revocations not yet seen persisted.",
		}, func() float64 { return float64(v.Fences()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "latchkey_refusals_held",
			Help: "429 answers held until their client address has budget again.",
		}, func() float64 { return float64(l.Held()) }),
	)
	return m
}
