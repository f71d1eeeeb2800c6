package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// pair is one row of a plan: an instance, a machine, or both, and what the
// table says to do about them.
type pair struct {
	inst    *provider.Instance
	machine *store.Machine
	cond    Cond
	action  Action
}

// plan looks every (instance, machine) pair of a pool up in the table.
func (r *Reconciler) plan(p config.Pool, insts []provider.Instance, machines []store.Machine) []pair {
	byLabel := make(map[string]*store.Machine, len(machines))
	for i := range machines {
		byLabel[machines[i].Label] = &machines[i]
	}
	out := make([]pair, 0, len(insts)+4)
	matched := make(map[string]bool, len(insts))
	now := time.Now()
	owned := r.ops.snapshot()
	inFlight := func(id string) bool { _, ok := owned[opKey(p.Name, id)]; return ok }
	silent := r.agents.snapshot()
	for i := range insts {
		in := &insts[i]
		m := byLabel[in.Name]
		matched[in.Name] = true
		state := none
		if m != nil {
			state = m.State
		}
		c := condOf(inFlight(in.ID), m != nil && r.agentOverdue(m, silent, now))
		action := restartStopped(r.caps, seen(in.State), state, c, decide(seen(in.State), state, c))
		out = append(out, pair{inst: in, machine: m, cond: c, action: action})
	}
	for i := range machines {
		m := &machines[i]
		if matched[m.Label] || m.State == store.Gone {
			continue
		}
		c := condOf(inFlight(m.InstanceID), r.agentOverdue(m, silent, now))
		out = append(out, pair{machine: m, cond: c, action: decide(Absent, m.State, c)})
	}
	return out
}

// agentOverdue says whether m's agent is late: a provisioning machine's has
// not answered within ProvisionTimeout; a ready machine's failed its health
// probes at this version of the row.
func (r *Reconciler) agentOverdue(m *store.Machine, silent map[string]verdict, now time.Time) bool {
	if !r.o.WaitForAgent {
		return false
	}
	switch m.State {
	case store.Provisioning:
		return r.o.ProvisionTimeout > 0 && now.Sub(m.StateChangedOn) > r.o.ProvisionTimeout
	case store.Ready:
		v, ok := silent[m.Label]
		return ok && v.version == m.Version
	}
	return false
}

// apply carries out a plan's actions, each batch in one short transaction.
// Up to shrink dirty machines are deleted rather than reimaged: their pool is
// shrinking. It returns how many.
func (r *Reconciler) apply(ctx context.Context, p config.Pool, plan []pair, shrink int) (int, error) {
	var (
		register []store.Machine
		moves    []store.Transition
		probe    []pair
		reimage  []*store.Machine
		del      []pair
	)
	for _, x := range plan {
		switch x.action {
		case Keep:
		case Register:
			register = append(register, r.newMachine(p, x.inst))
		case Revive:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Gone, Version: x.machine.Version,
				To: store.Dirty, Cause: "instance reappeared in the provider; reimaging before use", IP: &x.inst.IP})
			r.wakeAt(time.Now().Add(r.o.ReimageWindow))
		case Restart:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Dirty, Cause: fmt.Sprintf("instance %s; reimaging it starts it", x.inst.Raw)})
			r.Trigger()
		case Probe:
			probe = append(probe, x)
		case Unready:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Ready, Version: x.machine.Version,
				To: store.Provisioning, Cause: r.unreadyCause(x)})
			r.wakeAt(time.Now().Add(probeEvery)) // ready again as soon as it answers
		case Refresh:
			if x.inst.IP != "" && x.inst.IP != x.machine.IP {
				moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
					To: x.machine.State, Cause: "ip changed", IP: &x.inst.IP})
			}
		case MarkGone:
			cause := "instance absent from the provider"
			if r.o.Spot && x.machine.State != store.Deleting {
				cause = "instance absent from the provider: evicted (Spot)"
				r.o.Metrics.Evicted(p.Name)
			}
			moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Gone, Cause: cause})
		case Redo:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Reimaging, Version: x.machine.Version,
				To: store.Dirty, Cause: "reimage operation lost; reimaging again"})
		case Reimage:
			reimage = append(reimage, x.machine)
		case Delete:
			del = append(del, x)
		case Replace:
			if r.caps.Delete {
				del = append(del, x)
				continue
			}
			reason := fmt.Sprintf("agent has not answered for %s (timeouts.vm_state %s); the provider cannot replace the machine",
				time.Since(x.machine.StateChangedOn).Round(time.Second), r.o.ProvisionTimeout)
			moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Quarantined, Cause: reason, QuarantineReason: &reason})
		default: // Anomaly
			r.anomaly(p, x)
		}
	}
	if err := r.register(ctx, p, register); err != nil {
		return 0, err
	}
	if len(probe) > 0 {
		moves = append(moves, r.probe(ctx, probe)...)
	}
	if err := r.move(ctx, p.Name, moves); err != nil {
		return 0, err
	}
	shrunk := r.retire(ctx, p, reimage, shrink)
	r.reimage(ctx, p, reimage[shrunk:])
	r.deleteInstances(ctx, p, del)
	return shrunk, nil
}

