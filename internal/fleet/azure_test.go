package fleet_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cloud is an in-process emulator and what it takes to build reconcilers on it.
type cloud struct {
	emu  *azemu.Emulator
	pool config.Pool
}

func newCloud(tb testing.TB, lro time.Duration, size int) *cloud {
	tb.Helper()
	emu, err := azemu.New(azemu.Options{Listen: "127.0.0.1:0", StateDir: tb.TempDir(), LRODelay: lro, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { emu.Close() })
	return &cloud{emu: emu, pool: config.Pool{Name: "win10x64", Provider: "azure", Platform: "windows", Arch: "x64",
		Tags: []string{"win10"}, Image: "win10-gallery-image", InitialSize: size, MaxSize: size}}
}

// reconciler builds a reconciler as a fresh daemon process would: a new driver.
func (c *cloud) reconciler(tb testing.TB, st store.Store) *fleet.Reconciler {
	tb.Helper()
	return c.reconcilerOn(st, c.driver(tb))
}

// driver returns a new Azure driver talking to the emulator.
func (c *cloud) driver(tb testing.TB) *azure.Driver {
	tb.Helper()
	ac := config.Default().Azure
	ac.SubscriptionID = "11111111-0000-4000-8000-000000000001"
	ac.Endpoint = c.emu.URL()
	ac.Credential = "emulator"
	drv, err := azure.New(ac, azure.Options{CertPool: c.emu.CertPool(), PollInterval: 50 * time.Millisecond,
		RetryDelay: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { drv.Close() })
	return drv
}

// reconcilerOn builds a reconciler of the cloud's pool on prov.
func (c *cloud) reconcilerOn(st store.Store, prov provider.Provider) *fleet.Reconciler {
	return c.reconcilerWith(st, prov, func(*fleet.Options) {})
}

// reconcilerWith builds a reconciler with options changed by edit.
func (c *cloud) reconcilerWith(st store.Store, prov provider.Provider, edit func(*fleet.Options)) *fleet.Reconciler {
	o := fleet.Options{Store: st, Provider: prov, Pools: []config.Pool{c.pool},
		Interval: 500 * time.Millisecond, OpTimeout: time.Minute, WaitForAgent: true,
		Agent: guest.NewClient(c.emu.AgentPort(), 2*time.Second), MaxConcurrentOps: 4, AdoptExisting: true,
		Orphans: true, Logger: testLogger()}
	edit(&o)
	return fleet.New(o)
}

// readyCloud is a cloud whose pool of size machines a first reconciler has
// registered and made ready, then stopped.
func readyCloud(t *testing.T, st store.Store, size int) *cloud {
	t.Helper()
	c := newCloud(t, 0, size)
	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 30*time.Second, fmt.Sprintf("%d machines ready", size), func() bool { return countReady(t, st) == size })
	return c
}

// run runs r until the returned stop is called; stop waits for it to end.
func run(r *fleet.Reconciler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

func countReady(tb testing.TB, st store.Store) int {
	ms, err := st.ListMachines(context.Background(), store.MachineFilter{States: []store.MachineState{store.Ready}})
	if err != nil {
		tb.Fatal(err)
	}
	return len(ms)
}

func (c *cloud) count(method, suffix string) int {
	n := 0
	for _, r := range c.emu.Requests() {
		if r.Method == method && strings.HasSuffix(strings.ToLower(r.Path), strings.ToLower(suffix)) {
			n++
		}
	}
	return n
}

// A reimage in flight when the daemon dies is resumed from its stored token by
// the next start — polled to completion, not issued again — and the machine is
// ready only after it.
func TestReimageResumedAfterCrash(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 2)

	c.emu.SetFaults([]byte(`{"lro_delay_ms": 3000}`))
	ctx := context.Background()
	walk(t, st, "win10x64_0", store.Leased, store.Dirty)
	stop := run(c.reconciler(t, st))
	poll.Until(t, 10*time.Second, "reimage issued with its token stored", func() bool {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Unfinished: true})
		return len(ops) == 1 && ops[0].Kind == store.OpReimage && ops[0].State == store.OpRunning && ops[0].ResumeToken != ""
	})
	stop() // the crash: the operation stays unfinished in the journal
	if got := machineState(t, st, "win10x64_0"); got != store.Reimaging {
		t.Fatalf("after the crash win10x64_0 is %s, want reimaging", got)
	}

	stop = run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 20*time.Second, "win10x64_0 ready after its reimage", func() bool { return machineState(t, st, "win10x64_0") == store.Ready })
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/reimage"); n != 1 {
		t.Fatalf("reimage POSTed %d times, want 1 (resumed, not re-issued)", n)
	}
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64"})
	var reimage store.Operation
	for _, op := range ops {
		if op.Kind == store.OpReimage {
			reimage = op
		}
	}
	if reimage.State != store.OpSucceeded || len(reimage.InstanceIDs) != 1 || reimage.InstanceIDs[0] != "0" {
		t.Fatalf("reimage in the journal: %+v", reimage)
	}
}

