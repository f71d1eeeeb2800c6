package fleet

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// A pool's size follows its demand (CAPE az.py's monitor, event-driven):
//
//	wanted = round(demand × (1 + overprovision/100)), at least initial_size,
//	at most max_size; growth bounded by total_machines_limit across the
//	provider's pools and by the provider's room (core quota, subnet).
//
// It grows as soon as a pass sees the demand (the scheduler triggers one
// when a task waits for a pool that could grow). It shrinks only once the
// wanted size has stayed below the pool's size for ScaleInDelay, and then
// only by machines no task holds, chosen by sandfleet and deleted by id:
// dirty ones first (a machine released by a shrinking pool is deleted, not
// reimaged), then idle ones, newest first.

// roomFresh is how long a read of the provider's room is used: quota and
// subnet reads cost ARM calls, and a pool that grows asks on every pass.
const roomFresh = 2 * time.Second

// scaling is what sizing pools remembers between passes.
type scaling struct {
	mu      sync.Mutex
	demand  map[string]int       // by pool, from the last read; nil before one
	low     map[string]time.Time // since when a pool has been wanted smaller than it is
	limited map[string]string    // why a pool stops short of its wanted size
	decided map[string]sizing    // the last size decided, by pool
	room    int                  // machines the provider has room for, less those granted since the read
	roomWhy string
	roomAt  time.Time
}

// readDemand reads the demand once per pass; on error the last one stands.
func (r *Reconciler) readDemand(ctx context.Context) {
	if r.o.Demand == nil {
		return
	}
	d, err := r.o.Demand(ctx)
	if err != nil {
		r.log.Warn("read the demand for machines; keeping the last one", "err", err)
		return
	}
	r.scale.mu.Lock()
	r.scale.demand = d
	r.scale.mu.Unlock()
}

// Sizing says what a pool's size is decided from: its demand, the size
// last decided (ok false before one), and why it stops short of what its
// demand wants ("" when nothing bounds it).
func (r *Reconciler) Sizing(pool string) (demand, want int, limitedBy string, ok bool) {
	r.scale.mu.Lock()
	defer r.scale.mu.Unlock()
	d, ok := r.scale.decided[pool]
	return r.scale.demand[pool], d.want, r.scale.limited[pool], ok
}

// sizing is a pool's size decided for this pass.
type sizing struct {
	want   int // the capacity to reach
	excess int // machines to delete to reach it, beyond deletes under way
}

// size decides how big p should be now, given its group's capacity and the
// plan of its machines.
func (r *Reconciler) size(ctx context.Context, p config.Pool, capacity int, plan []pair) sizing {
	want, demand := r.wanted(p, capacity)
	now := time.Now()
	// Hold a shrink until the pool has been wanted smaller for the delay;
	// above max_size it shrinks at once.
	if floor := min(capacity, maxOr(p.MaxSize, capacity)); want < floor {
		r.scale.mu.Lock()
		since, ok := r.scale.low[p.Name]
		if !ok {
			since = now
			r.scale.low[p.Name] = now
		}
		r.scale.mu.Unlock()
		if due := since.Add(r.o.ScaleInDelay); now.Before(due) {
			r.wakeAt(due)
			want = floor
		}
	} else {
		r.scale.mu.Lock()
		delete(r.scale.low, p.Name)
		r.scale.mu.Unlock()
	}
	why := ""
	if want > capacity {
		want, why = r.bound(ctx, p, capacity, want)
	}
	r.scale.mu.Lock()
	if why == "" {
		delete(r.scale.limited, p.Name)
	} else {
		if r.scale.limited[p.Name] != why {
			r.log.Warn("pool cannot grow to its demand", "pool", p.Name, "demand", demand, "size", want, "why", why)
		}
		r.scale.limited[p.Name] = why
	}
	r.scale.mu.Unlock()
	deleting := 0
	for _, x := range plan {
		if x.action == Delete || x.action == Replace || (x.machine != nil && x.machine.State == store.Deleting) ||
			(x.inst != nil && x.inst.State == provider.InstanceDeleting) {
			deleting++
		}
	}
	out := sizing{want: want, excess: max(0, capacity-deleting-want)}
	r.scale.mu.Lock()
	r.scale.decided[p.Name] = out
	r.scale.mu.Unlock()
	return out
}

// wanted is the size p's demand asks for, within initial_size and
// max_size; without a demand reader, the pool keeps its size.
func (r *Reconciler) wanted(p config.Pool, capacity int) (want, demand int) {
	r.scale.mu.Lock()
	d, known := r.scale.demand[p.Name], r.scale.demand != nil
	r.scale.mu.Unlock()
	switch {
	case !known:
		want = max(capacity, p.InitialSize)
	case d > 0:
		want = max(p.InitialSize, int(math.Round(float64(d)*(1+float64(r.o.Overprovision)/100))))
	default:
		want = p.InitialSize
	}
	if p.MaxSize > 0 {
		want = min(want, p.MaxSize)
	}
	return want, d
}

func maxOr(n, otherwise int) int {
	if n > 0 {
		return n
	}
	return otherwise
}

// bound limits growth from capacity to want by total_machines_limit and by
// the provider's room, saying what bounds it.
func (r *Reconciler) bound(ctx context.Context, p config.Pool, capacity, want int) (int, string) {
	grow, why := want-capacity, ""
	if limit := r.o.TotalMachinesLimit; limit > 0 {
		total := 0
		r.mu.Lock()
		for _, q := range r.o.Pools {
			if v, ok := r.views[q.Name]; ok && v.Group != nil {
				total += v.Group.Capacity
			}
		}
		r.mu.Unlock()
		if free := max(0, limit-total); grow > free {
			grow, why = free, fmt.Sprintf("azure.total_machines_limit %d reached: %d machines in all pools", limit, total)
		}
	}
	if room, roomWhy, ok := r.room(ctx); ok && grow > room {
		grow, why = max(0, room), roomWhy
	}
	r.scale.mu.Lock()
	r.scale.room -= grow
	r.scale.mu.Unlock()
	return capacity + grow, why
}

// room is how many more machines the provider has room for, read at most
// every roomFresh; ok is false when the provider has no such bound or the
// read failed (growth is then bounded by the other limits alone).
func (r *Reconciler) room(ctx context.Context) (int, string, bool) {
	rm, ok := r.o.Provider.(provider.Room)
	if !ok {
		return 0, "", false
	}
	r.scale.mu.Lock()
	fresh := time.Since(r.scale.roomAt) < roomFresh
	n, why := r.scale.room, r.scale.roomWhy
	r.scale.mu.Unlock()
	if fresh {
		return n, why, true
	}
	inUse := 0
	r.mu.Lock()
	for _, q := range r.o.Pools {
		if v, ok := r.views[q.Name]; ok {
			inUse += len(v.Instances)
		}
	}
	r.mu.Unlock()
	n, why, err := rm.Room(ctx, inUse)
	if err != nil {
		r.noteThrottle(err)
		r.log.Warn("read the provider's room for machines (quota, subnet)", "err", err)
		return 0, "", false
	}
	r.scale.mu.Lock()
	r.scale.room, r.scale.roomWhy, r.scale.roomAt = n, why, time.Now()
	r.scale.mu.Unlock()
	return n, why, true
}
