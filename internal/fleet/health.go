package fleet

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// A ready machine is one whose agent answers, and it must stay so: a machine
// whose agent died is not usable, whatever the provider says of its instance.
// Every HealthInterval the leader probes the agents of its ready machines
// (GET /, a short deadline); one that fails twice, a second apart, is
// recorded silent, and the next pass takes it out of ready (table: ready ×
// agent-overdue → unready). Back in provisioning it is probed like any new
// machine: ready again when the agent answers, replaced or quarantined when
// it has not within timeouts.vm_state.

// verdict is a failed health probe of a ready machine: the version of its row
// when it was probed (a verdict on an older row says nothing of a newer one)
// and why.
type verdict struct {
	version int64
	err     string
	at      time.Time
}

// verdicts are the failed probes of machines still believed ready, by label.
type verdicts struct {
	mu     sync.Mutex
	silent map[string]verdict
}

func (v *verdicts) set(label string, x verdict) {
	v.mu.Lock()
	v.silent[label] = x
	v.mu.Unlock()
}

func (v *verdicts) clear(label string) {
	v.mu.Lock()
	delete(v.silent, label)
	v.mu.Unlock()
}

func (v *verdicts) get(label string) (verdict, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	x, ok := v.silent[label]
	return x, ok
}

// note records a probe of m: a failure keeps the time of the first one
// since m's row last changed; a success forgets them.
func (v *verdicts) note(m *store.Machine, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err == nil {
		delete(v.silent, m.Label)
		return
	}
	x := verdict{version: m.Version, err: err.Error(), at: time.Now()}
	if prev, ok := v.silent[m.Label]; ok && prev.version == m.Version {
		x.at = prev.at
	}
	v.silent[m.Label] = x
}

func (v *verdicts) snapshot() map[string]verdict {
	v.mu.Lock()
	defer v.mu.Unlock()
	return maps.Clone(v.silent)
}

// watchAgents probes ready machines' agents every HealthInterval until ctx ends.
func (r *Reconciler) watchAgents(ctx context.Context) {
	tick := time.NewTicker(r.o.HealthInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r.checkAgents(ctx)
	}
}

// healthRetry is how long a failed probe waits before the second try that
// confirms it: one lost packet does not take a machine out of service.
const healthRetry = time.Second

// checkAgents probes every ready machine of this reconciler's pools once, a
// bounded number at a time, and triggers a pass if one went silent.
func (r *Reconciler) checkAgents(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, r.o.HealthInterval)
	ms, err := r.o.Store.ListMachines(qctx, store.MachineFilter{States: []store.MachineState{store.Ready}})
	cancel()
	if err != nil {
		r.log.Warn("health probe: list ready machines", "err", err)
		return
	}
	timeout := min(3*time.Second, r.o.HealthInterval/2)
	ping := func(ip string) error {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return r.o.Agent.Ping(pctx, ip)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		silent int
		limit  = make(chan struct{}, 64)
	)
	for _, m := range ms {
		if _, mine := r.pools[m.Pool]; !mine || m.IP == "" {
			continue
		}
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			err := ping(m.IP)
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(healthRetry):
				}
				err = ping(m.IP)
			}
			if err == nil {
				r.agents.clear(m.Label)
				return
			}
			r.agents.set(m.Label, verdict{version: m.Version, err: err.Error(), at: time.Now()})
			r.log.Warn("ready machine's agent does not answer; taking it out of service",
				"pool", m.Pool, "label", m.Label, "instance_id", m.InstanceID, "ip", m.IP, "err", err)
			mu.Lock()
			silent++
			mu.Unlock()
		})
	}
	wg.Wait()
	if silent > 0 {
		r.Trigger()
	}
}
