package sched

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/store"
)

// maxBatch caps the leases of one dispatch transaction: short, whatever the
// queue's length.
const maxBatch = 256

// dispatch matches the queue, in priority then age order, with the free
// machines. A task whose machines are all busy is skipped, never holding up
// those behind it; one nothing could ever serve fails at once. The leases of
// one dispatch share a transaction, each task and machine pair its own
// compare-and-set.
func (s *Scheduler) dispatch(ctx context.Context) error {
	if s.paused.Load() || s.draining.Load() {
		return nil
	}
	pending, err := s.o.Store.PendingTasks(ctx, 4*maxBatch)
	if err != nil || len(pending) == 0 {
		return err
	}
	machines, leased, err := s.machinesFor(ctx, pending)
	if err != nil {
		return err
	}
	offers := s.offers(machines)
	byLabel := make(map[string]store.Machine, len(machines))
	for _, m := range machines {
		byLabel[m.Label] = m
	}
	var (
		reqs    []store.LeaseRequest
		waiting int
		now     = time.Now()
		taken   = map[string]bool{}
		// Tasks asking the same are matched once: a queue of a thousand
		// alike costs one ranking of the machines, not a thousand.
		ranked = map[string]*ranking{}
	)
	for _, t := range pending {
		if s.o.Scheduler.MaxMachines > 0 && leased+len(reqs) >= s.o.Scheduler.MaxMachines {
			break
		}
		if len(reqs) == maxBatch {
			s.Trigger() // the rest next time round
			break
		}
		need := needOf(t)
		rk := ranked[need.key()]
		if rk == nil {
			best, unmet := s.match.Candidates(need, offers)
			rk = &ranking{best: best, unmet: unmet}
			ranked[need.key()] = rk
		}
		offer, verdict := rk.next(taken)
		switch {
		case verdict == Unserviceable && s.o.Scheduler.FailUnserviceable:
			s.fail(ctx, t, "no machine could ever serve this task: "+rk.unmet)
		case verdict != Serve:
			waiting++
			if pt := s.o.Scheduler.PendingTimeout; pt > 0 && now.Sub(t.AddedOn) > pt {
				why := "every machine that could serve it stayed busy"
				if rk.unmet != "" {
					why = rk.unmet
				}
				s.fail(ctx, t, fmt.Sprintf("pending for longer than scheduler.pending_timeout (%s): %s", pt, why))
			}
		default:
			taken[offer.Label] = true
			m := byLabel[offer.Label]
			reqs = append(reqs, store.LeaseRequest{TaskID: t.ID, TaskVersion: t.Version, Label: m.Label,
				MachineVersion: m.Version, Node: s.o.Node, TTL: s.o.LeaseTTL})
		}
	}
	// More tasks wait than last time: a pool that could grow for them
	// should now, not at its next pass.
	if waiting > s.waiting {
		s.o.Grow()
	}
	s.waiting = waiting
	if len(reqs) == 0 {
		return nil
	}
	res, err := s.o.Store.Lease(ctx, reqs)
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.Err != nil {
			// Someone moved the task or the machine meanwhile: decide again.
			s.log.Debug("lease went stale", "err", r.Err)
			s.Trigger()
			continue
		}
		s.o.Metrics.Leased(r.Task.StartedOn.Sub(r.Task.AddedOn))
		s.start(r.Task, r.Machine)
	}
	return nil
}

// ranking is the offers one need ranks, best first, and how far a dispatch
// has handed them out.
type ranking struct {
	best  []Offer
	unmet string
	i     int
}

// next hands out the best free offer not taken yet in this dispatch.
func (rk *ranking) next(taken map[string]bool) (Offer, Verdict) {
	if len(rk.best) == 0 {
		return Offer{}, Unserviceable
	}
	for ; rk.i < len(rk.best) && rk.best[rk.i].Free; rk.i++ {
		if o := rk.best[rk.i]; !taken[o.Label] {
			rk.i++
			return o, Serve
		}
	}
	return Offer{}, Wait
}

