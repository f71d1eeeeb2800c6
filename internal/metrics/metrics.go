// Package metrics is sandfleet's Prometheus instrumentation: the events the
// scheduler and the reconcilers record as they happen (a lease, an analysis's
// end, a cloud operation's end, a throttle, a reconcile pass), and the
// registry /metrics serves, with the Go runtime's and the process's own.
// What is state rather than event — machines by state, tasks by status,
// drift — is read at scrape time by a collector the API registers.
//
// Every recorder is safe on a nil *Metrics, so a component built without
// metrics (a test, a benchmark) records nothing.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds sandfleet's instruments and their registry.
type Metrics struct {
	reg        *prometheus.Registry
	lease      prometheus.Histogram
	analysis   *prometheus.HistogramVec
	operations *prometheus.CounterVec
	throttles  *prometheus.CounterVec
	passes     *prometheus.HistogramVec
	hooks      *prometheus.CounterVec
	evictions  *prometheus.CounterVec
}

// New returns the instruments, registered with the Go runtime and process
// collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		lease: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sandfleet_submit_to_lease_seconds",
			Help:    "Time from a task's commit to its lease of a machine.",
			Buckets: []float64{.005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
		}),
		analysis: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sandfleet_analysis_duration_seconds",
			Help:    "Time from an analysis's lease to its end, by outcome (completed, failed_analysis).",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 200, 300, 600, 1200, 3600},
		}, []string{"outcome"}),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandfleet_cloud_operations_total",
			Help: "Provider operations ended, by provider, kind and outcome (succeeded, failed, abandoned).",
		}, []string{"provider", "kind", "outcome"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandfleet_throttle_events_total",
			Help: "Throttle windows a provider opened (429 with Retry-After).",
		}, []string{"provider"}),
		passes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sandfleet_reconcile_duration_seconds",
			Help:    "Duration of reconcile passes, by provider and outcome (ok, failed).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"provider", "outcome"}),
		hooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandfleet_hooks_total",
			Help: "hooks.on_complete runs, by outcome (ok, failed, timeout).",
		}, []string{"outcome"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandfleet_evictions_total",
			Help: "Spot instances that vanished from a pool without sandfleet deleting them, by pool.",
		}, []string{"pool"}),
	}
	m.reg.MustRegister(m.lease, m.analysis, m.operations, m.throttles, m.passes, m.hooks, m.evictions,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds a collector (the API's view of the state at scrape time).
func (m *Metrics) Register(c prometheus.Collector) error { return m.reg.Register(c) }

// Handler serves the registry in Prometheus' exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Leased records how long a task waited for its machine.
func (m *Metrics) Leased(wait time.Duration) {
	if m != nil {
		m.lease.Observe(wait.Seconds())
	}
}

// AnalysisEnded records an analysis's end.
func (m *Metrics) AnalysisEnded(outcome string, took time.Duration) {
	if m != nil {
		m.analysis.WithLabelValues(outcome).Observe(took.Seconds())
	}
}

// OperationEnded records a provider operation's end.
func (m *Metrics) OperationEnded(provider, kind, outcome string) {
	if m != nil {
		m.operations.WithLabelValues(provider, kind, outcome).Inc()
	}
}

// Throttled records a throttle window opening.
func (m *Metrics) Throttled(provider string) {
	if m != nil {
		m.throttles.WithLabelValues(provider).Inc()
	}
}

// Pass records a reconcile pass.
func (m *Metrics) Pass(provider, outcome string, took time.Duration) {
	if m != nil {
		m.passes.WithLabelValues(provider, outcome).Observe(took.Seconds())
	}
}

// Hook records a run of hooks.on_complete.
func (m *Metrics) Hook(outcome string) {
	if m != nil {
		m.hooks.WithLabelValues(outcome).Inc()
	}
}

// Evicted counts a Spot instance of pool that vanished.
func (m *Metrics) Evicted(pool string) {
	if m != nil {
		m.evictions.WithLabelValues(pool).Inc()
	}
}
