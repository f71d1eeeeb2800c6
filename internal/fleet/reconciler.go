// Package fleet keeps the machine table true to the providers. It owns the
// machine state table (table.go), the level-triggered reconciler that applies
// it, and the operations journal through which every cloud call is issued.
//
// The provider's list of instances is the truth about what exists; the database
// is the truth about what each instance is doing. A pass reads both and
// converges. Startup is one pass, after resuming journaled operations; nothing
// is ever wiped. No database transaction is open across a provider call: every
// store method is its own short transaction.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// AgentChecker says whether a machine's guest agent answers.
type AgentChecker interface {
	Alive(ctx context.Context, ip string) bool
}

// Options configure a Reconciler for the pools of one provider.
type Options struct {
	Store    store.Store
	Provider provider.Provider
	// Pools are the configured pools this provider serves.
	Pools []config.Pool
	// Interval is the safety-net period between passes.
	Interval time.Duration
	// OpTimeout bounds every provider operation (timeouts.cloud_operation).
	OpTimeout time.Duration
	// WaitForAgent keeps new machines provisioning until their agent answers.
	WaitForAgent bool
	Agent        AgentChecker
	// ProvisionTimeout replaces an instance whose agent has not answered this
	// long after it appeared or was reimaged (timeouts.vm_state); 0 = never.
	ProvisionTimeout time.Duration
	// ReimageWindow batches reimages: a batch goes once its oldest dirty
	// machine has waited this long.
	ReimageWindow time.Duration
	// MaxConcurrentOps caps operations in flight on this provider.
	MaxConcurrentOps int
	// AdoptExisting adopts a same-named scale set without the owner tag; else
	// it is deleted and recreated.
	AdoptExisting bool
	// MultipleDeployments leaves owned but unconfigured groups alone.
	MultipleDeployments bool
	// Holder names this node for the provider's lease; "" runs without one
	// (a single node, or a test).
	Holder string
	// LeaseTTL is how long a lease lasts unrenewed (default 15 s): how long
	// a dead leader's pools wait for another node.
	LeaseTTL time.Duration
	// Orphans: this reconciler also resumes journaled operations of pools that
	// are no longer configured (the cloud provider's, not the static one's).
	Orphans          bool
	ResultServerIP   string
	ResultServerPort int
	Logger           *slog.Logger
}

// Reconciler converges the machine table of one provider's pools.
type Reconciler struct {
	o     Options
	log   *slog.Logger
	pools map[string]config.Pool
	wake  chan struct{}
	// firstPass is closed after the first pass that read the provider.
	firstPass chan struct{}
	firstOnce sync.Once
	opsWG     sync.WaitGroup
	passMu    sync.Mutex // one pass at a time

	passes, failed, skipped, lastPassNanos atomic.Int64

	mu              sync.Mutex
	active          int              // operations in flight
	reimageFailures map[string]int   // label → consecutive failed reimages
	inflight        map[string]int64 // "pool/instanceID" or "pool/" (group op) → operation id
	throttledUntil  time.Time
	throttleReason  string
	views           map[string]View
	retiring        []string // pools of this provider no longer configured
	nextWake        time.Time
	base            context.Context
}

// View is the last good read of one pool.
type View struct {
	At        time.Time
	Group     *provider.Group
	Instances []provider.Instance
}

// New returns a reconciler; Run starts it.
func New(o Options) *Reconciler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// Zero values take the configuration's defaults: one place for them.
	def := config.Default()
	if o.MaxConcurrentOps < 1 {
		o.MaxConcurrentOps = def.Azure.MaxConcurrentOperations
	}
	if o.Interval <= 0 {
		o.Interval = def.Fleet.ReconcileInterval
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = def.Timeouts.CloudOperation
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = def.Fleet.LeaseTTL
	}
	r := &Reconciler{
		o:               o,
		log:             o.Logger,
		pools:           map[string]config.Pool{},
		wake:            make(chan struct{}, 1),
		firstPass:       make(chan struct{}),
		inflight:        map[string]int64{},
		reimageFailures: map[string]int{},
		views:           map[string]View{},
		base:            context.Background(),
	}
	for _, p := range o.Pools {
		r.pools[p.Name] = p
	}
	return r
}

