package fleet_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

func openSQLite(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func machineState(t testing.TB, st store.Store, label string) store.MachineState {
	t.Helper()
	m, err := st.GetMachine(context.Background(), label)
	if err != nil {
		return ""
	}
	return m.State
}

// A static machine released dirty is reset by reset_command — once — and only
// then is it ready again; every step is in machine_events and the journal.
func TestStaticDirtyMachineIsResetBeforeReuse(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	pool := labPool(`echo "$SANDFLEET_MACHINE" >> ` + marker)
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		Interval: time.Hour, OpTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	poll.Until(t, 10*time.Second, "both machines ready", func() bool {
		return machineState(t, st, "lab1") == store.Ready && machineState(t, st, "lab2") == store.Ready
	})
	m, _ := st.GetMachine(ctx, "lab1")
	if m.IP != "127.0.0.21" || m.Pool != "lab" || m.Arch != "x64" || !strings.Contains(strings.Join(m.Tags, ","), "win10") {
		t.Fatalf("lab1 registered as %+v", m)
	}
	// A task used lab1 and released it.
	walk(t, st, "lab1", store.Leased, store.Dirty)
	r.Trigger()
	poll.Until(t, 10*time.Second, "lab1 ready again", func() bool { return machineState(t, st, "lab1") == store.Ready })

	out, err := os.ReadFile(marker)
	if err != nil || strings.TrimSpace(string(out)) != "lab1" {
		t.Fatalf("reset_command ran %q (err %v), want once for lab1", out, err)
	}
	evs, err := st.MachineEvents(ctx, "lab1")
	if err != nil {
		t.Fatal(err)
	}
	var path []string
	for _, e := range evs {
		path = append(path, string(e.To))
	}
	want := "ready leased dirty reimaging provisioning ready"
	if got := strings.Join(path, " "); !strings.HasSuffix(got, want) {
		t.Fatalf("lab1 went through %q, want it to end with %q", got, want)
	}
	ops, err := st.ListOperations(ctx, store.OperationFilter{Pool: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Kind != store.OpReimage || ops[0].State != store.OpSucceeded || ops[0].InstanceIDs[0] != "lab1" {
		t.Fatalf("journal: %+v, want one succeeded reimage of lab1", ops)
	}
	if machineState(t, st, "lab2") != store.Ready {
		t.Fatalf("lab2 was disturbed")
	}
}

// walk moves a machine through states, as a task would, by compare-and-set.
func walk(t testing.TB, st store.Store, label string, states ...store.MachineState) {
	t.Helper()
	ctx := context.Background()
	m, err := st.GetMachine(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range states {
		if m, err = st.TransitionMachine(ctx, store.Transition{Label: label, From: m.State, To: to, Cause: "test"}); err != nil {
			t.Fatalf("%s → %s: %v", label, to, err)
		}
	}
}

// One machine whose reset_command fails does not hold back the others: static
// machines reset one per operation, and the failing one is quarantined after
// repeated failures.
func TestFailedResetDoesNotStarveOthers(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	pool := labPool(`[ "$SANDFLEET_MACHINE" != lab1 ] && echo "$SANDFLEET_MACHINE" >> ` + marker)
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		Interval: 200 * time.Millisecond, OpTimeout: 10 * time.Second, Logger: testLogger()})
	stop := run(r)
	defer stop()
	ctx := context.Background()
	poll.Until(t, 10*time.Second, "both ready", func() bool {
		return machineState(t, st, "lab1") == store.Ready && machineState(t, st, "lab2") == store.Ready
	})
	walk(t, st, "lab1", store.Leased, store.Dirty) // released first: oldest in a batch
	walk(t, st, "lab2", store.Leased, store.Dirty)
	r.Trigger()
	poll.Until(t, 10*time.Second, "lab2 reset and ready", func() bool { return machineState(t, st, "lab2") == store.Ready })
	poll.Until(t, 10*time.Second, "lab1 quarantined", func() bool { return machineState(t, st, "lab1") == store.Quarantined })
	m, err := st.GetMachine(ctx, "lab1")
	if err != nil || !strings.Contains(m.QuarantineReason, "failed 3 times") {
		t.Fatalf("lab1 quarantine reason %q (%v), want it to say the reset failed 3 times", m.QuarantineReason, err)
	}
	out, _ := os.ReadFile(marker)
	if n := strings.Count(string(out), "lab2"); n != 1 {
		t.Fatalf("lab2 reset %d times, want 1", n)
	}
}

// A label held by another pool's row (a static machine moved between pools)
// is named in the log and skipped: the other new machines still register,
// and the reconciler does not spin on the conflict.
func TestLabelConflictNeitherSpinsNorBlocks(t *testing.T) {
	st := openSQLite(t)
	a := config.Pool{Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{{Label: "lab1", IP: "127.0.0.21", Arch: "x64"}}}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{a}), Pools: []config.Pool{a},
		Interval: time.Hour, OpTimeout: 10 * time.Second, Logger: testLogger()})
	stop := run(r)
	poll.Until(t, 10*time.Second, "lab1 ready", func() bool { return machineState(t, st, "lab1") == store.Ready })
	stop()

	// The operator moves lab1 into a new pool and adds lab3 to it.
	b := config.Pool{Name: "lab-b", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64"},
			{Label: "lab3", IP: "127.0.0.23", Arch: "x64"},
		}}
	r = fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{b}), Pools: []config.Pool{b},
		Interval: time.Hour, OpTimeout: 10 * time.Second, Logger: testLogger()})
	ctx := context.Background()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Pass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if machineState(t, st, "lab3") == "" {
		t.Fatal("lab3 was not registered: the conflict on lab1 blocked it")
	}
	before := st.Stats().RoundTrips
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	trips := st.Stats().RoundTrips - before
	triggered, at := r.PendingWake()
	if triggered || (!at.IsZero() && time.Until(at) < time.Minute) || trips > 20 {
		t.Fatalf("after a pass over the conflict: another pass asked for (triggered %v, at %v), %d round trips; want the reconciler at rest",
			triggered, at, trips)
	}
}