// fail ends a pending task that cannot run, with the reason.
func (s *Scheduler) fail(ctx context.Context, t store.Task, why string) {
	_, err := s.o.Store.TransitionTask(ctx, store.TaskTransition{TaskID: t.ID, From: store.TaskPending,
		To: store.TaskFailedAnalysis, Error: why})
	switch {
	case errors.Is(err, store.ErrStale):
	case err != nil:
		s.log.Error("fail task", "task_id", t.ID, "err", err)
	default:
		s.log.Warn("task failed before it ran", "task_id", t.ID, "error", why)
	}
}

// key identifies a need: tasks with equal keys match alike.
func (n Need) key() string {
	return n.Label + "\x00" + n.Platform + "\x00" + n.Package + "\x00" + strings.Join(n.Tags, "\x00")
}

// needOf is what a task asks of a machine.
func needOf(t store.Task) Need {
	return Need{Label: t.Machine, Platform: t.Platform, Tags: t.Tags, Package: t.Package}
}

// machinesFor reads what a dispatch needs of the machine table: the ready
// machines, and the machines the pending tasks name by label (busy or not,
// they decide whether such a task waits). The other busy machines are what
// their pools make, which the pools' offers stand for: a dispatch does not
// read the whole table. It also counts the analyses running, for
// scheduler.max_machines.
func (s *Scheduler) machinesFor(ctx context.Context, pending []store.Task) ([]store.Machine, int, error) {
	ms, err := s.o.Store.ListMachines(ctx, store.MachineFilter{States: []store.MachineState{store.Ready}})
	if err != nil {
		return nil, 0, err
	}
	seen := make(map[string]bool, len(ms))
	for _, m := range ms {
		seen[m.Label] = true
	}
	for _, t := range pending {
		if t.Machine == "" || seen[t.Machine] {
			continue
		}
		seen[t.Machine] = true
		m, err := s.o.Store.GetMachine(ctx, t.Machine)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, 0, err
		default:
			ms = append(ms, m)
		}
	}
	running := 0
	if s.o.Scheduler.MaxMachines > 0 {
		counts, err := s.o.Store.CountTasks(ctx)
		if err != nil {
			return nil, 0, err
		}
		running = counts[store.TaskRunning]
	}
	return ms, running, nil
}

// offers are every machine that is or could be: the machine rows read (the
// ready ones free), and what the configured pools could make.
func (s *Scheduler) offers(machines []store.Machine) []Offer {
	var offers []Offer
	for _, m := range machines {
		if m.State == store.Gone || m.State == store.Deleting {
			continue
		}
		offers = append(offers, Offer{Label: m.Label, Pool: m.Pool, Platform: m.Platform, Arch: m.Arch,
			Tags: m.Tags, Reserved: m.Reserved, Free: m.State == store.Ready, LastUsed: m.LockedChangedOn})
	}
	return append(offers, PoolOffers(s.o.Pools)...)
}

// PoolOffers are what configured pools could make: a cloud pool's machines
// (no label yet), a static pool's listed machines. They are never free.
func PoolOffers(pools []config.Pool) []Offer {
	var out []Offer
	for _, p := range pools {
		if len(p.Machines) == 0 {
			out = append(out, Offer{Pool: p.Name, Platform: p.Platform, Arch: p.Arch, Tags: p.Tags, Reserved: p.Reserved})
			continue
		}
		for _, m := range p.Machines {
			o := Offer{Label: m.Label, Pool: p.Name, Platform: p.Platform, Arch: p.Arch,
				Tags: append(slices.Clone(p.Tags), m.Tags...), Reserved: p.Reserved}
			if m.Platform != "" {
				o.Platform = m.Platform
			}
			if m.Arch != "" {
				o.Arch = m.Arch
			}
			out = append(out, o)
		}
	}
	return out
}
