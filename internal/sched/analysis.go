package sched

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// An analysis, from lease to end:
//
//  1. verify: the machine is leased to the task in the database (the lease
//     did that), its instance exists and runs (one provider read), its agent
//     answers. Otherwise the machine leaves service with the reason and the
//     task goes back to the queue, its place and its attempt kept.
//  2. the analysis folder (an earlier attempt's results set aside), the
//     result server told which machine reports for which task.
//  3. the guest: CAPE's host sequence up to the analyzer's start, then its
//     status polled until it ends — every call bounded.
//  4. the end, in one transaction with the machine's release (dirty, to be
//     reimaged before anyone uses it again): completed; failed_analysis with
//     the cause; or, when the machine itself was lost, back to the queue as
//     a new attempt.

// run is one analysis this node runs.
type run struct {
	task    store.Task
	machine store.Machine
	cancel  context.CancelCauseFunc
}

func (r *run) stop(cause error) { r.cancel(cause) }

var (
	errStuck       = errors.New("the analysis ran past timeout + critical + vm_state")
	errMachineLost = errors.New("the machine left the analysis (gone from its provider, or moved by an operator)")
)

// start runs the analysis of a leased task in its own goroutine.
func (s *Scheduler) start(t store.Task, m store.Machine) {
	ctx, cancel := context.WithCancelCause(s.runsCtx)
	r := &run{task: t, machine: m, cancel: cancel}
	s.mu.Lock()
	s.runs[t.ID] = r
	s.mu.Unlock()
	s.wg.Go(func() {
		defer func() {
			s.mu.Lock()
			delete(s.runs, t.ID)
			s.mu.Unlock()
			cancel(nil)
			s.Trigger()
		}()
		s.analyze(ctx, r)
	})
}

// timeout is the task's analysis time.
func (s *Scheduler) timeout(t store.Task) time.Duration {
	if t.Timeout > 0 {
		return time.Duration(t.Timeout) * time.Second
	}
	return s.o.Timeouts.Default
}

func (s *Scheduler) analyze(ctx context.Context, r *run) {
	t, m := r.task, r.machine
	log := s.log.With("task_id", t.ID, "label", m.Label, "pool", m.Pool, "instance_id", m.InstanceID, "attempt", t.Attempt)
	timeout, critical := s.timeout(t), s.o.Timeouts.Critical
	ctx, cancel := context.WithTimeoutCause(ctx, timeout+critical+s.o.Timeouts.VMState, errStuck)
	defer cancel()
	log.Info("analysis leased", "ip", m.IP)

	if why := s.verify(ctx, m); why != "" {
		log.Warn("machine failed its check before the analysis; the task goes back to the queue", "reason", why)
		s.requeue(log, store.Requeue{TaskID: t.ID, Node: s.o.Node, Cause: "machine " + m.Label + " failed its check: " + why,
			MachineTo: store.Provisioning, MachineCause: "failed its check before an analysis: " + why})
		return
	}
	dir, err := s.prepareDir(t)
	if err == nil {
		err = s.o.Results.RegisterMachine(m.IP, m.ResultServerPort, t.ID, dir)
	}
	if err != nil {
		s.end(log, t, store.TaskFailedAnalysis, "analysis folder: "+err.Error())
		return
	}
	err = s.runGuest(ctx, log, t, m, timeout, critical)
	stats := s.o.Results.UnregisterMachine(m.IP, m.ResultServerPort, t.ID)
	log = log.With("uploads", stats.Files, "bytes", stats.Bytes, "connections", stats.Connections)
	cause := context.Cause(ctx)
	switch {
	case err == nil:
		s.end(log, t, store.TaskCompleted, "")
	case errors.Is(cause, errLeaseLost):
		log.Warn("analysis abandoned: " + errLeaseLost.Error())
	case errors.Is(cause, errShutdown), errors.Is(err, errMachineLost):
		why := errMachineLost.Error()
		if errors.Is(cause, errShutdown) {
			why = errShutdown.Error()
		}
		s.requeue(log, store.Requeue{TaskID: t.ID, Node: s.o.Node, Lost: true, MaxAttempts: s.o.Scheduler.MaxAttempts, Cause: why})
	case errors.Is(cause, errStuck):
		s.end(log, t, store.TaskFailedAnalysis, fmt.Sprintf("%s (%s): %v", errStuck, timeout+critical+s.o.Timeouts.VMState, err))
	default:
		s.end(log, t, store.TaskFailedAnalysis, err.Error())
	}
}

