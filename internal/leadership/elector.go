// Package leadership elects, among the sandfleet nodes that share a database,
// the one node that does a job only one may do at a time (reconciling a
// provider's pools), and keeps it leading only while it can be sure it is.
//
// The lease is a row in the database (store.Store's ElectLeader,
// ReelectLeader and ResignLeader): a holder, a term that grows with every
// election, and an expiry set by the database's clock. An Elector campaigns
// for it and, while elected, runs the caller's lead function under a context
// that ends when this node can no longer be sure of the lease.
//
// Why two nodes never lead at once. An election or re-election attempt that
// starts at t0 cannot reach the database before t0, so the lease it grants
// expires no earlier than t0+TTL, and no other node can be elected before
// then. The Elector trusts the term until t0+TTL−Margin and ends lead's
// context by then unless a later attempt has succeeded. Trust runs from the
// attempt's start, not its reply: a reply can be arbitrarily late, and the
// database set the expiry when the request arrived, not when the answer did.
// Margin covers the time lead needs to stop once its context ends, and any
// difference in rate between this node's clock and the database's. Trust is a
// duration on this node's monotonic clock; it is never compared with the
// database's time, so a node whose wall clock is off by any amount is as safe
// as any other.
//
// Terms keep the old from acting for the new. Re-election and resignation
// name the term they act on, so a node whose term has ended (its lease lapsed
// and taken, or taken back by itself restarted under the same id) can neither
// extend nor free its successor's lease, and a re-election answered "not
// elected" ends its term at once.
package leadership

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Store holds the leases: the part of store.Store an Elector uses. Its calls
// must return when their context ends.
type Store interface {
	ElectLeader(ctx context.Context, name, holder string, ttl time.Duration) (term int64, elected bool, err error)
	ReelectLeader(ctx context.Context, name, holder string, term int64, ttl time.Duration) (bool, error)
	ResignLeader(ctx context.Context, name, holder string, term int64) error
}

// Config describes one lease and this node's part in it.
type Config struct {
	Name   string // the lease, e.g. "reconciler/azure"
	Holder string // this node's id, the same across its restarts
	// TTL is how long an election or re-election holds the lease. The leader
	// renews it every TTL/3; others campaign about as often.
	TTL time.Duration
	// Margin is how long before its lease can expire the leader stops
	// trusting it: the time lead has to stop. Zero means TTL/10.
	Margin time.Duration
	Logger *slog.Logger // nil: slog.Default()
}

// Elector campaigns for one lease, in one Run at a time.
type Elector struct {
	st  Store
	c   Config
	log *slog.Logger

	// now is the clock trust is measured on; only its durations matter.
	now func() time.Time
	// jitter spreads campaigns so that followers do not stand in step.
	jitter func(max time.Duration) time.Duration
	// calls are store calls still running, waited for before Run returns.
	calls sync.WaitGroup
}

// New returns an Elector for c's lease in st.
func New(st Store, c Config) (*Elector, error) {
	if c.Margin == 0 {
		c.Margin = c.TTL / 10
	}
	switch {
	case c.Name == "" || c.Holder == "":
		return nil, errors.New("leadership: empty lease name or holder")
	case c.TTL <= 0 || c.Margin < 0:
		return nil, errors.New("leadership: TTL must be positive, Margin not negative")
	case c.TTL-c.Margin <= c.TTL/3:
		// Trust would run out before the first renewal.
		return nil, errors.New("leadership: Margin must be less than 2/3 of TTL")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Elector{
		st:     st,
		c:      c,
		log:    c.Logger.With("lease", c.Name, "holder", c.Holder),
		now:    time.Now,
		jitter: randomJitter,
	}, nil
}

func randomJitter(max time.Duration) time.Duration { return rand.N(max + 1) }

// Run campaigns until ctx ends. Each time this node is elected, Run calls
// lead with a context that ends with the term: when ctx ends, when the lease
// turns out to be taken, or when it was not renewed in time. lead must stop
// acting as leader within Margin of that and return; Run waits for it, and
// lead returning early ends the term. The first time Run finds another node
// leading, it calls follow (unless nil), so that the caller can report itself
// ready as a standby.
//
// Run returns once ctx has ended, lead has returned, the lease is resigned
// and no store call of its is running.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context), follow func()) {
	defer e.calls.Wait()
	standBy := func() {
		if follow != nil {
			follow()
			follow = nil
		}
	}
	for first := true; ; first = false {
		// After a term ends, wait a campaign interval before standing again:
		// a node that just lost its lease is likely the one in trouble.
		start, term, ok := e.campaign(ctx, !first, standBy)
		if !ok {
			return
		}
		e.hold(ctx, start, term, lead)
		if ctx.Err() != nil {
			return
		}
	}
}

