// Package metrics declares every Prometheus metric Latchkey exports, beside
// controller-runtime's own, and is the one place they are documented:
//
//	Name                                       Type       Labels             Recorded by
//	latchkey_verifications_total               counter    endpoint, result   endpoints
//	latchkey_verification_duration_seconds     histogram  endpoint           endpoints
//	latchkey_index_keys                        gauge      -                  verifier (index size)
//	latchkey_fences                            gauge      -                  verifier (fences holding)
//	latchkey_refusals_held                     gauge      -                  endpoints (failure limiter)
//	latchkey_last_used_writes_total            counter    result             usage/activity
//	latchkey_usage_ledger_writes_total         counter    result             usage/store
//	latchkey_serving_connections               gauge      listener           serving
//	latchkey_serving_connections_refused_total counter    listener, cap      serving
//	latchkey_keys_expiring_soon                gauge      namespace          controller (ExpiringSoon keys)
//
// Label values:
//
//	endpoint  tokenreview, authorize, whoami, executions, ext_authz
//	result    verifications: allowed, revoked, expired, suspended, rotated,
//	          unknown, malformed, forbidden, insufficient_scope,
//	          wrong_audience, bad_request, rate_limited, rate_limited_global, not_serving;
//	          last-use writes: written, gone, failed;
//	          ledger writes: written, conflict, failed
//	listener  verification, admission
//	cap       per_address, total, rate
//	namespace the namespaces holding a key whose ExpiringSoon is True (a
//	          namespace's series goes with its last such key)
//
// The operator creates one Metrics and gives it to each component, which
// records through its methods; gauges read the component holding the value.
// A nil *Metrics records nothing, so that components run without one in
// tests.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const labelResult = "result"

// The label values of the verification metrics, resolved to their series
// once so that a request counts itself without a label lookup.
var (
	verificationEndpoints = []string{"tokenreview", "authorize", "whoami", "executions", "ext_authz"}
	verificationResults   = []string{"allowed", "revoked", "expired", "suspended", "rotated", "unknown", "malformed",
		"forbidden", "insufficient_scope", "wrong_audience", "bad_request", "rate_limited", "rate_limited_global", "not_serving"}
)

type endpointResult struct{ endpoint, result string }

// Metrics are Latchkey's metrics, registered with one registry.
type Metrics struct {
	reg prometheus.Registerer

	// The counters and the histogram are exported for tests to read.
	Verifications        *prometheus.CounterVec
	VerificationDuration *prometheus.HistogramVec
	LastUsedWrites       *prometheus.CounterVec
	LedgerWrites         *prometheus.CounterVec
	ConnectionsRefused   *prometheus.CounterVec

	verified map[endpointResult]prometheus.Counter
	answered map[string]prometheus.Observer
}

// New creates the metrics and registers them with reg; the gauges are
// registered by the Read methods, once their source exists.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		Verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_verifications_total",
			Help: "Key verifications by endpoint and result.",
		}, []string{"endpoint", labelResult}),
		VerificationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "latchkey_verification_duration_seconds",
			Help:    "Time to answer a verification request, by endpoint.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"endpoint"}),
		LastUsedWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_last_used_writes_total",
			Help: "Writes of keys' last use to the API server, by result (written, gone, failed).",
		}, []string{labelResult}),
		LedgerWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_usage_ledger_writes_total",
			Help: "Writes of tenants' usage ledgers (execution reports and verification counts), by result (written, conflict, failed).",
		}, []string{labelResult}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "latchkey_serving_connections_refused_total",
			Help: "Connections closed at accept because a connection cap was reached, by listener and cap (per_address, total).",
		}, []string{"listener", "cap"}),
	}
	reg.MustRegister(m.Verifications, m.VerificationDuration, m.LastUsedWrites, m.LedgerWrites, m.ConnectionsRefused)
	m.verified = make(map[endpointResult]prometheus.Counter, len(verificationEndpoints)*len(verificationResults))
	m.answered = make(map[string]prometheus.Observer, len(verificationEndpoints))
	for _, e := range verificationEndpoints {
		m.answered[e] = m.VerificationDuration.WithLabelValues(e)
		for _, r := range verificationResults {
			m.verified[endpointResult{e, r}] = m.Verifications.WithLabelValues(e, r)
		}
	}
	return m
}

