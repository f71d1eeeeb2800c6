package sched

import (
	"context"
	"errors"

	"github.com/sandfleet/sandfleet/internal/store"
)

// demandScan bounds the pending tasks one demand read looks at: a queue
// deeper than this already wants every pool at its max_size.
const demandScan = 10000

// Demand counts, by pool, the tasks it is wanted for: the analyses running
// on its machines, and the pending tasks it could serve — each counted once,
// for the pool the matching ranks first, or for the pool of the machine it
// names. The fleet sizes pools by it (fleet.Options.Demand).
func (s *Scheduler) Demand(ctx context.Context) (map[string]int, error) {
	out := make(map[string]int, len(s.o.Pools))
	for _, p := range s.o.Pools {
		out[p.Name] = 0
	}
	leased, err := s.o.Store.ListMachines(ctx, store.MachineFilter{States: []store.MachineState{store.Leased}})
	if err != nil {
		return nil, err
	}
	for _, m := range leased {
		out[m.Pool]++
	}
	pending, err := s.o.Store.PendingTasks(ctx, demandScan)
	if err != nil {
		return nil, err
	}
	offers := PoolOffers(s.o.Pools)
	pools := map[string]string{} // by need: the pool that would serve it
	named := map[string]string{} // by label: the machine's pool
	for _, t := range pending {
		need := needOf(t)
		if need.Label != "" {
			pool, seen := named[need.Label]
			if !seen {
				m, err := s.o.Store.GetMachine(ctx, need.Label)
				switch {
				case errors.Is(err, store.ErrNotFound):
				case err != nil:
					return nil, err
				default:
					pool = m.Pool
				}
				named[need.Label] = pool
			}
			if pool != "" {
				out[pool]++
			}
			continue
		}
		key := need.key()
		pool, seen := pools[key]
		if !seen {
			if best, _ := s.match.Candidates(need, offers); len(best) > 0 {
				pool = best[0].Pool
			}
			pools[key] = pool
		}
		if pool != "" {
			out[pool]++
		}
	}
	return out, nil
}