// Trigger asks for a pass soon (an event: a machine released, an operation done).
func (r *Reconciler) Trigger() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx ends: it registers the pools, resumes journaled
// operations, then passes on every trigger and every interval. With a Holder
// it first takes the provider's lease, so that of several nodes sharing a
// database one reconciles; the others stand by and take over when its lease
// lapses. Operations still in flight when Run ends, or the lease is lost,
// stay in the journal for the next leader to resume.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.o.Holder == "" {
		r.lead(ctx)
		return nil
	}
	var held int64 // the last term won
	for ctx.Err() == nil {
		t := r.awaitLease(ctx)
		if t == 0 {
			break
		}
		held = t
		term, lose := context.WithCancel(ctx)
		go r.keepLease(term, held, lose)
		r.lead(term)
		lose()
	}
	// Hand over at once on shutdown rather than after the lease lapses.
	rel, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.o.Store.ResignLeader(rel, r.leaseName(), r.o.Holder, held); err != nil {
		r.log.Warn("release lease", "err", err)
	}
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
		next := r.o.Interval
		r.mu.Lock()
		if !r.nextWake.IsZero() {
			if d := time.Until(r.nextWake); d < next {
				next = max(d, 10*time.Millisecond)
			}
			r.nextWake = time.Time{}
		}
		r.mu.Unlock()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
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

// wakeAt asks for a pass no later than t.
func (r *Reconciler) wakeAt(t time.Time) {
	r.mu.Lock()
	if r.nextWake.IsZero() || t.Before(r.nextWake) {
		r.nextWake = t
	}
	r.mu.Unlock()
}

// Throttled reports whether the provider asked us to wait, and why.
func (r *Reconciler) Throttled() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Now().Before(r.throttledUntil) {
		return true, r.throttleReason
	}
	return false, ""
}

// throttle notes a throttling error and logs it once per window. It reports
// whether err was one.
func (r *Reconciler) throttle(err error) bool {
	t, ok := provider.AsThrottled(err)
	if !ok {
		return false
	}
	now := time.Now()
	until := now.Add(t.RetryAfter)
	r.mu.Lock()
	newWindow := !now.Before(r.throttledUntil)
	if until.After(r.throttledUntil) {
		r.throttledUntil = until
		r.throttleReason = fmt.Sprintf("provider throttled (%s) until %s", t.Op, until.UTC().Format(time.RFC3339))
	}
	r.mu.Unlock()
	if newWindow {
		r.log.Warn("provider throttled; keeping last view, no writes until retry-after",
			"op", t.Op, "retry_after", t.RetryAfter)
	}
	r.wakeAt(until)
	return true
}

// LastView returns the last good provider read of a pool.
func (r *Reconciler) LastView(pool string) (View, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.views[pool]
	return v, ok
}

// ProviderName names the provider kind of this reconciler's pools.
func (r *Reconciler) ProviderName() string {
	if len(r.o.Pools) == 0 {
		return ""
	}
	return r.o.Pools[0].Provider
}

// Pools returns the configured pools of this reconciler.
func (r *Reconciler) Pools() []config.Pool { return r.o.Pools }

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
	switch {
	case err != nil:
		r.failed.Add(1)
	case !r.skipThrottled():
		// Ready means the provider was read, not merely asked and refused.
		r.firstOnce.Do(func() { close(r.firstPass) })
	}
	return err
}

// skipThrottled reports whether the provider asked us to wait, and if so
// makes sure a pass runs when the window ends.
func (r *Reconciler) skipThrottled() bool {
	r.mu.Lock()
	until := r.throttledUntil
	r.mu.Unlock()
	if time.Now().Before(until) {
		r.wakeAt(until)
		return true
	}
	return false
}

// PassStats counts passes, for /metrics.
type PassStats struct {
	Passes, Failed, Skipped int64
	LastDuration            time.Duration
}

// PassStats returns pass counters.
func (r *Reconciler) PassStats() PassStats {
	return PassStats{Passes: r.passes.Load(), Failed: r.failed.Load(), Skipped: r.skipped.Load(),
		LastDuration: time.Duration(r.lastPassNanos.Load())}
}

