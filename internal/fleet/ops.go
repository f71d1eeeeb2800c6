package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Every provider operation goes through here: intent journaled, machines
// moved, operation begun, resume token stored — each its own short
// transaction — and only then a wait, outside any transaction, in its own
// goroutine. When the operation reports its end (or its journaled deadline
// passes) the journal and the machines are updated and a pass is triggered.
//
// The journal is the operation's history: attempt counts how often the same
// intent was issued, and each machine counts its failed operations in a row
// (store.Machine.Failures), so neither a restart nor a new leader resets them.

// maxFailures quarantines a machine once this many operations on it (a
// reimage, a reset, a delete) failed in a row.
const maxFailures = 3

// lastLook bounds the one poll a resumed operation gets when its journaled
// deadline has passed while no one was waiting on it.
const lastLook = 3 * time.Second

type opOption func(*store.Operation)

func withCapacity(n int) opOption { return func(op *store.Operation) { op.Capacity = n } }

// startGroupOp begins an operation on a whole group unless one is in flight.
func (r *Reconciler) startGroupOp(ctx context.Context, pool string, kind store.OpKind,
	begin func(context.Context) (provider.Op, error), opts ...opOption) {
	if r.ops.owned(pool, "") {
		return
	}
	r.startOp(ctx, store.Operation{Pool: pool, Kind: kind}, nil, begin, opts...)
}

// startInstanceOp begins an operation on instances, moving their machines
// with pre first, unless an operation in flight owns one of them already.
func (r *Reconciler) startInstanceOp(ctx context.Context, pool string, kind store.OpKind, ids []string,
	pre []store.Transition, begin func(context.Context) (provider.Op, error)) {
	if r.ops.anyOwned(pool, ids) {
		return // the next pass decides again
	}
	r.startOp(ctx, store.Operation{Pool: pool, Kind: kind, InstanceIDs: ids}, pre, begin)
}

func (r *Reconciler) startOp(ctx context.Context, op store.Operation, pre []store.Transition,
	begin func(context.Context) (provider.Op, error), opts ...opOption) {
	if throttled, _ := r.Throttled(); throttled || !r.ops.acquire() {
		return // a finishing operation, or the window's end, triggers a pass
	}
	op.Deadline = time.Now().Add(r.o.OpTimeout)
	for _, o := range opts {
		o(&op)
	}
	attempt, err := r.attempt(ctx, op)
	if err != nil {
		r.ops.release()
		r.log.Error("read journal", "pool", op.Pool, "kind", op.Kind, "err", err)
		return
	}
	op.Attempt = attempt
	jop, err := r.o.Store.CreateOperation(ctx, op)
	if err != nil {
		r.ops.release()
		r.log.Error("journal operation", "pool", op.Pool, "kind", op.Kind, "err", err)
		return
	}
	log := r.opLog(jop)
	r.ops.claim(jop)
	if len(pre) > 0 {
		res, err := r.o.Store.TransitionMachines(ctx, pre)
		if err == nil && slices.Contains(res, nil) {
			err = store.ErrStale
		}
		if err != nil {
			// Someone moved a machine under us; give up this batch and let the
			// next pass decide again. Undo the moves that landed.
			r.undo(ctx, jop, pre, res, "operation not issued: "+err.Error())
			r.finish(jop, store.OpAbandoned, "machines changed before issue: "+err.Error())
			return
		}
	}
	pop, err := begin(ctx)
	if err != nil {
		// Refused, so nothing runs in the cloud: not a failure of the
		// machines. The journal keeps it; the next pass issues it again.
		r.noteThrottle(err)
		log.Warn("operation not issued", "err", err)
		r.undo(ctx, jop, pre, nil, "operation not issued: "+err.Error())
		r.finish(jop, store.OpFailed, "not issued: "+err.Error())
		return
	}
	if err := r.storeToken(ctx, jop.ID, pop.Token()); err != nil {
		// The operation runs in the cloud regardless; without its token a
		// restart re-derives it from the provider's state.
		log.Error("store resume token", "err", err)
	}
	log.Info("operation issued", "resumable", pop.Token() != "", "deadline", jop.Deadline.UTC().Format(time.RFC3339))
	r.await(jop, pop)
}

