package fleet

import (
	"context"
	"time"
)

// Leadership: one node at a time reconciles a provider's pools. The lease is
// a row in the shared database, taken and renewed by compare-and-set; a node
// that cannot renew it within its TTL stops reconciling before another can
// take it over.

func (r *Reconciler) leaseName() string { return "reconciler/" + r.ProviderName() }

// awaitLease blocks until this node holds the lease, or ctx ends (false).
// While another node holds it, this one is a follower: ready to serve, not
// reconciling.
func (r *Reconciler) awaitLease(ctx context.Context) bool {
	following := false
	for {
		ok, err := r.tryLease(ctx)
		switch {
		case err != nil:
			r.log.Warn("lease", "err", err)
		case ok:
			r.log.Info("this node reconciles the provider's pools", "lease", r.leaseName(), "holder", r.o.Holder)
			return true
		case !following:
			following = true
			r.log.Info("another node reconciles the provider's pools; standing by", "lease", r.leaseName())
			r.firstOnce.Do(func() { close(r.firstPass) })
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(r.o.LeaseTTL / 3):
		}
	}
}

// keepLease renews the lease every third of its TTL and calls lose when it
// is taken by another node or cannot be renewed in time.
func (r *Reconciler) keepLease(ctx context.Context, lose context.CancelFunc) {
	defer lose()
	renewed := time.Now()
	tick := time.NewTicker(r.o.LeaseTTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ok, err := r.tryLease(ctx)
		switch {
		case err == nil && ok:
			renewed = time.Now()
		case err == nil:
			r.log.Error("lease taken by another node; stopping reconciling", "lease", r.leaseName())
			return
		case time.Since(renewed) > r.o.LeaseTTL*2/3:
			r.log.Error("lease not renewed in time; stopping reconciling", "lease", r.leaseName(), "err", err)
			return
		default:
			r.log.Warn("renew lease", "err", err)
		}
	}
}

func (r *Reconciler) tryLease(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.o.LeaseTTL/3)
	defer cancel()
	return r.o.Store.TryLease(ctx, r.leaseName(), r.o.Holder, r.o.LeaseTTL)
}
