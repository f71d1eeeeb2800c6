package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Every provider operation goes through here: intent journaled, machines
// moved, operation begun, resume token stored — each its own short
// transaction — and only then a wait, outside any transaction, in its own
// goroutine. When it ends the journal and the machines are updated and a pass
// is triggered.

type opOption func(*store.Operation)

func withCapacity(n int) opOption { return func(op *store.Operation) { op.Capacity = n } }

// startGroupOp begins an operation on a whole group unless one is in flight.
func (r *Reconciler) startGroupOp(ctx context.Context, pool string, kind store.OpKind,
	begin func(context.Context) (provider.Op, error), opts ...opOption) {
	if r.groupBusy(pool) {
		return
	}
	r.startOp(ctx, store.Operation{Pool: pool, Kind: kind}, nil, begin, opts...)
}

// startInstanceOp begins an operation on instances, moving their machines
// with pre first; instances already owned by an operation are left out.
func (r *Reconciler) startInstanceOp(ctx context.Context, pool string, kind store.OpKind, ids []string,
	pre []store.Transition, begin func(context.Context) (provider.Op, error)) {
	for _, id := range ids {
		if r.busy(pool, id) {
			return // a previous operation still owns one; the next pass retries
		}
	}
	r.startOp(ctx, store.Operation{Pool: pool, Kind: kind, InstanceIDs: ids}, pre, begin)
}

func (r *Reconciler) keys(op store.Operation) []string {
	if len(op.InstanceIDs) == 0 {
		return []string{opKey(op.Pool, "")}
	}
	keys := make([]string, len(op.InstanceIDs))
	for i, id := range op.InstanceIDs {
		keys[i] = opKey(op.Pool, id)
	}
	return keys
}

func (r *Reconciler) claim(op store.Operation) {
	r.mu.Lock()
	for _, k := range r.keys(op) {
		r.inflight[k] = op.ID
	}
	r.mu.Unlock()
}

func (r *Reconciler) unclaim(op store.Operation) {
	r.mu.Lock()
	for _, k := range r.keys(op) {
		if r.inflight[k] == op.ID {
			delete(r.inflight, k)
		}
	}
	r.mu.Unlock()
}

func (r *Reconciler) startOp(ctx context.Context, op store.Operation, pre []store.Transition,
	begin func(context.Context) (provider.Op, error), opts ...opOption) {
	if !r.acquire() {
		return // at the concurrency cap; a finishing operation triggers a pass
	}
	op.Attempt = 1
	op.Deadline = time.Now().Add(r.o.OpTimeout)
	for _, o := range opts {
		o(&op)
	}
	jop, err := r.o.Store.CreateOperation(ctx, op)
	if err != nil {
		r.release()
		r.log.Error("journal operation", "pool", op.Pool, "kind", op.Kind, "err", err)
		return
	}
	log := r.log.With("pool", jop.Pool, "operation_id", jop.ID, "kind", jop.Kind, "instance_ids", jop.InstanceIDs)
	r.claim(jop)
	if len(pre) > 0 {
		res, err := r.o.Store.TransitionMachines(ctx, pre)
		if err == nil && slicesAnyNil(res) {
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
		r.throttle(err)
		log.Warn("operation not issued", "err", err)
		r.undo(ctx, jop, pre, nil, "operation failed to start: "+err.Error())
		r.finish(jop, store.OpFailed, err.Error())
		return
	}
	if err := r.storeToken(ctx, jop.ID, pop.Token()); err != nil {
		// The operation runs in the cloud regardless; without its token a
		// restart re-derives it from the provider's state.
		log.Error("store resume token", "err", err)
	}
	log.Info("operation issued", "resumable", pop.Token() != "")
	r.await(jop, pop)
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

func slicesAnyNil(ms []*store.Machine) bool {
	for _, m := range ms {
		if m == nil {
			return true
		}
	}
	return false
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
			r.log.Error("undo transitions", "pool", op.Pool, "operation_id", op.ID, "instance_ids", op.InstanceIDs, "err", err)
		}
	}
}

// finish records an operation's end and releases its claim and slot.
func (r *Reconciler) finish(op store.Operation, state store.OpState, msg string) {
	r.mu.Lock()
	base := r.base
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(base), 30*time.Second)
	defer cancel()
	if err := r.o.Store.FinishOperation(ctx, op.ID, state, msg); err != nil && !errors.Is(err, store.ErrStale) {
		r.log.Error("finish operation", "operation_id", op.ID, "err", err)
	}
	r.unclaim(op)
	r.release()
	r.Trigger()
}