func (r *Reconciler) pass(ctx context.Context) error {
	groups, err := r.o.Provider.ListGroups(ctx)
	if err != nil {
		if r.throttle(err) {
			return nil
		}
		return fmt.Errorf("list groups: %w", err)
	}
	byName := map[string]provider.Group{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	var errs []error
	for _, p := range r.o.Pools {
		if t, _ := r.Throttled(); t {
			return nil // a call in this pass was throttled: stop calling
		}
		var gp *provider.Group
		if g, ok := byName[p.Name]; ok {
			gp = &g
		}
		if err := r.reconcilePool(ctx, p, gp); err != nil {
			if r.throttle(err) {
				return nil
			}
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Name, err))
		}
	}
	for _, g := range groups {
		if _, configured := r.pools[g.Name]; configured || !g.Owned || r.o.MultipleDeployments {
			continue
		}
		// Owned by sandfleet but no longer configured: remove it.
		r.startGroupOp(ctx, g.Name, store.OpDeletePool, func(ctx context.Context) (provider.Op, error) {
			return r.o.Provider.DeleteGroup(ctx, g.Name)
		})
	}
	if err := r.retirePools(ctx, byName); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// retirePools marks gone the machines of pools this provider once served but
// no longer configures, once their group is gone too: the scheduler must not
// lease a machine nothing manages.
// The candidates are found once, at Start; a retired pool leaves the list.
func (r *Reconciler) retirePools(ctx context.Context, groups map[string]provider.Group) error {
	r.mu.Lock()
	retiring := slices.Clone(r.retiring)
	r.mu.Unlock()
	for _, name := range retiring {
		if _, exists := groups[name]; exists || r.groupBusy(name) {
			continue
		}
		ms, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: name})
		if err != nil {
			return fmt.Errorf("pool %s: list machines: %w", name, err)
		}
		var ts []store.Transition
		for _, m := range ms {
			if m.State != store.Gone {
				ts = append(ts, store.Transition{Label: m.Label, From: m.State, Version: m.Version, To: store.Gone,
					Cause: "pool no longer configured and its group is gone"})
			}
		}
		if err := r.move(ctx, name, ts); err != nil {
			return err
		}
		r.mu.Lock()
		r.retiring = slices.DeleteFunc(r.retiring, func(n string) bool { return n == name })
		r.mu.Unlock()
	}
	return nil
}

// reconcilePool handles one pool: its group, then each machine.
func (r *Reconciler) reconcilePool(ctx context.Context, p config.Pool, g *provider.Group) error {
	managed := p.Provider != "static"
	if managed {
		switch {
		case g == nil:
			r.startGroupOp(ctx, p.Name, store.OpCreatePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.CreateGroup(ctx, r.spec(p))
			})
		case !g.Owned && !r.o.AdoptExisting:
			r.log.Warn("scale set exists without the owner tag and adopt_existing is off; deleting it", "pool", p.Name)
			r.startGroupOp(ctx, p.Name, store.OpDeletePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.DeleteGroup(ctx, p.Name)
			})
			return nil
		case g.Image != "" && !imageMatches(g.Image, p.Image):
			r.startGroupOp(ctx, p.Name, store.OpUpdatePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.UpdateGroupImage(ctx, r.spec(p))
			})
		}
	}
	var insts []provider.Instance
	if g != nil {
		var err error
		// ErrNotFound here is a read that disagrees with the group list just
		// made; it is an error, not "no instances" (which would mark every
		// machine gone).
		insts, err = r.o.Provider.ListInstances(ctx, p.Name)
		if err != nil {
			return fmt.Errorf("list instances: %w", err)
		}
	} else if r.groupBusy(p.Name) {
		// Being created: nothing to list yet, and nothing to mark gone.
		return nil
	}
	r.mu.Lock()
	r.views[p.Name] = View{At: time.Now(), Group: g, Instances: insts}
	r.mu.Unlock()

	machines, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: p.Name})
	if err != nil {
		return fmt.Errorf("list machines: %w", err)
	}
	plan := r.plan(p, insts, machines)
	if err := r.apply(ctx, p, plan); err != nil {
		return err
	}
	if managed && g != nil {
		r.capacity(ctx, p, g, plan)
	}
	return nil
}

func (r *Reconciler) spec(p config.Pool) provider.PoolSpec {
	return provider.PoolSpec{Name: p.Name, Platform: p.Platform, Arch: p.Arch, Image: p.Image,
		Tags: p.Tags, Capacity: p.InitialSize}
}

// imageMatches compares a group's image reference with a configured image
// name; a reference is a full resource id ending in /images/<name>.
func imageMatches(ref, image string) bool {
	if ref == image {
		return true
	}
	suffix := "/images/" + image
	return len(ref) >= len(suffix) && strings.EqualFold(ref[len(ref)-len(suffix):], suffix)
}

// pair is one row of a plan: an instance, a machine, or both.
type pair struct {
	inst    *provider.Instance
	machine *store.Machine
	action  Action
}

