package fleet_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
)

// acceptedReimages counts, per instance, the reimages the cloud accepted.
func (c *cloud) acceptedReimages() map[string]int {
	return azemu.AcceptedPerInstance(c.emu.Requests(), "POST", "/reimage")
}

// A cloud that fails most requests while reimages are in flight does not make
// sandfleet issue them again or hold their machines to blame: a failed poll is
// retried until the operation reports its end, each reimage is accepted once,
// and every machine comes back ready with no failure counted.
func TestFailedPollsAreNotFailedOperations(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 4)
	stop := run(c.reconciler(t, st))
	defer stop()
	if _, err := c.emu.SetFaults([]byte(`{"lro_delay_ms": 3000, "lro_retry_after_s": 0, "error_rate": 0.7}`)); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		walk(t, st, fmt.Sprintf("win10x64_%d", i), store.Leased, store.Dirty)
	}
	poll.Until(t, 60*time.Second, "a reimage accepted for every machine", func() bool {
		return len(c.acceptedReimages()) == 4
	})
	poll.Until(t, 30*time.Second, "polls failing", func() bool {
		failed := 0
		for _, r := range c.emu.Requests() {
			if r.Status >= 500 && strings.Contains(r.Path, "/operations/") {
				failed++
			}
		}
		return failed >= 5
	})
	poll.Until(t, 60*time.Second, "4 machines reimaged", func() bool {
		ms, _ := st.ListMachines(context.Background(), store.MachineFilter{States: []store.MachineState{store.Reimaging, store.Dirty}})
		return len(ms) == 0
	})
	if _, err := c.emu.SetFaults([]byte(`{"error_rate": 0}`)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "4 machines ready", func() bool { return countReady(t, st) == 4 })
	for id, n := range c.acceptedReimages() {
		if n != 1 {
			t.Errorf("instance %s: reimage accepted %d times, want 1", id, n)
		}
	}
	ms, _ := st.ListMachines(context.Background(), store.MachineFilter{Pool: "win10x64"})
	for _, m := range ms {
		if m.State != store.Ready || m.Failures != 0 {
			t.Errorf("%s: %s with %d failures counted, want ready with none", m.Label, m.State, m.Failures)
		}
	}
	ops, _ := st.ListOperations(context.Background(), store.OperationFilter{Pool: "win10x64"})
	for _, op := range ops {
		if op.Kind == store.OpReimage && op.State == store.OpFailed && !strings.HasPrefix(op.Error, "not issued") {
			t.Errorf("reimage %d of %v failed after it was accepted: %s", op.ID, op.InstanceIDs, op.Error)
		}
	}
}

// pollWatch is the Azure driver, counting the failed polls of the operations
// it begins.
type pollWatch struct {
	provider.Provider
	failed atomic.Int32
}

func (p *pollWatch) Reimage(ctx context.Context, group string, ids []string) (provider.Op, error) {
	op, err := p.Provider.Reimage(ctx, group, ids)
	if err != nil {
		return nil, err
	}
	return watchedOp{op, &p.failed}, nil
}

type watchedOp struct {
	provider.Op
	failed *atomic.Int32
}

func (o watchedOp) Wait(ctx context.Context) error {
	err := o.Op.Wait(ctx)
	if _, ok := provider.AsPollError(err); ok {
		o.failed.Add(1)
	}
	return err
}

