// Package sched runs tasks on machines: the queue's dispatch, the lease of a
// task and a machine, each analysis from its start in the guest to its end,
// and the recovery of analyses lost with their machine or their node.
//
// What CAPE operators keep reporting must not happen here: a task pending
// forever (one no machine could ever serve fails at once, naming what
// nothing meets; one whose machines are busy never holds up the tasks behind
// it), a machine left locked after a crash (every lease expires unless its
// node renews it, and a rescuer puts it back), two tasks on one machine (the
// lease is one compare-and-set of both rows), a machine reused without a
// reimage (a released machine is dirty until the reconciler reimaged it), an
// agent error reported as a completed analysis.
//
// No database transaction is open across a guest, provider or result-server
// call: each state change is its own short transaction (package store).
package sched

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/resultserver"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Guest runs analyses through machines' guest agents (package guest).
type Guest interface {
	Ping(ctx context.Context, ip string) error
	Start(ctx context.Context, ip string, a guest.Analysis) error
	Wait(ctx context.Context, ip string) error
}

// Results receives what analyzers send (package resultserver). A machine
// is known by its address, or by the result-server port it reports to when
// that port is its own.
type Results interface {
	RegisterMachine(ip string, port int, taskID int64, dir string) error
	UnregisterMachine(ip string, port int, taskID int64) resultserver.Stats
}

// Options configure a Scheduler.
type Options struct {
	Store store.Store
	// Node names this node: it holds the leases of the analyses it runs.
	Node string
	// Pools are the configured pools: what could ever serve a task.
	Pools     []config.Pool
	Scheduler config.Scheduler
	Timeouts  config.Timeouts
	// LeaseTTL is how long an analysis lease lasts unrenewed: how long a dead
	// node's analyses wait for the rescuer.
	LeaseTTL time.Duration
	// DataDir holds analyses/<task id>/, the analysis folders.
	DataDir string
	Samples *sample.Dir
	Guest   Guest
	Results Results
	// Analyzer is the analyzer package (a zip) sent to every guest.
	Analyzer      []byte
	UploadMaxSize int64
	// Verify reads a machine's instance fresh from its provider: an error
	// says it is missing or not running. Nil skips the check.
	Verify func(ctx context.Context, m store.Machine) error
	// Released is called when machines were released dirty or changed, to
	// wake the reconciler.
	Released func()
	// Grow is called when more tasks wait for a machine than at the last
	// dispatch: a pool that could grow should (fleet.Fleet.Trigger).
	Grow func()
	// Hooks: hooks.on_complete is configured, so every analysis that ends
	// leaves its hook pending on this node, and Ended is called.
	Hooks bool
	Ended func()
	// Metrics records leases and analyses' ends (nil: none).
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Scheduler dispatches pending tasks and runs their analyses.
type Scheduler struct {
	o     Options
	log   *slog.Logger
	match Matcher
	wake  chan struct{}

	paused   atomic.Bool
	draining atomic.Bool
	// waiting is how many tasks the last dispatch left waiting for a
	// machine.
	waiting int

	mu   sync.Mutex
	runs map[int64]*run // analyses this node runs, by task id
	// runsCtx is the parent of every analysis: Drain cancels it when its
	// bound passes.
	runsCtx    context.Context
	cancelRuns context.CancelCauseFunc
	wg         sync.WaitGroup
}

// New returns a scheduler; Run starts it.
func New(o Options) *Scheduler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	def := config.Default()
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = def.Fleet.LeaseTTL
	}
	if o.Scheduler.MaxAttempts < 1 {
		o.Scheduler.MaxAttempts = def.Scheduler.MaxAttempts
	}
	if o.Released == nil {
		o.Released = func() {}
	}
	if o.Grow == nil {
		o.Grow = func() {}
	}
	if o.Ended == nil {
		o.Ended = func() {}
	}
	s := &Scheduler{
		o: o, log: o.Logger, match: Matcher{PackageTags: o.Scheduler.PackageTags},
		wake: make(chan struct{}, 1), runs: map[int64]*run{},
	}
	s.runsCtx, s.cancelRuns = context.WithCancelCause(context.Background())
	return s
}

// Trigger asks for a dispatch soon: a task was submitted, a machine became
// ready, an analysis ended.
func (s *Scheduler) Trigger() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Pause stops dispatching (SIGUSR1); running analyses go on.
func (s *Scheduler) Pause() {
	if !s.paused.Swap(true) {
		s.log.Info("scheduler paused: no task is dispatched until resumed")
	}
}

// Resume dispatches again (SIGUSR2).
func (s *Scheduler) Resume() {
	if s.paused.Swap(false) {
		s.log.Info("scheduler resumed")
		s.Trigger()
	}
}

// Paused reports whether dispatch is paused.
func (s *Scheduler) Paused() bool { return s.paused.Load() }

// safetyNet is the longest the queue waits without an event.
const safetyNet = 5 * time.Second