// plan applies the table to every (instance, machine) pair of a pool.
func (r *Reconciler) plan(p config.Pool, insts []provider.Instance, machines []store.Machine) []pair {
	byLabel := make(map[string]*store.Machine, len(machines))
	for i := range machines {
		byLabel[machines[i].Label] = &machines[i]
	}
	out := make([]pair, 0, len(insts)+4)
	matched := make(map[string]bool, len(insts))
	now := time.Now()
	r.mu.Lock() // one look at the operations in flight, not one per instance
	owned := maps.Clone(r.inflight)
	r.mu.Unlock()
	busy := func(id string) bool { _, ok := owned[opKey(p.Name, id)]; return ok }
	for i := range insts {
		in := &insts[i]
		m := byLabel[in.Name]
		matched[in.Name] = true
		state, overdue := none, false
		if m != nil {
			state = m.State
			overdue = p.Provider != "static" && r.o.ProvisionTimeout > 0 &&
				m.State == store.Provisioning && now.Sub(m.StateChangedOn) > r.o.ProvisionTimeout
		}
		out = append(out, pair{inst: in, machine: m, action: decide(seen(in.State), state, busy(in.ID), overdue)})
	}
	for i := range machines {
		m := &machines[i]
		if matched[m.Label] || m.State == store.Gone {
			continue
		}
		out = append(out, pair{machine: m, action: decide(SeenAbsent, m.State, busy(m.InstanceID), false)})
	}
	return out
}

func opKey(pool, instanceID string) string { return pool + "/" + instanceID }

func (r *Reconciler) busy(pool, instanceID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.inflight[opKey(pool, instanceID)]
	return ok
}

func (r *Reconciler) groupBusy(pool string) bool { return r.busy(pool, "") }

// apply carries out a plan's actions, each batch in one short transaction.
func (r *Reconciler) apply(ctx context.Context, p config.Pool, plan []pair) error {
	var (
		register []store.Machine
		moves    []store.Transition
		probe    []pair
		reimage  []*store.Machine
		del      []pair
	)
	for _, x := range plan {
		switch x.action {
		case Register:
			register = append(register, r.newMachine(p, x.inst))
		case Revive:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Gone, Version: x.machine.Version,
				To: store.Dirty, Cause: "instance reappeared in the provider; reimaging before use", IP: &x.inst.IP})
			r.wakeAt(time.Now().Add(r.o.ReimageWindow))
		case Probe:
			probe = append(probe, x)
		case Unready:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Ready, Version: x.machine.Version,
				To: store.Provisioning, Cause: "instance is " + x.inst.Raw})
		case Refresh:
			if x.inst.IP != "" && x.inst.IP != x.machine.IP {
				moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
					To: x.machine.State, Cause: "ip changed", IP: &x.inst.IP})
			}
		case MarkGone:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Gone, Cause: "instance absent from the provider"})
		case Redo:
			moves = append(moves, store.Transition{Label: x.machine.Label, From: store.Reimaging, Version: x.machine.Version,
				To: store.Dirty, Cause: "reimage operation lost; reimaging again"})
		case Reimage:
			reimage = append(reimage, x.machine)
		case DeleteInst:
			del = append(del, x)
		}
	}
	if err := r.register(ctx, p, register); err != nil {
		return err
	}
	if len(probe) > 0 {
		moves = append(moves, r.probe(ctx, probe)...)
	}
	if err := r.move(ctx, p.Name, moves); err != nil {
		return err
	}
	r.reimage(ctx, p, reimage)
	r.deleteInstances(ctx, p, del)
	return nil
}

// register inserts new machines in one transaction. If a label exists
// already — another node registered it, or another pool holds that label —
// it falls back to one insert a machine, so one conflict does not block the
// rest, and names the conflict.
func (r *Reconciler) register(ctx context.Context, p config.Pool, ms []store.Machine) error {
	if len(ms) == 0 {
		return nil
	}
	const cause = "instance found in the provider"
	_, err := r.o.Store.InsertMachines(ctx, ms, cause)
	if errors.Is(err, store.ErrConflict) {
		var added []store.Machine
		for _, m := range ms {
			_, err := r.o.Store.InsertMachines(ctx, []store.Machine{m}, cause)
			switch {
			case errors.Is(err, store.ErrConflict):
				r.log.Warn("label already in use; not registering", "pool", p.Name, "label", m.Label, "instance_id", m.InstanceID)
			case err != nil:
				return fmt.Errorf("register %s: %w", m.Label, err)
			default:
				added = append(added, m)
			}
		}
		ms, err = added, nil
	}
	if err != nil {
		return fmt.Errorf("register %d machines: %w", len(ms), err)
	}
	for _, m := range ms {
		r.log.Info("machine registered", "pool", p.Name, "label", m.Label, "instance_id", m.InstanceID, "ip", m.IP, "state", m.State)
	}
	if len(ms) > 0 && r.o.WaitForAgent {
		r.wakeAt(time.Now().Add(time.Second)) // probe them soon
	}
	return nil
}