// A machine that ran a sample, then vanished from the provider (marked gone)
// and came back, is reset before it is ready again: what it did meanwhile is
// unknown (SPEC §6).
func TestRevivedMachineIsResetBeforeUse(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	full := labPool(`echo "$SANDFLEET_MACHINE" >> ` + marker)
	without := full
	without.Machines = full.Machines[1:] // operator takes lab1 out of the config for a while

	// The interval stands in for the daemon's 30s safety-net pass.
	runWith := func(p config.Pool) func() {
		r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{p}), Pools: []config.Pool{p},
			Interval: 300 * time.Millisecond, OpTimeout: 10 * time.Second, Logger: testLogger()})
		return run(r)
	}
	ctx := context.Background()

	stop := runWith(full)
	poll.Until(t, 10*time.Second, "lab1 ready", func() bool { return machineState(t, st, "lab1") == store.Ready })
	stop()
	// A task takes lab1 and runs a sample on it.
	if _, err := st.TransitionMachine(ctx, store.Transition{Label: "lab1", From: store.Ready, To: store.Leased, Cause: "task 1"}); err != nil {
		t.Fatal(err)
	}

	// Restart without lab1: it is marked gone while leased.
	stop = runWith(without)
	poll.Until(t, 10*time.Second, "lab1 gone", func() bool { return machineState(t, st, "lab1") == store.Gone })
	stop()
	// The task's release (leased → dirty) now goes stale: the row is gone.
	if _, err := st.TransitionMachine(ctx, store.Transition{Label: "lab1", From: store.Leased, To: store.Dirty, Cause: "task 1 done"}); err == nil {
		t.Fatal("setup: release should be stale")
	}

	// lab1 is put back in the config.
	stop = runWith(full)
	defer stop()
	poll.Until(t, 10*time.Second, "lab1 back in service", func() bool { return machineState(t, st, "lab1") == store.Ready })
	out, _ := os.ReadFile(marker)
	if !strings.Contains(string(out), "lab1") {
		t.Fatalf("lab1 ran task 1's sample and is ready again without reset_command having run (resets: %q)", out)
	}
	evs, _ := st.MachineEvents(ctx, "lab1")
	var path []string
	for _, e := range evs {
		path = append(path, string(e.To))
	}
	if got, want := strings.Join(path, " "), "gone dirty reimaging provisioning ready"; !strings.HasSuffix(got, want) {
		t.Fatalf("lab1 went through %q, want it to end with %q", got, want)
	}
}

// labPool is a static pool of two machines, lab1 (tagged win10) and lab2,
// reset by reset.
func labPool(reset string) config.Pool {
	return config.Pool{
		Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64", Tags: []string{"win10"}},
			{Label: "lab2", IP: "127.0.0.22", Arch: "x64"},
		},
		ResetCommand: reset,
	}
}

// A pool taken out of the configuration has its machines marked gone once its
// group is gone, so nothing leases a machine no one manages.
func TestRemovedPoolRetired(t *testing.T) {
	st := openSQLite(t)
	keep := labPool("")
	old := config.Pool{Name: "old", Provider: "static", Platform: "linux",
		Machines: []config.StaticMachine{{Label: "old1", IP: "127.0.0.31"}}}
	both := []config.Pool{keep, old}
	stop := run(fleet.New(fleet.Options{Store: st, Provider: static.New(both), Pools: both, Interval: time.Hour}))
	poll.Until(t, 10*time.Second, "old1 ready", func() bool { return machineState(t, st, "old1") == store.Ready })
	stop()

	only := []config.Pool{keep}
	stop = run(fleet.New(fleet.Options{Store: st, Provider: static.New(only), Pools: only, Interval: time.Hour}))
	defer stop()
	poll.Until(t, 10*time.Second, "old1 gone", func() bool { return machineState(t, st, "old1") == store.Gone })
	if machineState(t, st, "lab1") != store.Ready {
		t.Fatal("a configured pool's machine was disturbed")
	}
}