// An operation journaled but never known to be issued (no token: the crash
// came between intent and token) is re-derived: the machine is reimaged
// again rather than handed out unreimaged.
func TestReimageWithoutTokenIsRedone(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	ctx := context.Background()
	if _, err := st.CreateOperation(ctx, store.Operation{Pool: "win10x64", Kind: store.OpReimage, InstanceIDs: []string{"0"},
		Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	walk(t, st, "win10x64_0", store.Leased, store.Dirty, store.Reimaging)
	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 20*time.Second, "machine ready again", func() bool { return machineState(t, st, "win10x64_0") == store.Ready })
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/reimage"); n != 1 {
		t.Fatalf("reimage POSTed %d times, want exactly 1 (the re-derived one)", n)
	}
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64"})
	abandoned := 0
	for _, op := range ops {
		if op.State == store.OpAbandoned {
			abandoned++
		}
	}
	if abandoned != 1 {
		t.Fatalf("journal: %+v, want the tokenless operation abandoned", ops)
	}
}

// A scale set whose VM failed provisioning has it deleted and replaced.
func TestFailedInstanceReplaced(t *testing.T) {
	st := openSQLite(t)
	c := newCloud(t, 0, 2)
	c.emu.SetFaults([]byte(`{"fail_provisioning": 1}`))
	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 30*time.Second, "2 machines ready", func() bool { return countReady(t, st) == 2 })
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/delete"); n != 1 {
		t.Fatalf("delete POSTed %d times, want 1", n)
	}
	gone, _ := st.ListMachines(context.Background(), store.MachineFilter{States: []store.MachineState{store.Gone}})
	if len(gone) != 1 {
		t.Fatalf("want the failed instance's machine gone, got %d gone", len(gone))
	}
}

// Polls throttled while a reimage runs are waited out, not taken for failure:
// the reimage is sent once and the machine comes back ready.
func TestThrottledPollIsWaitedOut(t *testing.T) {
	st := openSQLite(t)
	c := newCloud(t, 0, 1)
	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 30*time.Second, "machine ready", func() bool { return countReady(t, st) == 1 })
	ctx := context.Background()
	if _, err := c.emu.SetFaults([]byte(`{"lro_delay_ms": 500, "throttle": {"match": "/operations/", "retry_after_s": 1, "count": 2}}`)); err != nil {
		t.Fatal(err)
	}
	walk(t, st, "win10x64_0", store.Leased, store.Dirty)
	poll.Until(t, 20*time.Second, "machine reimaged and ready", func() bool {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64", Limit: 1})
		return machineState(t, st, "win10x64_0") == store.Ready && len(ops) == 1 && ops[0].Kind == store.OpReimage
	})
	throttled := 0
	for _, r := range c.emu.Requests() {
		if r.Status == 429 {
			throttled++
		}
	}
	if throttled != 2 {
		t.Fatalf("%d throttled polls, want the 2 the fault injected", throttled)
	}
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/reimage"); n != 1 {
		t.Fatalf("reimage POSTed %d times, want 1", n)
	}
	ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64", Limit: 1})
	if ops[0].State != store.OpSucceeded {
		t.Fatalf("reimage ended %s (%s), want succeeded", ops[0].State, ops[0].Error)
	}
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return quiet
}

// A row whose IP disagrees with the provider's NIC is reported by check and
// corrected by the next pass, without a state change.
func TestStaleIPIsReportedAndRefreshed(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 2)
	ctx := context.Background()
	m, _ := st.GetMachine(ctx, "win10x64_1")
	good, stale := m.IP, "127.0.0.99"
	if _, err := st.TransitionMachine(ctx, store.Transition{Label: m.Label, From: store.Ready, To: store.Ready, Cause: "test", IP: &stale}); err != nil {
		t.Fatal(err)
	}
	r := c.reconciler(t, st)
	reps, err := r.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := fleet.Mismatch{Label: "win10x64_1", Field: "ip", DB: stale, Provider: good}
	if len(reps) != 1 || reps[0].Consistent() || len(reps[0].Mismatched) != 1 || reps[0].Mismatched[0] != want {
		t.Fatalf("check = %+v, want one mismatch %+v", reps, want)
	}
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	m, _ = st.GetMachine(ctx, "win10x64_1")
	if m.IP != good || m.State != store.Ready {
		t.Fatalf("after a pass: ip %s state %s, want %s ready", m.IP, m.State, good)
	}
	if reps, _ = r.Check(ctx); !reps[0].Consistent() {
		t.Fatalf("check after the pass: %+v", reps)
	}
}

// An address changed behind sandfleet's back, which the driver's passes do
// not read again until its IP refresh, is still reported by check at once —
// a check reads every NIC — and the pass after it corrects the row.
func TestReaddressedMachineIsReportedAndRefreshed(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 2)
	ctx := context.Background()
	r := c.reconciler(t, st)
	if err := r.Pass(ctx); err != nil { // the driver knows the IPs
		t.Fatal(err)
	}
	m, _ := st.GetMachine(ctx, "win10x64_1")
	moved, err := c.emu.Readdress("win10x64", "", "1")
	if err != nil {
		t.Fatal(err)
	}
	reps, err := r.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := fleet.Mismatch{Label: "win10x64_1", Field: "ip", DB: m.IP, Provider: moved.IP}
	if len(reps) != 1 || len(reps[0].Mismatched) != 1 || reps[0].Mismatched[0] != want {
		t.Fatalf("check = %+v, want one mismatch %+v", reps, want)
	}
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ = st.GetMachine(ctx, "win10x64_1"); m.IP != moved.IP {
		t.Fatalf("after a pass: ip %s, want %s", m.IP, moved.IP)
	}
	if reps, _ = r.Check(ctx); !reps[0].Consistent() {
		t.Fatalf("check after the pass: %+v", reps)
	}
}