// move applies transitions in one transaction and logs each that landed.
func (r *Reconciler) move(ctx context.Context, pool string, ts []store.Transition) error {
	if len(ts) == 0 {
		return nil
	}
	res, err := r.o.Store.TransitionMachines(ctx, ts)
	if err != nil {
		return fmt.Errorf("apply %d transitions: %w", len(ts), err)
	}
	for i, m := range res {
		if m == nil {
			continue
		}
		if ts[i].From != ts[i].To {
			r.log.Info("machine state", "pool", pool, "label", m.Label, "instance_id", m.InstanceID,
				"from", ts[i].From, "to", ts[i].To, "cause", ts[i].Cause)
		}
	}
	return nil
}

func (r *Reconciler) newMachine(p config.Pool, in *provider.Instance) store.Machine {
	state := store.Provisioning
	if !r.o.WaitForAgent && in.State == provider.InstanceRunning && in.IP != "" {
		state = store.Ready
	}
	arch, platform := p.Arch, p.Platform
	if in.Arch != "" {
		arch = in.Arch
	}
	if in.Platform != "" {
		platform = in.Platform
	}
	snapshot := in.Image
	if snapshot == "" {
		snapshot = p.Image
	}
	tags := slices.Clone(p.Tags)
	for _, t := range in.Tags {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return store.Machine{
		Name: in.Name, Label: in.Name, Pool: p.Name, InstanceID: in.ID,
		Arch: arch, IP: in.IP, Platform: platform, Snapshot: snapshot,
		ResultServerIP: r.o.ResultServerIP, ResultServerPort: r.o.ResultServerPort,
		Reserved: p.Reserved, Tags: tags, State: state,
	}
}

// probe asks the agents of provisioning machines, a bounded number at a time,
// and returns the moves to ready for those that answered.
func (r *Reconciler) probe(ctx context.Context, ps []pair) []store.Transition {
	alive := make([]bool, len(ps))
	if r.o.WaitForAgent && r.o.Agent != nil {
		var wg sync.WaitGroup
		limit := make(chan struct{}, 64)
		for i, x := range ps {
			if x.inst.IP == "" {
				continue
			}
			wg.Add(1)
			limit <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-limit }()
				alive[i] = r.o.Agent.Alive(ctx, x.inst.IP)
			}()
		}
		wg.Wait()
	} else {
		for i, x := range ps {
			alive[i] = x.inst.IP != ""
		}
	}
	var ts []store.Transition
	waiting := false
	for i, x := range ps {
		if !alive[i] {
			waiting = true
			continue
		}
		ts = append(ts, store.Transition{Label: x.machine.Label, From: store.Provisioning, Version: x.machine.Version,
			To: store.Ready, Cause: "agent answers", IP: &x.inst.IP})
	}
	if waiting {
		r.wakeAt(time.Now().Add(2 * time.Second))
	}
	return ts
}

// reimage sends dirty machines to be reimaged, in batches: a batch goes once
// its oldest machine has waited the reimage window.
func (r *Reconciler) reimage(ctx context.Context, p config.Pool, dirty []*store.Machine) {
	if len(dirty) == 0 {
		return
	}
	sort.Slice(dirty, func(i, j int) bool { return dirty[i].StateChangedOn.Before(dirty[j].StateChangedOn) })
	if due := dirty[0].StateChangedOn.Add(r.o.ReimageWindow); time.Now().Before(due) {
		r.wakeAt(due)
		return
	}
	batches := [][]*store.Machine{dirty}
	if p.Provider == "static" {
		// Each static machine resets on its own: one failing reset_command
		// must not hold back the others.
		batches = batches[:0]
		for _, m := range dirty {
			batches = append(batches, []*store.Machine{m})
		}
	}
	for _, batch := range batches {
		ids := make([]string, len(batch))
		pre := make([]store.Transition, len(batch))
		for i, m := range batch {
			ids[i] = m.InstanceID
			pre[i] = store.Transition{Label: m.Label, From: store.Dirty, Version: m.Version, To: store.Reimaging, Cause: "reimage batch"}
		}
		r.startInstanceOp(ctx, p.Name, store.OpReimage, ids, pre,
			func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Reimage(ctx, p.Name, ids) })
	}
}