// opLog is the logger of one operation: every line names it (SPEC §1.8).
func (r *Reconciler) opLog(op store.Operation) *slog.Logger {
	return r.log.With("pool", op.Pool, "operation_id", op.ID, "kind", op.Kind, "instance_ids", op.InstanceIDs,
		"attempt", op.Attempt)
}

// attempt is 1 + how often the same intent was issued before without
// succeeding: for each instance (or the group) the unbroken run of failed or
// abandoned operations of this kind, back to the last one that succeeded.
func (r *Reconciler) attempt(ctx context.Context, op store.Operation) (int, error) {
	past, err := r.o.Store.ListOperations(ctx, store.OperationFilter{Pool: op.Pool, Limit: 100})
	if err != nil {
		return 0, err
	}
	targets := op.InstanceIDs
	if len(targets) == 0 {
		targets = []string{""}
	}
	most := 0
	for _, id := range targets {
		n := 0
		for _, p := range past { // newest first
			if p.Kind != op.Kind || (id != "" && !slices.Contains(p.InstanceIDs, id)) || !p.State.Final() {
				continue
			}
			if p.State == store.OpSucceeded {
				break
			}
			n++
		}
		most = max(most, n)
	}
	return most + 1, nil
}

// storeToken records a resume token. The operation is issued by now, so a
// shutdown must not stop the write (the next start would re-derive it and
// issue it again): it runs detached from ctx, bounded, and is retried.
func (r *Reconciler) storeToken(ctx context.Context, id int64, token string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var err error
	for delay := 100 * time.Millisecond; ; delay *= 2 {
		if err = r.o.Store.SetOperationToken(ctx, id, token); err == nil || errors.Is(err, store.ErrStale) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

// undo moves machines that pre moved back to where they were.
func (r *Reconciler) undo(ctx context.Context, op store.Operation, pre []store.Transition, landed []*store.Machine, cause string) {
	var back []store.Transition
	for i, t := range pre {
		if landed != nil && (i >= len(landed) || landed[i] == nil) {
			continue
		}
		back = append(back, store.Transition{Label: t.Label, From: t.To, To: t.From, Cause: cause})
	}
	if len(back) > 0 {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := r.move(ctx, op.Pool, back); err != nil {
			r.opLog(op).Error("undo transitions", "err", err)
		}
	}
}

// finish records an operation's end and releases its claim and slot.
func (r *Reconciler) finish(op store.Operation, state store.OpState, msg string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.term()), 30*time.Second)
	defer cancel()
	if err := r.o.Store.FinishOperation(ctx, op.ID, state, msg); err != nil && !errors.Is(err, store.ErrStale) {
		r.opLog(op).Error("finish operation", "err", err)
	}
	r.o.Metrics.OperationEnded(r.ProviderName(), string(op.Kind), string(state))
	r.ops.unclaim(op)
	r.ops.release()
	r.Trigger()
}

// await waits for an issued operation in the background, then applies its
// outcome. If the term ends first (shutdown, leadership lost) the operation
// stays unfinished in the journal, and whoever leads next resumes it from its
// token.
func (r *Reconciler) await(op store.Operation, pop provider.Op) {
	base := r.term()
	r.opsWG.Go(func() {
		err := r.wait(base, op, pop)
		if base.Err() != nil {
			r.ops.unclaim(op)
			r.ops.release()
			return
		}
		log := r.opLog(op)
		state, msg := store.OpSucceeded, ""
		switch {
		case errors.Is(err, provider.ErrTokenRejected):
			state, msg = store.OpAbandoned, err.Error()+"; re-derived from provider state"
			log.Warn("operation unknown to the provider; re-deriving", "err", err)
		case err != nil:
			state, msg = store.OpFailed, err.Error()
			log.Warn("operation failed", "err", err)
		default:
			log.Info("operation succeeded")
		}
		r.outcome(context.WithoutCancel(base), op, err)
		r.finish(op, state, msg)
	})
}

