package api

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandfleet/sandfleet/internal/store"
)

// The state /metrics reports is read at scrape time, from the database and
// the reconcilers' last views: never a number kept aside that could drift
// from the tables.
var (
	machinesDesc = prometheus.NewDesc("sandfleet_machines", "Machine rows by pool and state (gone excluded).",
		[]string{"pool", "state"}, nil)
	tasksDesc   = prometheus.NewDesc("sandfleet_tasks", "Tasks by status.", []string{"status"}, nil)
	desiredDesc = prometheus.NewDesc("sandfleet_pool_desired_size", "Instances a pool should have.", []string{"pool"}, nil)
	actualDesc  = prometheus.NewDesc("sandfleet_pool_instances", "Instances the provider listed at the last good read.",
		[]string{"pool"}, nil)
	driftDesc = prometheus.NewDesc("sandfleet_pool_drift",
		"Instances missing in the database, rows missing in the provider and mismatched fields, at the last good read.",
		[]string{"pool"}, nil)
	throttledDesc = prometheus.NewDesc("sandfleet_pool_throttled", "1 while the pool's provider asks us to wait (429).",
		[]string{"pool"}, nil)
	unfinishedDesc = prometheus.NewDesc("sandfleet_operations_unfinished", "Journaled provider operations not yet ended, by kind.",
		[]string{"kind"}, nil)
	passesDesc = prometheus.NewDesc("sandfleet_reconcile_passes_total", "Reconcile passes, by provider and outcome.",
		[]string{"provider", "outcome"}, nil)
	tripsDesc = prometheus.NewDesc("sandfleet_db_round_trips_total", "Database round trips since start.",
		[]string{"database"}, nil)
	upDesc = prometheus.NewDesc("sandfleet_database_up", "1 when the database answered this scrape.", nil, nil)
)

// state collects the gauges of the current state for a scrape.
type state struct{ s *Server }

func (c state) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{machinesDesc, tasksDesc, desiredDesc, actualDesc, driftDesc, throttledDesc,
		unfinishedDesc, passesDesc, tripsDesc, upDesc} {
		ch <- d
	}
}

func (c state) Collect(ch chan<- prometheus.Metric) {
	be := c.s.backend.Load()
	up := 0.0
	defer func() { ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up) }()
	if be == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	counts, err := be.store.CountTasks(ctx)
	if err != nil {
		c.s.log.Warn("metrics: count tasks", "err", err)
		return
	}
	up = 1
	for _, st := range store.TaskStatuses {
		gauge(tasksDesc, float64(counts[st]), string(st))
	}
	if be.fleet != nil {
		pools, err := be.fleet.Status(ctx)
		if err != nil {
			c.s.log.Warn("metrics: pools", "err", err)
			return
		}
		for _, p := range pools {
			for _, st := range store.MachineStates {
				if st != store.Gone {
					gauge(machinesDesc, float64(p.Machines[string(st)]), p.Name, string(st))
				}
			}
			gauge(desiredDesc, float64(p.Desired), p.Name)
			gauge(actualDesc, float64(p.Actual), p.Name)
			gauge(driftDesc, float64(p.Drift), p.Name)
			gauge(throttledDesc, b2f(p.Throttled), p.Name)
		}
		for _, r := range be.fleet.Reconcilers() {
			ps, name := r.PassStats(), r.ProviderName()
			counter(passesDesc, float64(ps.Passes-ps.Failed-ps.Skipped), name, "ok")
			counter(passesDesc, float64(ps.Failed), name, "failed")
			counter(passesDesc, float64(ps.Skipped), name, "throttled")
		}
	}
	unfinished, err := be.store.ListOperations(ctx, store.OperationFilter{Unfinished: true})
	if err != nil {
		c.s.log.Warn("metrics: operations", "err", err)
		return
	}
	byKind := map[string]int{}
	for _, op := range unfinished {
		byKind[string(op.Kind)]++
	}
	for _, k := range []store.OpKind{store.OpCreatePool, store.OpDeletePool, store.OpUpdatePool, store.OpSetCapacity,
		store.OpReimage, store.OpDelete} {
		gauge(unfinishedDesc, float64(byKind[string(k)]), string(k))
	}
	counter(tripsDesc, float64(be.store.Stats().RoundTrips), be.store.Dialect())
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// metrics serves /metrics: the registry's instruments and the state now.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.metricsHandler.ServeHTTP(w, r)
}