// deleteInstances deletes instances whose provisioning failed or whose delete
// was lost. Machines without a row get one, in state deleting, so the journal
// and the table agree about what is being removed.
func (r *Reconciler) deleteInstances(ctx context.Context, p config.Pool, del []pair) {
	if len(del) == 0 || p.Provider == "static" {
		return
	}
	var (
		ids    []string
		pre    []store.Transition
		insert []store.Machine
	)
	for _, x := range del {
		switch {
		case x.machine == nil:
			m := r.newMachine(p, x.inst)
			m.State = store.Deleting
			insert = append(insert, m)
			ids = append(ids, x.inst.ID)
		case x.machine.State == store.Deleting:
			ids = append(ids, x.machine.InstanceID)
		default:
			ids = append(ids, x.machine.InstanceID)
			pre = append(pre, store.Transition{Label: x.machine.Label, From: x.machine.State, Version: x.machine.Version,
				To: store.Deleting, Cause: "instance " + x.inst.Raw})
		}
	}
	if len(insert) > 0 {
		if _, err := r.o.Store.InsertMachines(ctx, insert, "failed instance found in the provider"); err != nil {
			r.log.Error("record failed instances", "pool", p.Name, "err", err)
			return
		}
	}
	r.startInstanceOp(ctx, p.Name, store.OpDelete, ids, pre,
		func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Delete(ctx, p.Name, ids) })
}

// capacity brings a group up to the pool's initial size, and down to its
// maximum by deleting idle instances, newest first. It never writes a capacity
// computed from a stale read: it reads the group fresh and sends its ETag.
func (r *Reconciler) capacity(ctx context.Context, p config.Pool, g *provider.Group, plan []pair) {
	if r.groupBusy(p.Name) {
		return
	}
	switch {
	case g.Capacity < p.InitialSize:
		want := p.InitialSize
		r.startGroupOp(ctx, p.Name, store.OpSetCapacity, func(ctx context.Context) (provider.Op, error) {
			fresh, err := r.o.Provider.GetGroup(ctx, p.Name)
			if err != nil {
				return nil, err
			}
			if fresh.Capacity >= want {
				return provider.Done{}, nil
			}
			return r.o.Provider.SetCapacity(ctx, p.Name, want, fresh.ETag)
		}, withCapacity(want))
	case p.MaxSize > 0 && g.Capacity > p.MaxSize:
		for _, x := range plan {
			if x.action == DeleteInst || (x.machine != nil && x.machine.State == store.Deleting) ||
				(x.inst != nil && (x.inst.State == provider.InstanceFailed || x.inst.State == provider.InstanceDeleting ||
					r.busy(p.Name, x.inst.ID))) {
				// Deletes under way will change the count the capacity
				// shows; scale in only once they have landed.
				return
			}
		}
		excess := g.Capacity - p.MaxSize
		var idle []*store.Machine
		for _, x := range plan {
			if x.machine != nil && x.inst != nil && (x.machine.State == store.Ready || x.machine.State == store.Provisioning) {
				idle = append(idle, x.machine)
			}
		}
		sort.Slice(idle, func(i, j int) bool { return instanceOrder(idle[i].InstanceID) > instanceOrder(idle[j].InstanceID) })
		if len(idle) > excess {
			idle = idle[:excess]
		}
		if len(idle) == 0 {
			return
		}
		var ids []string
		var pre []store.Transition
		for _, m := range idle {
			ids = append(ids, m.InstanceID)
			pre = append(pre, store.Transition{Label: m.Label, From: m.State, Version: m.Version, To: store.Deleting,
				Cause: fmt.Sprintf("pool above max_size %d", p.MaxSize)})
		}
		r.startInstanceOp(ctx, p.Name, store.OpDelete, ids, pre,
			func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Delete(ctx, p.Name, ids) })
	}
}

func instanceOrder(id string) int {
	n, err := strconv.Atoi(id)
	if err != nil {
		return -1
	}
	return n
}
