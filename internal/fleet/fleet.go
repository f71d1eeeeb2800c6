package fleet

import (
	"context"
	"fmt"
	"sync"

	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Fleet is every reconciler of a daemon, one per provider.
type Fleet struct {
	recs  []*Reconciler
	ready chan struct{}
	once  sync.Once
}

// NewFleet groups reconcilers.
func NewFleet(recs ...*Reconciler) *Fleet {
	return &Fleet{recs: recs, ready: make(chan struct{})}
}

// Reconcilers returns the fleet's reconcilers.
func (f *Fleet) Reconcilers() []*Reconciler { return f.recs }

// Run runs every reconciler until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.recs))
	for i, r := range f.recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Run(ctx)
		}()
	}
	go func() {
		for _, r := range f.recs {
			select {
			case <-r.firstPass:
			case <-ctx.Done():
				return
			}
		}
		f.once.Do(func() { close(f.ready) })
	}()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Ready is closed once every reconciler has finished its first pass.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// Trigger asks every reconciler for a pass.
func (f *Fleet) Trigger() {
	for _, r := range f.recs {
		r.Trigger()
	}
}

// Verify reads a machine's instance fresh from its provider: nil if it
// runs; an error wrapping provider.ErrNotFound if it does not exist; a
// *provider.ThrottledError if the provider cannot be asked now; another
// error saying what the instance is doing otherwise.
func (f *Fleet) Verify(ctx context.Context, m store.Machine) error {
	for _, r := range f.recs {
		if _, mine := r.pools[m.Pool]; !mine {
			continue
		}
		if throttled, why := r.Throttled(); throttled {
			return &provider.ThrottledError{Op: why}
		}
		in, err := r.o.Provider.GetInstance(ctx, m.Pool, m.InstanceID)
		if err != nil {
			r.noteThrottle(err)
			return err
		}
		if in.State != provider.InstanceRunning {
			return fmt.Errorf("instance %s is %s (%s)", m.InstanceID, in.State, in.Raw)
		}
		return nil
	}
	return fmt.Errorf("pool %s: %w: no configured pool", m.Pool, provider.ErrNotFound)
}

// Check compares database and providers now, every pool.
func (f *Fleet) Check(ctx context.Context) (Report, error) {
	rep := Report{Consistent: true, Pools: []PoolReport{}}
	for _, r := range f.recs {
		ps, err := r.Check(ctx)
		if err != nil {
			return Report{}, err
		}
		for _, p := range ps {
			rep.Consistent = rep.Consistent && p.Consistent()
			rep.Pools = append(rep.Pools, p)
		}
	}
	return rep, nil
}

// Status describes every pool.
func (f *Fleet) Status(ctx context.Context) ([]PoolStatus, error) {
	out := []PoolStatus{}
	for _, r := range f.recs {
		ps, err := r.Status(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}
