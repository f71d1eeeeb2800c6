package sched

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	machines, err := s.o.Store.ListMachines(ctx, store.MachineFilter{})
	if err != nil {
		return err
	}
	offers, leased := s.offers(machines)
	byLabel := make(map[string]store.Machine, len(machines))
	for _, m := range machines {
		byLabel[m.Label] = m
	}
	var (
		reqs  []store.LeaseRequest
		tasks = map[int64]store.Task{}
		now   = time.Now()
	)
	for _, t := range pending {
		if s.o.Scheduler.MaxMachines > 0 && leased+len(reqs) >= s.o.Scheduler.MaxMachines {
			break
		}
		if len(reqs) == maxBatch {
			s.Trigger() // the rest next time round
			break
		}
		offer, verdict, unmet := s.match.Pick(needOf(t), offers)
		switch {
		case verdict == Unserviceable && s.o.Scheduler.FailUnserviceable:
			s.fail(ctx, t, "no machine could ever serve this task: "+unmet)
		case verdict != Serve:
			if pt := s.o.Scheduler.PendingTimeout; pt > 0 && now.Sub(t.AddedOn) > pt {
				why := "every machine that could serve it stayed busy"
				if unmet != "" {
					why = unmet
				}
				s.fail(ctx, t, fmt.Sprintf("pending for longer than scheduler.pending_timeout (%s): %s", pt, why))
			}
		default:
			i := slices.IndexFunc(offers, func(o Offer) bool { return o.Label == offer.Label && o.Free })
			offers[i].Free = false // taken for this task
			m := byLabel[offer.Label]
			reqs = append(reqs, store.LeaseRequest{TaskID: t.ID, TaskVersion: t.Version, Label: m.Label,
				MachineVersion: m.Version, Node: s.o.Node, TTL: s.o.LeaseTTL})
			tasks[t.ID] = t
		}
	}
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
		s.start(r.Task, r.Machine)
	}
	return nil
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

// needOf is what a task asks of a machine.
func needOf(t store.Task) Need {
	return Need{Label: t.Machine, Platform: t.Platform, Tags: t.Tags, Package: t.Package}
}

// offers are every machine that is or could be: the machine rows (ready ones
// free), and what the configured pools could make. It also counts the
// machines leased now, for scheduler.max_machines.
func (s *Scheduler) offers(machines []store.Machine) (offers []Offer, leased int) {
	for _, m := range machines {
		switch m.State {
		case store.Gone, store.Deleting:
			continue
		case store.Leased:
			leased++
		}
		offers = append(offers, Offer{Label: m.Label, Pool: m.Pool, Platform: m.Platform, Arch: m.Arch,
			Tags: m.Tags, Reserved: m.Reserved, Free: m.State == store.Ready, LastUsed: m.LockedChangedOn})
	}
	return append(offers, PoolOffers(s.o.Pools)...), leased
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
