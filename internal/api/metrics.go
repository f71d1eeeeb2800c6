package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// metrics writes the Prometheus text exposition format by hand: a few gauges
// and counters do not need a client library.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	be := s.backend.Load()
	if be == nil {
		http.Error(w, s.unavailableMessage(), http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	pools, err := be.fleet.Status(ctx)
	if err != nil {
		http.Error(w, "database unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	unfinished, err := be.store.ListOperations(ctx, store.OperationFilter{Unfinished: true})
	if err != nil {
		http.Error(w, "database unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	var b strings.Builder
	family(&b, "sandfleet_machines", "gauge", "Machine rows by pool and state (gone excluded).")
	for _, p := range pools {
		for _, st := range store.MachineStates {
			if st != store.Gone {
				fmt.Fprintf(&b, "sandfleet_machines{pool=%q,state=%q} %d\n", p.Name, st, p.Machines[string(st)])
			}
		}
	}
	perPool := []struct {
		name, help string
		value      func(i int) int
	}{
		{"sandfleet_pool_desired_size", "Instances a pool should have.", func(i int) int { return pools[i].Desired }},
		{"sandfleet_pool_instances", "Instances the provider listed at the last good read.", func(i int) int { return pools[i].Actual }},
		{"sandfleet_pool_drift", "Instances missing in the database, rows missing in the provider and mismatched fields, at the last good read.",
			func(i int) int { return pools[i].Drift }},
		{"sandfleet_pool_throttled", "1 while the pool's provider asks us to wait (429).", func(i int) int { return b2i(pools[i].Throttled) }},
	}
	for _, g := range perPool {
		family(&b, g.name, "gauge", g.help)
		for i, p := range pools {
			fmt.Fprintf(&b, "%s{pool=%q} %d\n", g.name, p.Name, g.value(i))
		}
	}
	byKind := map[string]int{}
	for _, op := range unfinished {
		byKind[string(op.Kind)]++
	}
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	family(&b, "sandfleet_operations_unfinished", "gauge", "Journaled provider operations not yet ended, by kind.")
	for _, k := range kinds {
		fmt.Fprintf(&b, "sandfleet_operations_unfinished{kind=%q} %d\n", k, byKind[k])
	}
	family(&b, "sandfleet_reconcile_passes_total", "counter", "Reconcile passes, by provider and outcome.")
	for _, r := range be.fleet.Reconcilers() {
		ps, name := r.PassStats(), r.ProviderName()
		fmt.Fprintf(&b, "sandfleet_reconcile_passes_total{provider=%q,outcome=\"ok\"} %d\n", name, ps.Passes-ps.Failed-ps.Skipped)
		fmt.Fprintf(&b, "sandfleet_reconcile_passes_total{provider=%q,outcome=\"failed\"} %d\n", name, ps.Failed)
		fmt.Fprintf(&b, "sandfleet_reconcile_passes_total{provider=%q,outcome=\"throttled\"} %d\n", name, ps.Skipped)
	}
	family(&b, "sandfleet_reconcile_last_pass_seconds", "gauge", "Duration of the last reconcile pass that read the provider.")
	for _, r := range be.fleet.Reconcilers() {
		fmt.Fprintf(&b, "sandfleet_reconcile_last_pass_seconds{provider=%q} %g\n", r.ProviderName(), r.PassStats().LastDuration.Seconds())
	}
	family(&b, "sandfleet_db_round_trips_total", "counter", "Database round trips since start.")
	fmt.Fprintf(&b, "sandfleet_db_round_trips_total{database=%q} %d\n", be.store.Dialect(), be.store.Stats().RoundTrips)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	io.WriteString(w, b.String())
}

func family(b *strings.Builder, name, kind, help string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func b2i(v bool) int {
	if v {
		return 1
	}
	return 0
}