// await waits for an issued operation in the background, bounded by its
// deadline, then applies its outcome.
func (r *Reconciler) await(op store.Operation, pop provider.Op) {
	r.opsWG.Add(1)
	go func() {
		defer r.opsWG.Done()
		r.mu.Lock()
		base := r.base
		r.mu.Unlock()
		deadline := op.Deadline
		if time.Until(deadline) < time.Second {
			deadline = time.Now().Add(r.o.OpTimeout)
		}
		ctx, cancel := context.WithDeadline(base, deadline)
		err := r.wait(ctx, pop)
		cancel()
		if base.Err() != nil {
			// Shutting down: leave it unfinished in the journal; the next start
			// resumes it from its token.
			r.unclaim(op)
			r.release()
			return
		}
		log := r.log.With("pool", op.Pool, "operation_id", op.ID, "kind", op.Kind, "instance_ids", op.InstanceIDs)
		state, msg := store.OpSucceeded, ""
		if err != nil {
			state, msg = store.OpFailed, err.Error()
			r.throttle(err)
			log.Warn("operation failed", "err", err)
		} else {
			log.Info("operation succeeded")
		}
		r.outcome(context.WithoutCancel(base), op, err)
		r.finish(op, state, msg)
	}()
}

// wait waits for an operation, sitting out throttled polls: the operation
// goes on in the cloud, so a 429 while polling is a reason to poll later, not
// a failure (failing it would reimage or delete twice).
func (r *Reconciler) wait(ctx context.Context, pop provider.Op) error {
	for {
		err := pop.Wait(ctx)
		t, ok := provider.AsThrottled(err)
		if !ok || ctx.Err() != nil {
			return err
		}
		r.throttle(err)
		select {
		case <-time.After(t.RetryAfter):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// outcome moves the machines an operation owned according to how it ended.
func (r *Reconciler) outcome(ctx context.Context, op store.Operation, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var next func(label string) store.Transition
	switch {
	case op.Kind == store.OpReimage:
		next = func(l string) store.Transition { return r.afterReimage(l, err) }
	case op.Kind == store.OpDelete && (err == nil || errors.Is(err, provider.ErrNotFound)):
		next = func(l string) store.Transition {
			return store.Transition{Label: l, From: store.Deleting, To: store.Gone, Cause: "deleted"}
		}
	default:
		return // group operations move no machine; a failed delete is issued again by the table
	}
	labels, lerr := r.labels(ctx, op)
	if lerr != nil {
		r.log.Error("operation outcome", "pool", op.Pool, "operation_id", op.ID, "err", lerr)
		return
	}
	ts := make([]store.Transition, len(labels))
	for i, l := range labels {
		ts[i] = next(l)
	}
	if err := r.move(ctx, op.Pool, ts); err != nil {
		r.log.Error("operation outcome", "pool", op.Pool, "operation_id", op.ID, "err", err)
	}
}

// maxReimageFailures quarantines a machine whose reimage (or reset) failed
// this many times in a row.
const maxReimageFailures = 3

// afterReimage is where a reimaged machine goes: provisioning (ready once the
// agent answers) on success; back to dirty on failure, or to quarantine once
// it failed maxReimageFailures times in a row.
func (r *Reconciler) afterReimage(label string, err error) store.Transition {
	t := store.Transition{Label: label, From: store.Reimaging, To: store.Provisioning, Cause: "reimaged"}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.reimageFailures, label)
		return t
	}
	r.reimageFailures[label]++
	t.To, t.Cause = store.Dirty, "reimage failed: "+err.Error()
	if n := r.reimageFailures[label]; n >= maxReimageFailures {
		reason := fmt.Sprintf("reimage failed %d times in a row: %v", n, err)
		t.To, t.Cause, t.QuarantineReason = store.Quarantined, reason, &reason
		delete(r.reimageFailures, label)
	}
	return t
}

// labels maps an operation's instance ids to machine labels.
func (r *Reconciler) labels(ctx context.Context, op store.Operation) ([]string, error) {
	ms, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: op.Pool})
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range op.InstanceIDs {
		want[id] = true
	}
	var out []string
	for _, m := range ms {
		if want[m.InstanceID] && m.State != store.Gone {
			out = append(out, m.Label)
		}
	}
	return out, nil
}

// resume re-attaches to every unfinished operation of this reconciler's pools.
// One without a token, or whose token the provider rejects, is abandoned: the
// table re-derives what to do from the provider's current state (a lost
// reimage is reimaged again; a lost create is found, or not, by the next list).
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
		log := r.log.With("pool", op.Pool, "operation_id", op.ID, "kind", op.Kind, "instance_ids", op.InstanceIDs)
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
		log.Info("operation resumed")
		r.mu.Lock()
		r.active++ // resumed operations run even above the cap: they are already issued
		r.mu.Unlock()
		r.claim(op)
		r.await(op, pop)
	}
	return nil
}

func (r *Reconciler) abandon(ctx context.Context, op store.Operation, msg string) {
	if err := r.o.Store.FinishOperation(ctx, op.ID, store.OpAbandoned, msg); err != nil && !errors.Is(err, store.ErrStale) {
		r.log.Error("abandon operation", "operation_id", op.ID, "err", err)
	}
}

// acquire takes an operation slot if one is free.
func (r *Reconciler) acquire() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active >= r.o.MaxConcurrentOps || time.Now().Before(r.throttledUntil) {
		return false
	}
	r.active++
	return true
}

func (r *Reconciler) release() {
	r.mu.Lock()
	r.active--
	r.mu.Unlock()
}