// retire deletes the first n dirty machines instead of reimaging them:
// their pool is shrinking. It returns how many it took.
func (r *Reconciler) retire(ctx context.Context, p config.Pool, dirty []*store.Machine, n int) int {
	n = min(n, len(dirty))
	if n == 0 {
		return 0
	}
	ids := make([]string, n)
	pre := make([]store.Transition, n)
	for i, m := range dirty[:n] {
		ids[i] = m.InstanceID
		pre[i] = store.Transition{Label: m.Label, From: store.Dirty, Version: m.Version, To: store.Deleting,
			Cause: "released while its pool shrinks: deleted instead of reimaged"}
	}
	r.startInstanceOp(ctx, p.Name, store.OpDelete, ids, pre,
		func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Delete(ctx, p.Name, ids) })
	return n
}

// unreadyCause says why a ready machine leaves ready.
func (r *Reconciler) unreadyCause(x pair) string {
	if x.cond == AgentOverdue {
		if v, ok := r.agents.get(x.machine.Label); ok {
			return "agent stopped answering: " + v.err
		}
		return "agent stopped answering"
	}
	return "instance is " + x.inst.Raw
}

// anomaly logs a pair the table says cannot happen, once per machine and
// cell, and leaves it alone.
func (r *Reconciler) anomaly(p config.Pool, x pair) {
	label, state, s := "", none, Absent
	if x.machine != nil {
		label, state = x.machine.Label, x.machine.State
	}
	if x.inst != nil {
		s = seen(x.inst.State)
		if label == "" {
			label = x.inst.Name
		}
	}
	key := fmt.Sprintf("%s/%s/%s/%s", label, state, x.cond, s)
	r.mu.Lock()
	logged := r.anomalies[key]
	r.anomalies[key] = true
	r.mu.Unlock()
	if !logged {
		r.log.Warn("machine in a state the table says cannot happen; leaving it alone",
			"pool", p.Name, "label", label, "state", state, "cond", x.cond, "seen", s, "action", x.action)
	}
}

// register inserts new machines in one transaction. If a label exists
// already — another node registered it, or another pool holds that label —
// it falls back to one insert a machine, so one conflict does not block the
// rest, and names the conflict.
func (r *Reconciler) register(ctx context.Context, p config.Pool, ms []store.Machine) error {
	if len(ms) == 0 {
		return nil
	}
	const cause = "instance found in the provider"
	_, err := r.o.Store.InsertMachines(ctx, ms, cause)
	if errors.Is(err, store.ErrConflict) {
		var added []store.Machine
		for _, m := range ms {
			_, err := r.o.Store.InsertMachines(ctx, []store.Machine{m}, cause)
			switch {
			case errors.Is(err, store.ErrConflict):
				r.log.Warn("label already in use; not registering", "pool", p.Name, "label", m.Label, "instance_id", m.InstanceID)
			case err != nil:
				return fmt.Errorf("register %s: %w", m.Label, err)
			default:
				added = append(added, m)
			}
		}
		ms, err = added, nil
	}
	if err != nil {
		return fmt.Errorf("register %d machines: %w", len(ms), err)
	}
	for _, m := range ms {
		r.log.Info("machine registered", "pool", p.Name, "label", m.Label, "instance_id", m.InstanceID, "ip", m.IP, "state", m.State)
	}
	if len(ms) > 0 && r.o.WaitForAgent {
		r.wakeAt(time.Now().Add(time.Second)) // probe them soon
	}
	return nil
}