// Verified counts a verification request's answer.
func (m *Metrics) Verified(endpoint, result string) {
	if m == nil {
		return
	}
	if c, ok := m.verified[endpointResult{endpoint, result}]; ok {
		c.Inc()
		return
	}
	m.Verifications.WithLabelValues(endpoint, result).Inc()
}

// Answered observes how long a verification request took.
func (m *Metrics) Answered(endpoint string, d time.Duration) {
	if m == nil {
		return
	}
	if o, ok := m.answered[endpoint]; ok {
		o.Observe(d.Seconds())
		return
	}
	m.VerificationDuration.WithLabelValues(endpoint).Observe(d.Seconds())
}

// LastUseWritten counts a write of a key's last use.
func (m *Metrics) LastUseWritten(result string) {
	if m != nil {
		m.LastUsedWrites.WithLabelValues(result).Inc()
	}
}

// LedgerWritten counts a write of a usage ledger object.
func (m *Metrics) LedgerWritten(result string) {
	if m != nil {
		m.LedgerWrites.WithLabelValues(result).Inc()
	}
}

// ConnectionRefused counts a connection a listener closed at accept.
func (m *Metrics) ConnectionRefused(listener, limit string) {
	if m != nil {
		m.ConnectionsRefused.WithLabelValues(listener, limit).Inc()
	}
}

// ReadIndex registers the gauges of the verifier's index: the key records
// it holds and the fences holding now.
func (m *Metrics) ReadIndex(keys, fences func() int) {
	if m == nil {
		return
	}
	m.reg.MustRegister(
		gauge(prometheus.GaugeOpts{Name: "latchkey_index_keys", Help: "Key records in the verifier's in-memory index."}, keys),
		gauge(prometheus.GaugeOpts{Name: "latchkey_fences", Help: "Keys fenced by admitted revocations not yet seen persisted."}, fences),
	)
}

// ReadRefusalsHeld registers the gauge of the failure limiter's held answers.
func (m *Metrics) ReadRefusalsHeld(held func() int) {
	if m != nil {
		m.reg.MustRegister(gauge(prometheus.GaugeOpts{
			Name: "latchkey_refusals_held",
			Help: "429 answers held until their client address has budget again.",
		}, held))
	}
}

// ReadConnections registers the gauge of a listener's open connections.
func (m *Metrics) ReadConnections(listener string, open func() int) {
	if m != nil {
		m.reg.MustRegister(gauge(prometheus.GaugeOpts{
			Name:        "latchkey_serving_connections",
			Help:        "Connections open, by listener.",
			ConstLabels: prometheus.Labels{"listener": listener},
		}, open))
	}
}

func gauge(o prometheus.GaugeOpts, f func() int) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(o, func() float64 { return float64(f()) })
}

// ReadKeysExpiringSoon registers the gauge of the keys whose ExpiringSoon
// condition is True, by namespace, read from counts at each scrape.
func (m *Metrics) ReadKeysExpiringSoon(counts func() map[string]int) {
	if m != nil {
		m.reg.MustRegister(&byNamespace{
			desc: prometheus.NewDesc("latchkey_keys_expiring_soon",
				"ApiKeys whose ExpiringSoon condition is True (within --expiry-warning of spec.expiresAt), by namespace.",
				[]string{"namespace"}, nil),
			counts: counts,
		})
	}
}

// byNamespace is a gauge with a series per namespace that counts reports,
// and none for the others.
type byNamespace struct {
	desc   *prometheus.Desc
	counts func() map[string]int
}

func (c *byNamespace) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *byNamespace) Collect(ch chan<- prometheus.Metric) {
	for ns, n := range c.counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), ns)
	}
}