// verify checks a machine before its analysis: its instance exists and runs
// (when the provider can be read now), and its agent answers. It returns
// why not, or "".
func (s *Scheduler) verify(ctx context.Context, m store.Machine) string {
	if s.o.Verify != nil {
		vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.o.Verify(vctx, m)
		cancel()
		if _, throttled := provider.AsThrottled(err); err != nil && !throttled {
			return "instance: " + err.Error()
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.o.Guest.Ping(pctx, m.IP); err != nil {
		return "agent does not answer: " + err.Error()
	}
	return ""
}

// machineGone reports whether the machine left the analysis: its row no
// longer leased to the task, or its instance missing from the provider.
func (s *Scheduler) machineGone(ctx context.Context, t store.Task, m store.Machine) bool {
	cur, err := s.o.Store.GetMachine(ctx, m.Label)
	if err == nil && (cur.State != store.Leased || cur.TaskID != t.ID) {
		return true
	}
	if s.o.Verify == nil {
		return false
	}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return errors.Is(s.o.Verify(vctx, m), provider.ErrNotFound)
}

// runGuest runs CAPE's host sequence and waits for the analyzer, until
// timeout + critical. An agent that stops answering is waited for until that
// deadline, unless its machine is gone (errMachineLost): then the analysis
// was lost, not failed.
func (s *Scheduler) runGuest(ctx context.Context, log *slog.Logger, t store.Task, m store.Machine, timeout, critical time.Duration) error {
	a := guest.Analysis{
		ID: t.ID, Category: t.Category, Target: t.Target, Package: t.Package, Options: t.Options,
		Timeout: timeout, EnforceTimeout: t.EnforceTimeout, Clock: t.Clock, Analyzer: s.o.Analyzer,
		ResultServerIP: m.ResultServerIP, ResultServerPort: m.ResultServerPort,
		UploadMaxSize: s.o.UploadMaxSize, Platform: m.Platform,
	}
	if t.Category == "file" {
		f, smp, err := s.openSample(ctx, t)
		if err != nil {
			return fmt.Errorf("sample: %w", err)
		}
		defer f.Close()
		a.Sample, a.SampleSize, a.FileType = f, smp.FileSize, smp.FileType
	}
	startCtx, cancel := context.WithTimeout(ctx, critical)
	err := s.o.Guest.Start(startCtx, m.IP, a)
	cancel()
	if err != nil {
		if ctx.Err() == nil && s.machineGone(ctx, t, m) {
			return errMachineLost
		}
		return fmt.Errorf("start the analysis: %w", err)
	}
	log.Info("analyzer started", "timeout", timeout)
	waitCtx, cancel := context.WithTimeout(ctx, timeout+critical)
	defer cancel()
	for {
		err := s.o.Guest.Wait(waitCtx, m.IP)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return err
		case waitCtx.Err() != nil:
			return fmt.Errorf("no end by its deadline (timeout %s + critical %s): %w", timeout, critical, err)
		case errors.Is(err, guest.ErrAgentLost):
			if s.machineGone(ctx, t, m) {
				return errMachineLost
			}
			log.Warn("agent not answering; waiting for it until the analysis deadline", "err", err)
		default:
			return err
		}
	}
}

// openSample opens a file task's sample.
func (s *Scheduler) openSample(ctx context.Context, t store.Task) (io.ReadCloser, store.Sample, error) {
	smp, err := s.o.Store.GetSample(ctx, t.SampleID)
	if err != nil {
		return nil, smp, err
	}
	f, err := os.Open(s.o.Samples.Path(smp.SHA256))
	return f, smp, err
}

// prepareDir makes the task's analysis folder; what an earlier attempt left
// there is set aside in attempts/<n>/, not mixed with this one's results.
func (s *Scheduler) prepareDir(t store.Task) (string, error) {
	dir := filepath.Join(s.o.DataDir, "analyses", strconv.FormatInt(t.ID, 10))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var earlier []os.DirEntry
	for _, e := range entries {
		if e.Name() != "attempts" {
			earlier = append(earlier, e)
		}
	}
	if len(earlier) == 0 {
		return dir, nil
	}
	aside := filepath.Join(dir, "attempts", strconv.Itoa(max(t.Attempt-1, 1)))
	for n := 2; ; n++ {
		if _, err := os.Stat(aside); os.IsNotExist(err) {
			break
		}
		aside = filepath.Join(dir, "attempts", fmt.Sprintf("%d-%d", max(t.Attempt-1, 1), n))
	}
	if err := os.MkdirAll(aside, 0o750); err != nil {
		return "", err
	}
	for _, e := range earlier {
		if err := os.Rename(filepath.Join(dir, e.Name()), filepath.Join(aside, e.Name())); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// detached bounds the store writes that end an analysis: they must land even
// when the analysis was stopped by a shutdown.
func detached() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// end records how an analysis ended and releases its machine dirty.
func (s *Scheduler) end(log *slog.Logger, t store.Task, status store.TaskStatus, why string) {
	ctx, cancel := detached()
	defer cancel()
	ended, err := s.o.Store.EndTask(ctx, store.TaskEnd{TaskID: t.ID, Node: s.o.Node, Status: status, Error: why,
		HookNode: s.hookNode()})
	if err == nil {
		s.o.Metrics.AnalysisEnded(string(status), ended.CompletedOn.Sub(ended.StartedOn))
	}
	switch {
	case err != nil:
		log.Error("record the end of an analysis", "status", status, "err", err)
	case status == store.TaskCompleted:
		log.Info("analysis completed")
	default:
		log.Warn("analysis failed", "error", why)
	}
	s.o.Released()
	s.o.Ended()
}

// requeue puts a running task back in the queue (or fails it past its
// attempts) and releases its machine.
func (s *Scheduler) requeue(log *slog.Logger, r store.Requeue) {
	ctx, cancel := detached()
	defer cancel()
	r.HookNode = s.hookNode()
	t, err := s.o.Store.RequeueTask(ctx, r)
	switch {
	case err != nil:
		log.Error("put the task back in the queue", "err", err)
	case t.Status == store.TaskPending:
		log.Warn("task back in the queue", "cause", r.Cause, "next_attempt", t.Attempt)
	default:
		log.Warn("task failed", "error", t.Error)
		s.o.Ended()
	}
	s.o.Released()
	s.Trigger()
}