// move applies transitions in one transaction and logs each that landed.
func (r *Reconciler) move(ctx context.Context, pool string, ts []store.Transition) error {
	if len(ts) == 0 {
		return nil
	}
	res, err := r.o.Store.TransitionMachines(ctx, ts)
	if err != nil {
		return fmt.Errorf("apply %d transitions: %w", len(ts), err)
	}
	ready := false
	for i, m := range res {
		if m == nil {
			continue
		}
		if ts[i].From != ts[i].To {
			r.log.Info("machine state", "pool", pool, "label", m.Label, "instance_id", m.InstanceID,
				"from", ts[i].From, "to", ts[i].To, "cause", ts[i].Cause)
		}
		ready = ready || (ts[i].To == store.Ready && ts[i].From != store.Ready)
	}
	if ready && r.o.OnReady != nil {
		r.o.OnReady()
	}
	return nil
}

func (r *Reconciler) newMachine(p config.Pool, in *provider.Instance) store.Machine {
	state := store.Provisioning
	if !r.o.WaitForAgent && in.State == provider.InstanceRunning && in.IP != "" {
		state = store.Ready
	}
	arch, platform := p.Arch, p.Platform
	if in.Arch != "" {
		arch = in.Arch
	}
	if in.Platform != "" {
		platform = in.Platform
	}
	snapshot := in.Image
	if snapshot == "" {
		snapshot = p.Image
	}
	tags := slices.Clone(p.Tags)
	for _, t := range in.Tags {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	port := r.o.ResultServerPort
	if in.ResultServerPort != 0 {
		port = in.ResultServerPort
	}
	return store.Machine{
		Name: in.Name, Label: in.Name, Pool: p.Name, InstanceID: in.ID,
		Arch: arch, IP: in.IP, Platform: platform, Snapshot: snapshot,
		ResultServerIP: r.o.ResultServerIP, ResultServerPort: port,
		Reserved: p.Reserved, Tags: tags, State: state,
	}
}

// probeEvery is how often a pass asks a provisioning machine's agent
// again; between passes, for probeEvery after each silent probe, watchAgent
// asks it every agentRetry, and a pass follows as soon as it answers.
const (
	probeEvery = 2 * time.Second
	agentRetry = 200 * time.Millisecond
	// maxWatching bounds the agents watchAgent asks at once: it is for the
	// few machines a reimage just handed back, not for a fleet booting
	// (10,000 new VMs would be 50,000 requests a second); the others wait
	// for the passes' probes.
	maxWatching = 8
)

// probe asks the agents of provisioning machines, a bounded number at a time,
// and returns the moves to ready for those that answered.
func (r *Reconciler) probe(ctx context.Context, ps []pair) []store.Transition {
	alive := make([]bool, len(ps))
	if r.o.WaitForAgent && r.o.Agent != nil {
		var wg sync.WaitGroup
		limit := make(chan struct{}, 64)
		for i, x := range ps {
			if x.inst.IP == "" {
				continue
			}
			limit <- struct{}{}
			wg.Go(func() {
				defer func() { <-limit }()
				err := r.o.Agent.Ping(ctx, x.inst.IP)
				alive[i] = err == nil
				r.probes.note(x.machine, err)
			})
		}
		wg.Wait()
		for i, x := range ps {
			if !alive[i] && x.inst.IP != "" {
				r.watchAgent(x.machine.Label, x.inst.IP)
			}
		}
	} else {
		for i, x := range ps {
			alive[i] = x.inst.IP != ""
		}
	}
	var ts []store.Transition
	waiting := false
	for i, x := range ps {
		if !alive[i] {
			waiting = true
			continue
		}
		ts = append(ts, store.Transition{Label: x.machine.Label, From: store.Provisioning, Version: x.machine.Version,
			To: store.Ready, Cause: "agent answers", IP: &x.inst.IP})
	}
	if waiting {
		r.wakeAt(time.Now().Add(probeEvery))
	}
	return ts
}

// watchAgent asks the agent at ip of provisioning machine label again
// every agentRetry for probeEvery, between passes, and triggers a pass as
// soon as it answers; the pass's own probe then makes the machine ready. A
// guest reverted to a running snapshot answers within a second of its
// revert: without this, each analysis would wait for the next pass's probe,
// up to probeEvery later. It asks nothing of the provider, so a pass comes
// no more often than it would have.
func (r *Reconciler) watchAgent(label, ip string) {
	r.mu.Lock()
	if r.watching[label] || len(r.watching) >= maxWatching {
		r.mu.Unlock()
		return
	}
	r.watching[label] = true
	term := r.base
	r.mu.Unlock()
	r.opsWG.Go(func() {
		defer func() {
			r.mu.Lock()
			delete(r.watching, label)
			r.mu.Unlock()
		}()
		tick := time.NewTicker(agentRetry)
		defer tick.Stop()
		for end := time.Now().Add(probeEvery - agentRetry); time.Now().Before(end); {
			select {
			case <-term.Done():
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(term, probeEvery)
			err := r.o.Agent.Ping(ctx, ip)
			cancel()
			if err == nil {
				r.Trigger()
				return
			}
		}
	})
}

// reimage sends dirty machines to be reimaged, in batches: a batch goes once
// its oldest machine has waited the reimage window. A provider that cannot
// batch gets one operation a machine, at once, so one failing does not hold
// back the others.
func (r *Reconciler) reimage(ctx context.Context, p config.Pool, dirty []*store.Machine) {
	if len(dirty) == 0 {
		return
	}
	sort.Slice(dirty, func(i, j int) bool { return dirty[i].StateChangedOn.Before(dirty[j].StateChangedOn) })
	// The window gathers a batch; a provider that reimages machines one by
	// one has none to gather, and would only make each wait.
	if due := dirty[0].StateChangedOn.Add(r.o.ReimageWindow); r.caps.BatchReimage && time.Now().Before(due) {
		r.wakeAt(due)
		return
	}
	batches := [][]*store.Machine{dirty}
	if !r.caps.BatchReimage {
		batches = batches[:0]
		for _, m := range dirty {
			batches = append(batches, []*store.Machine{m})
		}
	}
	for _, batch := range batches {
		ids := make([]string, len(batch))
		pre := make([]store.Transition, len(batch))
		for i, m := range batch {
			ids[i] = m.InstanceID
			pre[i] = store.Transition{Label: m.Label, From: store.Dirty, Version: m.Version, To: store.Reimaging, Cause: "reimage batch"}
		}
		r.startInstanceOp(ctx, p.Name, store.OpReimage, ids, pre,
			func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Reimage(ctx, p.Name, ids) })
	}
}

// deleteInstances deletes instances that failed, whose delete was lost, or
// whose machine is replaced. Instances without a row get one, in state
// deleting, so the journal and the table agree about what is being removed.
// A provider that cannot delete has the machines quarantined instead.
func (r *Reconciler) deleteInstances(ctx context.Context, p config.Pool, del []pair) {
	if len(del) == 0 {
		return
	}
	if !r.caps.Delete {
		var moves []store.Transition
		for _, x := range del {
			if x.machine == nil || x.machine.State == store.Quarantined {
				continue
			}
			reason := "instance " + x.inst.Raw + " and the provider cannot delete it"
			moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Quarantined, Cause: reason, QuarantineReason: &reason})
		}
		if err := r.move(ctx, p.Name, moves); err != nil {
			r.log.Error("quarantine undeletable machines", "pool", p.Name, "err", err)
		}
		return
	}
	var (
		ids    []string
		pre    []store.Transition
		insert []store.Machine
	)
	for _, x := range del {
		switch {
		case x.machine == nil:
			m := r.newMachine(p, x.inst)
			m.State = store.Deleting
			insert = append(insert, m)
			ids = append(ids, x.inst.ID)
		case x.machine.State == store.Deleting:
			ids = append(ids, x.machine.InstanceID)
		default:
			ids = append(ids, x.machine.InstanceID)
			cause := "instance " + x.inst.Raw
			if x.action == Replace {
				cause = fmt.Sprintf("agent has not answered for %s (timeouts.vm_state %s); replacing the instance",
					time.Since(x.machine.StateChangedOn).Round(time.Second), r.o.ProvisionTimeout)
			}
			pre = append(pre, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Deleting, Cause: cause})
		}
	}
	if len(insert) > 0 {
		if _, err := r.o.Store.InsertMachines(ctx, insert, "failed instance found in the provider"); err != nil {
			r.log.Error("record failed instances", "pool", p.Name, "err", err)
			return
		}
	}
	r.startInstanceOp(ctx, p.Name, store.OpDelete, ids, pre,
		func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Delete(ctx, p.Name, ids) })
}