// Run dispatches until ctx ends. It first puts back the analyses this node
// ran before it restarted; meanwhile it renews this node's leases and
// rescues the expired ones of any node.
func (s *Scheduler) Run(ctx context.Context) error {
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		err := s.recoverOwn(ctx)
		if err == nil {
			break
		}
		s.log.Error("recover this node's analyses; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
	var bg sync.WaitGroup
	bg.Go(func() { s.heartbeat(ctx) })
	bg.Go(func() { s.rescue(ctx) })
	defer bg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.wake:
		}
		if err := s.dispatch(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("dispatch", "err", err)
		}
		timer.Stop()
		timer.Reset(safetyNet)
	}
}

// Drain stops dispatching and waits for the running analyses to end, until
// ctx ends; those still running then are stopped and their tasks put back
// in the queue (an attempt each), their machines released dirty.
func (s *Scheduler) Drain(ctx context.Context) {
	s.draining.Store(true)
	n := s.running()
	if n == 0 {
		return
	}
	s.log.Info("draining: waiting for the running analyses", "running", n)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.log.Info("drained: every analysis ended")
		return
	case <-ctx.Done():
	}
	s.log.Warn("drain bound reached; stopping the analyses still running and putting their tasks back", "running", s.running())
	s.cancelRuns(errShutdown)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.log.Error("analyses did not stop within 30 s of the drain bound")
	}
}

var errShutdown = errors.New("the node shut down during the analysis")

func (s *Scheduler) running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.runs)
}

// recoverOwn puts back the analyses this node's previous life left running:
// they died with it.
func (s *Scheduler) recoverOwn(ctx context.Context) error {
	ts, err := s.o.Store.ListTasks(ctx, store.TaskFilter{Statuses: []store.TaskStatus{store.TaskRunning}, Node: s.o.Node})
	if err != nil {
		return err
	}
	for _, t := range ts {
		r := store.Requeue{TaskID: t.ID, Node: s.o.Node, Lost: true, MaxAttempts: s.o.Scheduler.MaxAttempts,
			Cause: "the node restarted during the analysis", HookNode: s.hookNode()}
		if !s.o.Scheduler.RescheduleRunningOnRestart {
			r.MaxAttempts = t.Attempt // fails it: scheduler.reschedule_running_on_restart is off
		}
		if _, err := s.o.Store.RequeueTask(ctx, r); err != nil && !errors.Is(err, store.ErrStale) {
			return fmt.Errorf("task %d: %w", t.ID, err)
		}
		s.log.Warn("analysis interrupted by a restart", "task_id", t.ID, "label", t.RanOn, "attempt", t.Attempt)
	}
	if len(ts) > 0 {
		s.o.Released()
		s.o.Ended()
	}
	return nil
}

// hookNode is the node an ended analysis's hook is left pending on: this
// one, when hooks.on_complete is configured.
func (s *Scheduler) hookNode() string {
	if s.o.Hooks {
		return s.o.Node
	}
	return ""
}

// heartbeat renews this node's analysis leases every third of their TTL. An
// analysis whose lease another node rescued (this node was cut off too long)
// is stopped: its task is no longer this node's to end.
func (s *Scheduler) heartbeat(ctx context.Context) {
	tick := time.NewTicker(s.o.LeaseTTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		ids := make([]int64, 0, len(s.runs))
		for id := range s.runs {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.o.LeaseTTL/3)
		held, err := s.o.Store.RenewLeases(rctx, s.o.Node, ids, s.o.LeaseTTL)
		cancel()
		if err != nil {
			s.log.Warn("renew analysis leases", "err", err, "analyses", len(ids))
			continue
		}
		kept := make(map[int64]bool, len(held))
		for _, id := range held {
			kept[id] = true
		}
		s.mu.Lock()
		for _, id := range ids {
			if r := s.runs[id]; r != nil && !kept[id] {
				r.stop(errLeaseLost)
			}
		}
		s.mu.Unlock()
	}
}

var errLeaseLost = errors.New("the analysis lease was lost: another node took the task back")

// rescue puts back, every lease TTL, the analyses whose lease expired: their
// node died or was cut off. The task is tried again (an attempt each, up to
// scheduler.max_attempts); its machine is released dirty.
func (s *Scheduler) rescue(ctx context.Context) {
	tick := time.NewTicker(s.o.LeaseTTL)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, s.o.LeaseTTL)
		expired, err := s.o.Store.ExpiredLeases(rctx)
		rescued := 0
		for _, t := range expired {
			cause := fmt.Sprintf("the analysis lease of node %s expired: the analysis was lost", t.Node)
			_, err := s.o.Store.RequeueTask(rctx, store.Requeue{TaskID: t.ID, Lost: true,
				MaxAttempts: s.o.Scheduler.MaxAttempts, Cause: cause, HookNode: s.hookNode()})
			switch {
			case errors.Is(err, store.ErrStale):
			case err != nil:
				s.log.Warn("rescue task", "task_id", t.ID, "err", err)
			default:
				rescued++
				s.log.Warn("analysis rescued", "task_id", t.ID, "label", t.RanOn, "node", t.Node, "attempt", t.Attempt)
			}
		}
		cancel()
		if err != nil {
			s.log.Warn("find expired analysis leases", "err", err)
		}
		if rescued > 0 {
			s.o.Released()
			s.o.Ended()
			s.Trigger()
		}
	}
}
