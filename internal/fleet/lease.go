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

// awaitLease blocks until this node holds the lease and returns its term, or
// 0 when ctx ends. While another node holds it, this one is a follower: ready
// to serve, not reconciling.
func (r *Reconciler) awaitLease(ctx context.Context) int64 {
	following := false
	for {
		term, ok, err := r.tryLease(ctx, 0)
		switch {
		case err != nil:
			r.log.Warn("lease", "err", err)
		case ok:
			r.log.Info("this node reconciles the provider's pools", "lease", r.leaseName(), "holder", r.o.Holder)
			return term
		case !following:
			following = true
			r.log.Info("another node reconciles the provider's pools; standing by", "lease", r.leaseName())
			r.firstOnce.Do(func() { close(r.firstPass) })
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(r.o.LeaseTTL / 3):
		}
	}
}

// keepLease renews the lease every third of its TTL and calls lose when it
// is taken by another node or cannot be renewed in time.
func (r *Reconciler) keepLease(ctx context.Context, term int64, lose context.CancelFunc) {
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
		_, ok, err := r.tryLease(ctx, term)
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

// tryLease elects this node (term 0) or re-elects it in term.
func (r *Reconciler) tryLease(ctx context.Context, term int64) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.o.LeaseTTL/3)
	defer cancel()
	if term == 0 {
		return r.o.Store.ElectLeader(ctx, r.leaseName(), r.o.Holder, r.o.LeaseTTL)
	}
	ok, err := r.o.Store.ReelectLeader(ctx, r.leaseName(), r.o.Holder, term, r.o.LeaseTTL)
	return term, ok, err
}
