// Package fleet keeps the machine table true to the providers. It owns the
// machine state table (table.go), the level-triggered reconciler that applies
// it, and the operations journal through which every cloud call is issued.
//
// The provider's list of instances is the truth about what exists; the database
// is the truth about what each instance is doing. A pass reads both and
// converges. Startup is one pass, after resuming journaled operations; nothing
// is ever wiped. No database transaction is open across a provider call: every
// store method is its own short transaction.
//
// The reconciler's parts, one file each:
//
//	run.go      the run loop, triggers, start, leadership
//	throttle.go the provider's throttle window
//	group.go    a pass over the groups: creation, adoption, image, capacity, retirement
//	apply.go    the table applied to each machine of a pool
//	inflight.go which operations this node awaits, and the concurrency cap
//	ops.go      an operation's life: journal, issue, token, wait, outcome, resume
//	health.go   probing the agents of ready machines
package fleet

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// AgentChecker asks a machine's guest agent whether it answers.
type AgentChecker interface {
	// Ping calls the agent at ip; a nil error means it answered.
	Ping(ctx context.Context, ip string) error
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
	// WaitForAgent keeps new machines provisioning until their agent
	// answers, and probes ready machines' agents every HealthInterval.
	WaitForAgent bool
	Agent        AgentChecker
	// HealthInterval is how often a ready machine's agent is probed
	// (fleet.health_interval).
	HealthInterval time.Duration
	// ProvisionTimeout replaces an instance whose agent has not answered this
	// long after it appeared, was reimaged or went silent (timeouts.vm_state);
	// 0 = never.
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
	// OnReady is called after machines became ready: the scheduler has
	// work to give them.
	OnReady func()
	// Demand counts, by pool, the tasks each pool is wanted for: pending
	// ones it could serve and running ones on its machines. With it a
	// pool's size follows its demand (demand.go); without it a pool keeps
	// its size between initial_size and max_size.
	Demand func(ctx context.Context) (map[string]int, error)
	// Overprovision is the share of machines added above the demand, in
	// percent (azure.overprovision).
	Overprovision int
	// ScaleInDelay is how long a pool's demand must stay below its size
	// before it shrinks (azure.monitor_interval): a bursty queue does not
	// make it flap.
	ScaleInDelay time.Duration
	// TotalMachinesLimit caps the machines of all this provider's pools
	// together (azure.total_machines_limit); 0 = no cap.
	TotalMachinesLimit int
	// Spot: the pools' instances may be evicted; one that vanishes is
	// counted as an eviction (azure.spot).
	Spot bool
	// Metrics records passes, operations and throttles (nil: none).
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Reconciler converges the machine table of one provider's pools.
type Reconciler struct {
	o     Options
	caps  provider.Capabilities
	log   *slog.Logger
	pools map[string]config.Pool
	wake  chan struct{}
	// firstPass is closed after the first pass that read the provider, or
	// once this node stands by for another.
	firstPass chan struct{}
	firstOnce sync.Once
	opsWG     sync.WaitGroup
	passMu    sync.Mutex // one pass at a time

	passes, failed, skipped, lastPassNanos atomic.Int64

	throttle throttle
	ops      inflight
	agents   verdicts
	// probes are the failed agent probes of provisioning machines: what
	// a machine waiting for its agent is told, kept for Why.
	probes verdicts

	scale scaling

	mu        sync.Mutex
	views     map[string]View
	retiring  []string // pools of this provider no longer configured
	nextWake  time.Time
	base      context.Context // the current term's; operations wait under it
	anomalies map[string]bool // anomalies logged, by label and cell
	watching  map[string]bool // provisioning machines whose agent is asked between passes, by label
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
	if o.HealthInterval <= 0 {
		o.HealthInterval = def.Fleet.HealthInterval
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = def.Timeouts.CloudOperation
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = def.Fleet.LeaseTTL
	}
	r := &Reconciler{
		o:         o,
		caps:      o.Provider.Capabilities(),
		log:       o.Logger,
		pools:     map[string]config.Pool{},
		wake:      make(chan struct{}, 1),
		firstPass: make(chan struct{}),
		ops:       inflight{max: o.MaxConcurrentOps, owner: map[string]int64{}},
		agents:    verdicts{silent: map[string]verdict{}},
		probes:    verdicts{silent: map[string]verdict{}},
		views:     map[string]View{},
		scale:     scaling{low: map[string]time.Time{}, limited: map[string]string{}, decided: map[string]sizing{}},
		base:      context.Background(),
		anomalies: map[string]bool{},
		watching:  map[string]bool{},
	}
	for _, p := range o.Pools {
		r.pools[p.Name] = p
	}
	return r
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

// LastView returns the last good provider read of a pool.
func (r *Reconciler) LastView(pool string) (View, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.views[pool]
	return v, ok
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

// term returns the context of the current term of leadership: operations
// wait under it and stop waiting when it ends.
func (r *Reconciler) term() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.base
}