// wait waits for an operation to report its end, until its journaled
// deadline — kept across restarts, never renewed. A status that cannot be
// read is not an end: the operation was accepted and goes on in the cloud,
// so a throttled poll is sat out for its Retry-After and any other failed
// poll (a 5xx, a lost connection, a timeout) is retried with backoff.
// Failing it instead would issue it again, and count a failure against
// machines whose operation succeeded.
func (r *Reconciler) wait(base context.Context, op store.Operation, pop provider.Op) error {
	deadline := op.Deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(r.o.OpTimeout)
	}
	if time.Until(deadline) < lastLook {
		// Resumed after its deadline: one look at how it ended.
		deadline = time.Now().Add(lastLook)
	}
	ctx, cancel := context.WithDeadline(base, deadline)
	defer cancel()
	backoff, unreadable := time.Second, 0
	var last error
	for {
		err := pop.Wait(ctx)
		switch {
		case err == nil || base.Err() != nil:
			return err
		case ctx.Err() != nil:
			return deadlineErr(op, deadline, last)
		}
		pause := time.Duration(0)
		if t, ok := provider.AsThrottled(err); ok {
			r.noteThrottle(err)
			pause = t.RetryAfter
		} else if p, ok := provider.AsPollError(err); ok {
			pause = p.RetryAfter
			if pause == 0 {
				pause = backoff/2 + rand.N(backoff/2+1)
				backoff = min(2*backoff, maxPollBackoff)
			}
		} else {
			return err // the operation's own end
		}
		last, unreadable = err, unreadable+1
		if unreadable == 1 || unreadable%10 == 0 {
			r.opLog(op).Warn("operation status unreadable; polling again, it is not taken for failed",
				"err", err, "failed_polls", unreadable, "retry_in", pause)
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			if base.Err() != nil {
				return base.Err()
			}
			return deadlineErr(op, deadline, last)
		}
	}
}

// maxPollBackoff caps the pause between failed polls of an accepted
// operation: a status read is cheap, and a cloud that recovers should see
// the operation's end within seconds, not half a minute.
const maxPollBackoff = 10 * time.Second

func deadlineErr(op store.Operation, deadline time.Time, last error) error {
	msg := fmt.Sprintf("%s: no outcome by its deadline %s", op.Kind, deadline.UTC().Format(time.RFC3339))
	if last != nil {
		return fmt.Errorf("%s (last poll: %w)", msg, last)
	}
	return fmt.Errorf("%s: %w", msg, context.DeadlineExceeded)
}

