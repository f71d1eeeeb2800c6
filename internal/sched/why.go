package sched

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/store"
)

// maxNamed bounds the machines one reason names.
const maxNamed = 4

// Why says, for each pending task of ts, why it is still waiting, from the
// Matcher the dispatch uses: nothing matches it (and what nothing meets),
// the scheduler is paused or at max_machines, or which machines match and
// what each is doing. Other tasks get no entry.
func (s *Scheduler) Why(ctx context.Context, ts []store.Task) (map[int64]string, error) {
	out := map[int64]string{}
	if !slices.ContainsFunc(ts, func(t store.Task) bool { return t.Status == store.TaskPending }) {
		return out, nil
	}
	machines, err := s.o.Store.ListMachines(ctx, store.MachineFilter{})
	if err != nil {
		return nil, err
	}
	ops, err := s.o.Store.ListOperations(ctx, store.OperationFilter{Unfinished: true})
	if err != nil {
		return nil, err
	}
	counts, err := s.o.Store.CountTasks(ctx)
	if err != nil {
		return nil, err
	}
	queue, err := s.o.Store.PendingTasks(ctx, 4*maxBatch)
	if err != nil {
		return nil, err
	}
	w := whyContext{s: s, machines: machines, ops: ops, running: counts[store.TaskRunning], queue: queue, now: time.Now(),
		byLabel: map[string]store.Machine{}, inPool: map[string]int{}}
	for _, m := range machines {
		w.byLabel[m.Label] = m
		if m.State != store.Gone {
			w.inPool[m.Pool]++
		}
	}
	w.offers = s.offers(machines)
	for _, t := range ts {
		if t.Status == store.TaskPending {
			out[t.ID] = w.why(t)
		}
	}
	return out, nil
}

// whyContext is what explaining the pending tasks reads once.
type whyContext struct {
	s        *Scheduler
	machines []store.Machine
	byLabel  map[string]store.Machine
	inPool   map[string]int // live machine rows by pool
	ops      []store.Operation
	offers   []Offer
	running  int
	queue    []store.Task
	now      time.Time
}

func (w *whyContext) why(t store.Task) string {
	need := needOf(t)
	best, unmet := w.s.match.Candidates(need, w.offers)
	if len(best) == 0 {
		return "no machine matches: " + unmet
	}
	var blocked []string
	switch {
	case w.s.paused.Load():
		blocked = append(blocked, "scheduler paused (SIGUSR1; SIGUSR2 resumes)")
	case w.s.draining.Load():
		blocked = append(blocked, "scheduler draining: this node is shutting down")
	}
	if mm := w.s.o.Scheduler.MaxMachines; mm > 0 && w.running >= mm {
		blocked = append(blocked, fmt.Sprintf("max_machines %d reached: %d analyses running", mm, w.running))
	}

	var named, free []string
	var pools []string
	rows := 0
	for _, o := range best {
		m, isRow := w.byLabel[o.Label]
		if !isRow || o.Label == "" {
			if !slices.Contains(pools, o.Pool) {
				pools = append(pools, o.Pool)
			}
			continue
		}
		rows++
		if m.State == store.Ready {
			free = append(free, m.Label)
		}
		if len(named) < maxNamed {
			state := fleet.Explain(m, w.ops, fleet.Live{}, w.now)
			if state == "" {
				state = "ready"
			}
			named = append(named, m.Label+" "+state)
		}
	}
	var parts []string
	parts = append(parts, blocked...)
	if rows > 0 {
		list := strings.Join(named, ", ")
		if rows > len(named) {
			list += fmt.Sprintf(" and %d more", rows-len(named))
		}
		parts = append(parts, fmt.Sprintf("%d %s (%s): %s", rows, plural(rows, "machine matches", "machines match"),
			describeNeed(need), list))
	}
	for _, p := range pools {
		if g := fleet.Growing(p, w.inPool[p], w.ops, w.now); g != "" {
			parts = append(parts, g)
		} else if rows == 0 {
			parts = append(parts, fmt.Sprintf("pool %s could serve it and has no machine yet", p))
		}
	}
	if len(free) > 0 && len(blocked) == 0 {
		ahead := 0
		for _, q := range w.queue {
			if q.ID == t.ID {
				break
			}
			ahead++
		}
		parts = append(parts, fmt.Sprintf("%s ready: the next dispatch takes it (%d %s ahead in the queue)",
			free[0], ahead, plural(ahead, "task", "tasks")))
	}
	return strings.Join(parts, "; ")
}

// describeNeed names what a task asks, as its reason shows it.
func describeNeed(n Need) string {
	var parts []string
	if n.Label != "" {
		parts = append(parts, "machine "+n.Label)
	}
	parts = append(parts, n.Tags...)
	if n.Platform != "" {
		parts = append(parts, n.Platform)
	}
	if n.Package != "" {
		parts = append(parts, "package "+n.Package)
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