// The cloud's endpoint goes away while a reimage runs and comes back: the
// operation is polled to its success, issued once, and nothing is blamed.
func TestCloudDownWhileReimaging(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	c.emu.SetFaults([]byte(`{"lro_delay_ms": 1500}`))
	watch := &pollWatch{Provider: c.driver(t)}
	stop := run(c.reconcilerOn(st, watch))
	defer stop()
	walk(t, st, "win10x64_0", store.Leased, store.Dirty)
	ctx := context.Background()
	poll.Until(t, 20*time.Second, "reimage issued", func() bool {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Unfinished: true})
		return len(ops) == 1 && ops[0].State == store.OpRunning
	})
	dir := c.emu.StateDir()
	if err := c.emu.Close(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "polls failing while the cloud is away", func() bool { return watch.failed.Load() >= 2 })
	emu, err := azemu.New(azemu.Options{Listen: "127.0.0.1:0", StateDir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	c.emu = emu
	poll.Until(t, 60*time.Second, "win10x64_0 ready after its reimage", func() bool {
		return machineState(t, st, "win10x64_0") == store.Ready
	})
	m, _ := st.GetMachine(ctx, "win10x64_0")
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64", Limit: 1})
	if m.Failures != 0 || ops[0].Kind != store.OpReimage || ops[0].State != store.OpSucceeded {
		t.Fatalf("after the outage: %d failures, last operation %+v; want none and the reimage succeeded", m.Failures, ops[0])
	}
	if n := c.count("POST", "/reimage"); n != 0 {
		t.Fatalf("the restarted cloud saw %d reimage POSTs, want none (the first one was polled to its end)", n)
	}
}

// The count of failed resets in a row lives in the database: a restart
// halfway does not reset it, and the journal's attempts count on.
func TestFailureCountSurvivesRestart(t *testing.T) {
	st := openSQLite(t)
	// lab1's reset fails; while the gate file exists, its third run hangs
	// until the stop cuts it short, so that the first run of the daemon
	// ends with exactly two failures.
	dir := t.TempDir()
	gate, runs := filepath.Join(dir, "gate"), filepath.Join(dir, "runs")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pool := labPool(fmt.Sprintf(`[ "$SANDFLEET_MACHINE" != lab1 ] && exit 0
n=$(cat %[1]s 2>/dev/null | wc -l); echo run >> %[1]s
if [ "$n" -ge 2 ] && [ -e %[2]s ]; then exec sleep 60; fi
exit 1`, runs, gate))
	start := func() func() {
		return run(fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
			Interval: 100 * time.Millisecond, OpTimeout: 10 * time.Second, Logger: testLogger()}))
	}
	stop := start()
	poll.Until(t, 10*time.Second, "lab1 ready", func() bool { return machineState(t, st, "lab1") == store.Ready })
	stop()
	walk(t, st, "lab1", store.Leased, store.Dirty)
	ctx := context.Background()
	failures := func() int { m, _ := st.GetMachine(ctx, "lab1"); return m.Failures }
	stop = start()
	poll.Until(t, 10*time.Second, "two failed resets", func() bool { return failures() >= 2 })
	stop()
	if n := failures(); n != 2 || machineState(t, st, "lab1") == store.Quarantined {
		t.Fatalf("setup: %d failures, %s; want 2, not yet quarantined", n, machineState(t, st, "lab1"))
	}
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	stop = start()
	defer stop()
	poll.Until(t, 10*time.Second, "lab1 quarantined", func() bool { return machineState(t, st, "lab1") == store.Quarantined })
	m, _ := st.GetMachine(ctx, "lab1")
	if !strings.Contains(m.QuarantineReason, "failed 3 times in a row") {
		t.Errorf("quarantine reason %q", m.QuarantineReason)
	}
	// A reset cut short by a stop is abandoned, not failed: it counts as an
	// attempt but not against the machine.
	poll.Until(t, 10*time.Second, "the last reset journaled", func() bool {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Unfinished: true})
		return len(ops) == 0
	})
	var attempts []int
	failed := 0
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "lab"})
	for _, op := range ops {
		if op.Kind == store.OpReimage && slices.Contains(op.InstanceIDs, "lab1") {
			attempts = append(attempts, op.Attempt)
			if op.State == store.OpFailed {
				failed++
			}
		}
	}
	for i, a := range attempts {
		if a != i+1 {
			t.Fatalf("lab1's resets had attempts %v, want 1, 2, 3, … across the restart", attempts)
		}
	}
	if failed != 3 {
		t.Fatalf("%d failed resets of lab1 in the journal, want 3: three failures, then quarantine", failed)
	}
}

