package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/sandfleet/sandfleet/internal/leadership"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Trigger asks for a pass soon (an event: a machine released, an operation done).
func (r *Reconciler) Trigger() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// wakeAt asks for a pass no later than t.
func (r *Reconciler) wakeAt(t time.Time) {
	r.mu.Lock()
	if r.nextWake.IsZero() || t.Before(r.nextWake) {
		r.nextWake = t
	}
	r.mu.Unlock()
}

// nextPass is when the loop passes next, absent triggers: the earliest wake
// asked for, or the safety-net interval.
func (r *Reconciler) nextPass() time.Duration {
	next := r.o.Interval
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.nextWake.IsZero() {
		if d := time.Until(r.nextWake); d < next {
			next = max(d, 10*time.Millisecond)
		}
		r.nextWake = time.Time{}
	}
	return next
}

// Run reconciles until ctx ends: it registers the pools, resumes journaled
// operations, then passes on every trigger and every interval. With a Holder
// it first wins the provider's lease (package leadership), so that of several
// nodes sharing a database one reconciles; the others stand by and take over
// when its lease lapses or it resigns. Operations still in flight when Run
// ends, or the lease is lost, stay in the journal for the next leader to
// resume.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.o.Holder == "" {
		r.lead(ctx)
		return nil
	}
	el, err := leadership.New(r.o.Store, leadership.Config{
		Name: "reconciler/" + r.ProviderName(), Holder: r.o.Holder, TTL: r.o.LeaseTTL, Logger: r.log,
	})
	if err != nil {
		return fmt.Errorf("leadership: %w", err)
	}
	// A standby is ready: it serves the API from the shared tables.
	el.Run(ctx, r.lead, func() { r.firstOnce.Do(func() { close(r.firstPass) }) })
	return nil
}

// lead is one term of reconciling, until ctx ends.
func (r *Reconciler) lead(ctx context.Context) {
	r.mu.Lock()
	r.base = ctx
	r.mu.Unlock()
	defer r.opsWG.Wait()
	// A database that is down at start is waited for, not given up on: the
	// daemon keeps serving and /readyz says why it is not ready.
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		err := r.Start(ctx)
		if err == nil {
			break
		}
		r.log.Error("reconciler start; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
	if r.o.WaitForAgent && r.o.Agent != nil {
		r.opsWG.Go(func() { r.watchAgents(ctx) })
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.wake:
		}
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("reconcile pass", "err", err)
		}
		timer.Stop()
		timer.Reset(r.nextPass())
	}
}

// Start records the configured pools and resumes unfinished operations. Run
// calls it; tests and benchmarks that drive Pass by hand call it once.
func (r *Reconciler) Start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.OpTimeout)
	defer cancel()
	for _, p := range r.o.Pools {
		err := r.o.Store.UpsertPool(ctx, store.Pool{
			Name: p.Name, Provider: p.Provider, Platform: p.Platform, Arch: p.Arch,
			Tags: p.Tags, Image: p.Image, InitialSize: p.InitialSize, MaxSize: p.MaxSize,
			Reserved: p.Reserved,
		})
		if err != nil {
			return fmt.Errorf("register pool %s: %w", p.Name, err)
		}
	}
	stored, err := r.o.Store.ListPools(ctx)
	if err != nil {
		return fmt.Errorf("read pools: %w", err)
	}
	var retiring []string
	for _, p := range stored {
		if _, configured := r.pools[p.Name]; !configured && p.Provider == r.ProviderName() {
			retiring = append(retiring, p.Name)
		}
	}
	r.mu.Lock()
	r.retiring = retiring
	r.mu.Unlock()
	return r.resume(ctx)
}

// Pass runs one reconcile over every pool. While the provider is throttled it
// does nothing: the last good view stands and nothing is written.
func (r *Reconciler) Pass(ctx context.Context) error {
	r.passMu.Lock()
	defer r.passMu.Unlock()
	if r.skipThrottled() {
		r.passes.Add(1)
		r.skipped.Add(1)
		return nil
	}
	// Bounded: a hung database or provider connection must not hold passMu.
	ctx, cancel := context.WithTimeout(ctx, r.o.OpTimeout)
	defer cancel()
	start := time.Now()
	err := r.pass(ctx)
	r.passes.Add(1)
	r.lastPassNanos.Store(int64(time.Since(start)))
	outcome := "ok"
	if err != nil {
		outcome = "failed"
	}
	r.o.Metrics.Pass(r.ProviderName(), outcome, time.Since(start))
	switch {
	case err != nil:
		r.failed.Add(1)
	case !r.skipThrottled():
		// Ready means the provider was read, not merely asked and refused.
		r.firstOnce.Do(func() { close(r.firstPass) })
	}
	return err
}