// outcome moves the machines an operation owned according to how it ended.
// Group operations move no machine.
func (r *Reconciler) outcome(ctx context.Context, op store.Operation, err error) {
	if op.Kind != store.OpReimage && op.Kind != store.OpDelete {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ms, lerr := r.machinesOf(ctx, op)
	if lerr != nil {
		r.opLog(op).Error("operation outcome", "err", lerr)
		return
	}
	var ts []store.Transition
	for _, m := range ms {
		if t, ok := after(op.Kind, m, err); ok {
			ts = append(ts, t)
		}
	}
	if err := r.move(ctx, op.Pool, ts); err != nil {
		r.opLog(op).Error("operation outcome", "err", err)
	}
}

// after is where a machine goes once its operation ended with err:
//
//	reimage  succeeded → provisioning (ready once the agent answers)
//	         failed    → dirty, to be reimaged again; quarantined at maxFailures in a row
//	         unknown to the provider → dirty, not counted against the machine
//	delete   succeeded, or the instance is not found → gone
//	         failed    → stays deleting (the table deletes again); quarantined at maxFailures
func after(kind store.OpKind, m store.Machine, err error) (store.Transition, bool) {
	from := store.Reimaging
	if kind == store.OpDelete {
		from = store.Deleting
	}
	if m.State != from {
		return store.Transition{}, false // moved meanwhile (gone, say): not ours any more
	}
	t := store.Transition{Label: m.Label, From: from, Version: m.Version}
	switch {
	case kind == store.OpReimage && err == nil:
		t.To, t.Cause, t.Failures = store.Provisioning, "reimaged", store.ClearFailures
	case kind == store.OpDelete && (err == nil || errors.Is(err, provider.ErrNotFound)):
		t.To, t.Cause, t.Failures = store.Gone, "deleted", store.ClearFailures
	case errors.Is(err, provider.ErrTokenRejected) && kind == store.OpDelete:
		return store.Transition{}, false // still deleting: the table deletes again
	case errors.Is(err, provider.ErrTokenRejected):
		t.To, t.Cause = store.Dirty, "reimage lost by the provider; reimaging again"
	default:
		t.To, t.Cause, t.Failures = store.Dirty, fmt.Sprintf("%s failed: %v", kind, err), store.AddFailure
		if kind == store.OpDelete {
			t.To = store.Deleting
		}
		if n := m.Failures + 1; n >= maxFailures {
			reason := fmt.Sprintf("%s failed %d times in a row: %v", kind, n, err)
			t.To, t.Cause, t.QuarantineReason = store.Quarantined, reason, &reason
		}
	}
	return t, true
}

// machinesOf reads the machines an operation's instances belong to.
func (r *Reconciler) machinesOf(ctx context.Context, op store.Operation) ([]store.Machine, error) {
	ms, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: op.Pool})
	if err != nil {
		return nil, err
	}
	out := ms[:0]
	for _, m := range ms {
		if slices.Contains(op.InstanceIDs, m.InstanceID) {
			out = append(out, m)
		}
	}
	return out, nil
}

// resume re-attaches to every unfinished operation of this reconciler's pools.
// One without a token, or whose token the provider rejects, is abandoned: the
// table re-derives what to do from the provider's current state (a lost
// reimage is reimaged again; a lost create is found, or not, by the next list).
// A resumed operation keeps its journaled deadline.
func (r *Reconciler) resume(ctx context.Context) error {
	ops, err := r.o.Store.ListOperations(ctx, store.OperationFilter{Unfinished: true})
	if err != nil {
		return fmt.Errorf("read journal: %w", err)
	}
	known := map[string]string{} // pool → provider, as last configured
	if r.o.Orphans {
		pools, err := r.o.Store.ListPools(ctx)
		if err != nil {
			return fmt.Errorf("read pools: %w", err)
		}
		for _, p := range pools {
			known[p.Name] = p.Provider
		}
	}
	for _, op := range ops {
		_, mine := r.pools[op.Pool]
		if prov, ok := known[op.Pool]; !mine && r.o.Orphans && (!ok || prov == r.ProviderName()) {
			mine = true // a pool no longer configured that was ours, or no one's
		}
		if !mine {
			continue
		}
		log := r.opLog(op)
		if op.ResumeToken == "" {
			log.Warn("unfinished operation has no resume token; re-deriving from the provider")
			r.abandon(ctx, op, "no resume token: re-derived from provider state")
			continue
		}
		pop, err := r.o.Provider.Resume(ctx, provider.Kind(op.Kind), op.ResumeToken)
		if err != nil {
			log.Warn("cannot resume operation; re-deriving from the provider", "err", err)
			r.abandon(ctx, op, "resume failed: "+err.Error()+"; re-derived from provider state")
			continue
		}
		log.Info("operation resumed", "deadline", op.Deadline.UTC().Format(time.RFC3339))
		r.ops.force()
		r.ops.claim(op)
		r.await(op, pop)
	}
	return nil
}

func (r *Reconciler) abandon(ctx context.Context, op store.Operation, msg string) {
	if err := r.o.Store.FinishOperation(ctx, op.ID, store.OpAbandoned, msg); err != nil && !errors.Is(err, store.ErrStale) {
		r.opLog(op).Error("abandon operation", "err", err)
	}
}