// An operation resumed after a restart keeps the deadline it was journaled
// with: one whose deadline passed while no one waited gets one look, and
// without an end it counts as failed and is issued again.
func TestResumedOperationKeepsItsDeadline(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	c.emu.SetFaults([]byte(`{"lro_delay_ms": 6000}`))
	walk(t, st, "win10x64_0", store.Leased, store.Dirty)
	ctx := context.Background()
	short := c.reconcilerWith(st, c.driver(t), func(o *fleet.Options) { o.OpTimeout = time.Second })
	stop := run(short)
	poll.Until(t, 20*time.Second, "reimage issued", func() bool {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Unfinished: true})
		return len(ops) == 1 && ops[0].State == store.OpRunning
	})
	stop() // the crash, with the reimage running for a few more seconds
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Unfinished: true})
	first := ops[0]
	poll.Until(t, 10*time.Second, "its deadline passes", func() bool { return time.Now().After(first.Deadline) })

	c.emu.SetFaults([]byte(`{"lro_delay_ms": 0}`))
	stop = run(c.reconciler(t, st)) // a minute's timeout: a fresh deadline would see the reimage succeed
	defer stop()
	poll.Until(t, 20*time.Second, "the first reimage ended", func() bool {
		op, _ := st.GetOperation(ctx, first.ID)
		return op.State.Final()
	})
	op, _ := st.GetOperation(ctx, first.ID)
	if op.State != store.OpFailed || !strings.Contains(op.Error, "deadline") {
		t.Fatalf("first reimage ended %s (%s), want failed for its deadline", op.State, op.Error)
	}
	poll.Until(t, 30*time.Second, "win10x64_0 reimaged again and ready", func() bool {
		return machineState(t, st, "win10x64_0") == store.Ready
	})
	if n := c.count("POST", "/reimage"); n != 2 {
		t.Fatalf("reimage POSTed %d times, want 2 (the late one, then the next attempt)", n)
	}
}

// A delete the cloud keeps failing is not issued forever: after three
// failures in a row the machine is quarantined with the reason.
func TestRepeatedFailedDeletesQuarantine(t *testing.T) {
	st := openSQLite(t)
	c := newCloud(t, 0, 1)
	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 30*time.Second, "1 machine ready", func() bool { return countReady(t, st) == 1 })
	if _, err := c.emu.SetFaults([]byte(`{"fail_provisioning": 1, "operation_preempted": {"count": 3}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.emu.AddVM("win10x64", ""); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the failed instance quarantined", func() bool {
		return machineState(t, st, "win10x64_1") == store.Quarantined
	})
	m, _ := st.GetMachine(context.Background(), "win10x64_1")
	if !strings.Contains(m.QuarantineReason, "delete failed 3 times in a row") {
		t.Errorf("quarantine reason %q", m.QuarantineReason)
	}
	if n := c.count("POST", "/delete"); n != 3 {
		t.Errorf("delete POSTed %d times, want 3", n)
	}
}

// A static machine whose agent never answers cannot be replaced: it is
// quarantined, its reason naming the wait.
func TestSilentStaticMachineQuarantined(t *testing.T) {
	st := openSQLite(t)
	agentIP, port := guesttest.Agent(t)
	pool := config.Pool{Name: "lab", Provider: "static", Platform: "windows", Machines: []config.StaticMachine{
		{Label: "alive", IP: agentIP, Arch: "x64"},
		{Label: "mute", IP: "127.0.0.2", Arch: "x64"},
	}}
	stop := run(fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		Interval: 100 * time.Millisecond, OpTimeout: 10 * time.Second, WaitForAgent: true, Agent: agentClient(port),
		ProvisionTimeout: 500 * time.Millisecond, Logger: testLogger()}))
	defer stop()
	poll.Until(t, 10*time.Second, "mute quarantined", func() bool { return machineState(t, st, "mute") == store.Quarantined })
	m, _ := st.GetMachine(context.Background(), "mute")
	if !strings.Contains(m.QuarantineReason, "agent has not answered") {
		t.Errorf("quarantine reason %q", m.QuarantineReason)
	}
	if s := machineState(t, st, "alive"); s != store.Ready {
		t.Errorf("alive is %s, want ready", s)
	}
}
