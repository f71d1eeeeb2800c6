package fleet_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
)

// A pool follows its demand: up at once (with overprovision), down only
// once the demand has stayed lower for the scale-in delay, never below
// initial_size nor above max_size; the machines deleted are idle ones.
func TestPoolSizeFollowsDemandWithHysteresis(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	c.pool.MaxSize = 8
	var demand atomic.Int32
	const delay = 2 * time.Second
	r := c.reconcilerWith(st, c.driver(t), func(o *fleet.Options) {
		o.Pools[0] = c.pool
		o.Interval, o.ScaleInDelay, o.Overprovision = 100*time.Millisecond, delay, 50
		o.Demand = func(context.Context) (map[string]int, error) {
			return map[string]int{"win10x64": int(demand.Load())}, nil
		}
	})
	stop := run(r)
	defer stop()
	capacity := func() int {
		v, ok := r.LastView("win10x64")
		if !ok || v.Group == nil {
			return -1
		}
		return v.Group.Capacity
	}
	demand.Store(4) // × 1.5 = 6
	poll.Until(t, 20*time.Second, "capacity 6", func() bool { return capacity() == 6 && countReady(t, st) == 6 })
	demand.Store(20) // × 1.5 = 30, max_size 8
	poll.Until(t, 20*time.Second, "capacity 8", func() bool { return capacity() == 8 })

	// The queue empties: the pool holds its size for the delay...
	demand.Store(0)
	low := time.Now()
	passes := r.PassStats().Passes
	poll.Until(t, 20*time.Second, "five passes with no demand", func() bool { return r.PassStats().Passes >= passes+5 })
	if c := capacity(); c != 8 && time.Since(low) < delay {
		t.Fatalf("capacity %d %s after the demand fell: shrunk before the scale-in delay", c, time.Since(low))
	}
	// ...and a burst inside it cancels the shrink.
	demand.Store(5)
	passes = r.PassStats().Passes
	poll.Until(t, 20*time.Second, "two passes with demand", func() bool { return r.PassStats().Passes >= passes+2 })
	demand.Store(0)
	live := func() int {
		ms, _ := st.ListMachines(context.Background(), store.MachineFilter{Pool: "win10x64"})
		n := 0
		for _, m := range ms {
			if m.State != store.Gone {
				n++
			}
		}
		return n
	}
	poll.Until(t, 30*time.Second, "back to initial_size 1, one machine row left", func() bool {
		return capacity() == 1 && live() == 1
	})
	if _, want, _, ok := r.Sizing("win10x64"); !ok || want != 1 {
		t.Errorf("sizing says %d, want 1", want)
	}
}