// campaign stands for election, at once unless wait, until this node wins a
// term it can still trust (returning the attempt's start) or ctx ends.
func (e *Elector) campaign(ctx context.Context, wait bool, standBy func()) (time.Time, int64, bool) {
	standing := false
	for {
		if wait {
			select {
			case <-ctx.Done():
				return time.Time{}, 0, false
			case <-time.After(e.c.TTL/3 + e.jitter(e.c.TTL/6)):
			}
		}
		wait = true
		start := e.now()
		term, elected, err := e.elect(ctx)
		switch {
		case elected && ctx.Err() == nil && e.trustLeft(start) > 0:
			return start, term, true
		case elected:
			// Won just as Run stopped, or answered too late to act on: give
			// it up rather than hold a lease no one uses.
			if ctx.Err() == nil {
				e.log.Warn("elected too late to lead; resigning", "term", term, "took", e.now().Sub(start))
			}
			e.resign(ctx, term)
		case ctx.Err() != nil:
			return time.Time{}, 0, false
		case err != nil:
			e.log.Warn("campaign for leadership", "err", err)
		case !standing:
			standing = true
			e.log.Info("another node leads; standing by")
			standBy()
		}
	}
}

// reply is the outcome of one re-election attempt.
type reply struct {
	start time.Time
	ok    bool
	err   error
}

// hold leads for one term, won by an attempt that started at start, and
// returns once lead has returned.
func (e *Elector) hold(ctx context.Context, start time.Time, term int64, lead func(context.Context)) {
	log := e.log.With("term", term)
	log.Info("elected leader")

	leading, stop := context.WithCancel(ctx)
	defer stop()
	led := make(chan struct{})
	go func() {
		defer close(led)
		lead(leading)
	}()

	// Renewals still running when the term ends are abandoned.
	calls, endCalls := context.WithCancel(ctx)
	defer endCalls()
	replies := make(chan reply, 1)

	trust := time.NewTimer(e.trustLeft(start))
	defer trust.Stop()
	renew := time.NewTimer(e.renewIn(start))
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			stop()
			<-led
			// Only now that lead has stopped may another node take over.
			e.resign(ctx, term)
			return
		case <-led:
			log.Warn("lead returned while leading; ending the term")
			e.resign(ctx, term)
			return
		case <-trust.C:
			log.Error("lost leadership: lease not renewed in time")
			stop()
			<-led
			return
		case <-renew.C:
			at := e.now()
			e.calls.Go(func() {
				ok, err := e.reelect(calls, term)
				replies <- reply{at, ok, err}
			})
		case r := <-replies:
			switch {
			case r.err != nil:
				log.Warn("renew lease; retrying", "err", r.err, "trust_left", e.trustLeft(start))
				renew.Reset(e.c.TTL / 10)
			case !r.ok:
				log.Error("lost leadership: lease taken over")
				stop()
				<-led
				return
			default:
				start = r.start
				trust.Reset(e.trustLeft(start))
				renew.Reset(e.renewIn(start))
			}
		}
	}
}

// trustLeft is how much longer a term (re-)won by an attempt that started at
// start may be acted on.
func (e *Elector) trustLeft(start time.Time) time.Duration {
	return start.Add(e.c.TTL - e.c.Margin).Sub(e.now())
}

// renewIn is when to renew a lease (re-)won by an attempt that started at
// start: a third of the way through, leaving two tries before trust runs out.
func (e *Elector) renewIn(start time.Time) time.Duration {
	return start.Add(e.c.TTL / 3).Sub(e.now())
}

// Each attempt is bounded by the trust it could give: a reply later than
// that is of no use.

func (e *Elector) elect(ctx context.Context) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.c.TTL-e.c.Margin)
	defer cancel()
	return e.st.ElectLeader(ctx, e.c.Name, e.c.Holder, e.c.TTL)
}

func (e *Elector) reelect(ctx context.Context, term int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.c.TTL-e.c.Margin)
	defer cancel()
	return e.st.ReelectLeader(ctx, e.c.Name, e.c.Holder, term, e.c.TTL)
}

// resign gives up term so that another node can be elected at once rather
// than after the lease lapses. It outlives ctx, which has usually ended, but
// not by long: failing, the lease lapses anyway.
func (e *Elector) resign(ctx context.Context, term int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(e.c.TTL, 5*time.Second))
	defer cancel()
	if err := e.st.ResignLeader(ctx, e.c.Name, e.c.Holder, term); err != nil {
		e.log.Warn("resign leadership", "term", term, "err", err)
		return
	}
	e.log.Info("resigned leadership", "term", term)
}
